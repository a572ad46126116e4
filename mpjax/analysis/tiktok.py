"""Research question T: do "TikTok songs" chart differently from classic hits?

    pairs = rows.load(data_dir, "train,val,test")
    labels = tiktok.labels_from_dataset(pairs)            # or labels_from_csv(pairs, "k.csv")
    result = tiktok.run(pairs, labels, outdir, label_source="dataset label 'tiktok'",
                        predictions="RUN/forecast/predictions.npz")   # predictions optional

One row = one (record, region) chart history, x_t = log1p(streams) at step t (a week or a day,
the dataset's period; "steps" below) since the chart debut (t = 0). Observed = on the chart;
off the chart = the chart is known that step but the row is not on it; unknown steps (beyond
the dataset's timeline) are neither. Stream ratios are differences of logs.

Shape statistics (`shape_stats`, per row, from the observed points only):
  weeks_to_peak    steps from the debut (first observed step) to the highest observed value
                   (its first occurrence); 0 = peaked at the debut
  peak_over_debut  peak minus debut value (log units: 0.69 = the peak doubled the debut)
  half_life        steps after the peak until the curve first falls ln 2 below the peak (half
                   the peak's streams) or the first off-chart step after the peak, whichever
                   comes first; NaN = censored (neither within the known steps). Rows with NaN
                   are left out of that statistic's means and tests: a description only, biased
                   by the censoring (the survival analysis below handles it)
  longevity        steps on the chart (within the stored horizon, so itself capped)
  rebound          the largest rise over an earlier trough: max over observed s < t of
                   x_t - x_s, where the trough s is an observed step after the debut whose
                   value lies below some earlier observed value (the curve had fallen there).
                   The second condition keeps a curve that simply climbs after its debut from
                   counting as a rebound. 0 when there is no such rise. Rises across an
                   off-chart gap are not seen here (the trough is unobserved): `reentry` counts
                   those
  reentry          1 when the row is observed, then off the chart at a known step, then
                   observed again; else 0
  second_rise      1 when rebound >= ln 1.5 (streams up 50 % from a trough) or reentry; else 0
A row never observed gets NaN throughout.

Labels: 1 = TikTok song, 0 = the rest, -1 = unknown, from the dataset's label
(`labels_from_dataset`; synthetic worlds plant one) or a CSV keyed by track or song id
(`labels_from_csv`: columns track,label or key,label; real charts carry no TikTok label, so on
real data the labels come from such a file). The song is the
unit: one song charts in several regions (and may have several tracks), so a song's label is the
label its rows agree on; every row of the song gets it, and a song whose rows say both 0 and 1
is left out (counted as `songs_conflicting`). `shuffle_labels` permutes the song labels: the
null check, where no statistic should differ.

The test (`compare`): per statistic and group, mean, median, n rows and n songs; the difference
of row means (TikTok minus rest), Cohen's d with the pooled row SD and, for the binary
statistics, the two proportions; a two-sided permutation p-value where the song labels are
permuted (`permutations` times, seeded; the rows of a song move together) and the statistic is
the difference of row means: p = (1 + #{|null| >= |observed|}) / (1 + permutations), so the
smallest reachable p is 1 / (1 + permutations). Normalised curves: per group and step, the mean
of x_t - x_0 over the rows observed at t (and at the debut), with a 95 % band from a bootstrap
over songs.

Time on the chart (`chart_durations`, `survival`): half_life and longevity above stop at the
horizon, and half_life drops the rows censored before halving (informative censoring), so it is
kept as a description only ("uncensored rows only" in the report). The survival analysis treats
time on the chart as right-censored: duration = steps from the debut to the first known
off-chart step after it (event 1: the series left the chart), or, for a row still on the chart
when its known steps end, the steps from the debut to the end of its known steps (event 0; the
number of known steps when they are a prefix, as in built datasets). Unknown steps are never
"off". Per group a Kaplan-Meier curve with its 95 % band (Greenwood, lifelines' default) and
median time on the chart, and the log-rank test. The log-rank test treats rows as independent,
but a song's rows (its regions) are clustered, so its p is optimistic; the Cox model's is not.
Cox model: hazard of leaving the chart ~ TikTok label + covariates, stratified by chart region
(one baseline hazard per region), robust (sandwich) standard errors clustered by song, a ridge
penalizer of `PENALIZER` (0.01) for stability. Covariates (`covariates`): the dataset's
extrinsic features except the song's own outcomes (`hypothesis.OUTCOME_FEATURES`): artist fame
(artist_prior_tracks, artist_prior_peak_log_streams, artist_never_charted, ...) and the other
pre-debut features; those with more than two values standardised (mean 0, SD 1 over the rows
used), constant ones dropped. The data hold no promotion (marketing, playlisting) feature, so
the model cannot adjust for promotion. HR > 1: TikTok series leave the chart sooner.
lifelines rather than scikit-survival: pure-Python wheels with no compiled dependencies, and
documented Kaplan-Meier, log-rank and Cox (strata, cluster-robust SEs) in one maintained package.

Adjusted second rise (`adjusted_second_rise`): a logistic regression of second_rise ~ TikTok +
the same covariates + region indicators (scikit-learn, L2 with C = `LOGIT_C`, weak on
standardised covariates), on the labelled observed rows. The TikTok coefficient is a log odds
ratio; its 95 % CI comes from the song bootstrap (`stats.bootstrap_weights`, the model refitted
on each resample), and its two-sided bootstrap p = min(1, 2 min(a, b)) with a, b = (1 + #{draws
<= 0 or >= 0}) / (1 + draws).

Multiplicity: the ten p-values of T's tables (the seven permutation tests, the log-rank test,
the Cox TikTok coefficient, the adjusted second rise) are one family: each gets a Holm-adjusted
p (`stats.holm`), and the verdict reads the adjusted ones.

Model error (`model_error`, optional): an MP3 run's WORKDIR/forecast/predictions.npz rows are
joined to the dataset's test rows by (record, region); per-series MAE over the observed forecast
steps of the model's median forecast and of the train_drift baseline when present, and their
difference, compared between the groups with the same song-level permutation test.

Outputs of `run` in `outdir`: tiktok.json (every number, the label source, n, seed,
permutations), tiktok.md (the section "## T: TikTok songs vs the rest": the tables with raw and
Holm-adjusted p, the Cox coefficients, the model-error table when given, a plain-language
verdict, the figures), tiktok_curves.png (mean normalised curve per group with its band),
tiktok_stats.png (distributions per group) and tiktok_survival.png (Kaplan-Meier curves).
"""
from __future__ import annotations

import math
import os

import numpy as np

from mpjax import atomic
from mpjax.analysis import output
from mpjax.analysis import stats as stats_lib
from mpjax.analysis.hypothesis import OUTCOME_FEATURES

STATS = ("weeks_to_peak", "peak_over_debut", "half_life", "longevity", "rebound", "reentry",
         "second_rise")
BINARY = ("reentry", "second_rise")
HALF = math.log(2.0)  # half_life: the fall from the peak that halves the streams
RISE = math.log(1.5)  # second_rise: a rebound of +50 % streams
BOOTSTRAP = 500
PENALIZER = 0.01  # Cox ridge penalty: stabilises the fit on few songs, barely shrinks the HR
LOGIT_C = 100.0  # adjusted second rise: inverse L2 strength, weak on standardised covariates
SURVIVAL_TESTS = ("logrank", "cox_tiktok", "second_rise_adjusted")
GROUP_NAMES = {1: "TikTok", 0: "rest"}
_DESCRIBE = {
    "weeks_to_peak": "steps from debut to peak",
    "peak_over_debut": "peak minus debut",
    "half_life": "steps from peak to half the peak's streams or off the chart",
    "longevity": "steps on the chart",
    "rebound": "largest rise over an earlier trough",
    "reentry": "share of series that drop off the chart and come back",
    "second_rise": "share of series with a rebound >= ln 1.5 or a re-entry",
}


# ------------------------------------------------------------------------------------------------
# Shape statistics


def shape_stats(series, mask, known) -> dict[str, np.ndarray]:
  """Per-row statistics of the observed curves (module docstring); each value is float [N]."""
  x = np.asarray(series, np.float64)
  m = np.asarray(mask, bool)
  kn = np.asarray(known, bool)
  if x.ndim != 2 or m.shape != x.shape or kn.shape != x.shape:
    raise ValueError(f"series, mask and known must be [N, H] of one shape; got {x.shape}, "
                     f"{m.shape}, {kn.shape}")
  m = m & np.isfinite(x)
  off = kn & ~m  # known and not on the chart
  n = len(x)
  out = {k: np.full(n, np.nan) for k in STATS}
  for i in range(n):
    obs = np.flatnonzero(m[i])
    if not len(obs):
      continue
    v = x[i, obs]
    j = int(np.argmax(v))
    p, peak = obs[j], v[j]
    out["weeks_to_peak"][i] = p - obs[0]
    out["peak_over_debut"][i] = peak - v[0]
    out["longevity"][i] = len(obs)
    # Half life: whichever comes first, the fall by ln 2 or dropping off the chart.
    fell = obs[(obs > p) & (x[i, obs] <= peak - HALF)]
    gone = np.flatnonzero(off[i])
    gone = gone[gone > p]
    ends = [a[0] for a in (fell, gone) if len(a)]
    out["half_life"][i] = min(ends) - p if ends else np.nan
    # Rebound: a trough is an observed point (after the debut) below an earlier one.
    trough = np.zeros(len(v), bool)
    trough[1:] = v[1:] < np.maximum.accumulate(v)[:-1]
    lows = np.where(trough, v, np.inf)
    low_before = np.minimum.accumulate(np.concatenate([[np.inf], lows[:-1]]))
    rises = v - low_before
    out["rebound"][i] = max(0.0, float(rises[np.isfinite(rises)].max(initial=0.0)))
    out["reentry"][i] = float(bool(off[i, obs[0] + 1:obs[-1]].any()))
    out["second_rise"][i] = float(out["rebound"][i] >= RISE or out["reentry"][i] == 1)
  return out


# ------------------------------------------------------------------------------------------------
# Time on the chart: right-censored durations, Kaplan-Meier, log-rank, Cox


def chart_durations(series, mask, known) -> tuple[np.ndarray, np.ndarray]:
  """(duration [N], event [N]) float: steps from the debut to the first known off-chart step
  after it (event 1), else to the end of the known steps (event 0, right-censored; module
  docstring). NaN for a row never observed."""
  m = np.asarray(mask, bool) & np.isfinite(np.asarray(series, np.float64))
  kn = np.asarray(known, bool)
  if m.ndim != 2 or kn.shape != m.shape:
    raise ValueError(f"series, mask and known must be [N, H] of one shape; got {m.shape}, "
                     f"{kn.shape}")
  off = kn & ~m
  n, h = m.shape
  dur = np.full(n, np.nan)
  event = np.full(n, np.nan)
  t = np.arange(h)
  for i in range(n):
    obs = np.flatnonzero(m[i])
    if not len(obs):
      continue
    debut = obs[0]
    gone = np.flatnonzero(off[i] & (t > debut))
    if len(gone):
      dur[i], event[i] = gone[0] - debut, 1.0
    else:
      # Still charting where the data end: censored at the last known (or observed) step.
      last = int(np.flatnonzero(kn[i] | m[i]).max())
      dur[i], event[i] = last - debut + 1, 0.0
  return dur, event


def covariates(pairs: dict, rows) -> tuple[np.ndarray, list[str]]:
  """([n, k] covariates of `rows`, their names): the extrinsic features except the song's own
  outcomes (`hypothesis.OUTCOME_FEATURES`), constant ones dropped, those with more than two
  values standardised over `rows` (binary ones stay 0/1)."""
  names = list(pairs.get("feature_names", []))
  x = np.asarray(pairs["extrinsic"], np.float64)[rows]
  if x.shape[1] != len(names):
    raise ValueError(f"extrinsic has {x.shape[1]} columns for {len(names)} feature_names")
  cols, out = [], []
  for j, name in enumerate(names):
    if name in OUTCOME_FEATURES:
      continue
    v = x[:, j].copy()
    ok = np.isfinite(v)
    if not ok.any():
      continue
    v[~ok] = v[ok].mean()  # a missing value counts as average (built datasets have none)
    values = np.unique(v)
    if len(values) < 2:
      continue
    if len(values) > 2:
      v = (v - v.mean()) / v.std()
    cols.append(v)
    out.append(name)
  return (np.stack(cols, 1) if cols else np.zeros((len(x), 0))), out


def _km(duration, event, label) -> dict:
  from lifelines import KaplanMeierFitter
  from lifelines.utils import median_survival_times
  kmf = KaplanMeierFitter(alpha=0.05).fit(duration, event, label=label)
  ci = kmf.confidence_interval_survival_function_
  med_ci = median_survival_times(kmf.confidence_interval_).to_numpy().reshape(-1)
  return {"time": kmf.survival_function_.index.to_numpy(np.float64),
          "survival": kmf.survival_function_.to_numpy().reshape(-1),
          "lo": ci.iloc[:, 0].to_numpy(), "hi": ci.iloc[:, 1].to_numpy(),
          "median": float(kmf.median_survival_time_), "median_ci": [float(v) for v in med_ci],
          "n_rows": int(len(duration)), "events": int(np.sum(event))}


def survival(pairs: dict, labels, *, penalizer: float = PENALIZER) -> dict:
  """Kaplan-Meier per group, log-rank test and the Cox model of time on the chart (module
  docstring). Returns {"km": {group: time/survival/lo/hi/median/median_ci/n_rows/events},
  "logrank": {statistic, p}, "cox": {tiktok: {hr, lo, hi, p}, table: [{covariate, hr, lo, hi,
  p}], covariates, strata, penalizer, n_rows, n_songs, events}, "n_censored"}. Raises
  ValueError when a group has fewer than 2 songs."""
  import warnings

  import pandas as pd
  from lifelines import CoxPHFitter
  from lifelines.exceptions import ConvergenceError
  from lifelines.statistics import logrank_test

  rows, song_idx, song_lab, _ = _groups(pairs, labels)
  _check_groups(song_lab, "survival")
  dur, event = chart_durations(pairs["series"][rows], pairs["mask"][rows], pairs["known"][rows])
  ok = np.isfinite(dur)
  rows, song_idx, dur, event = rows[ok], song_idx[ok], dur[ok], event[ok]
  lab = song_lab[song_idx]
  km = {name: _km(dur[lab == code], event[lab == code], name) for code, name in GROUP_NAMES.items()
        if (lab == code).any()}
  if len(km) < 2:
    raise ValueError("survival: a group has no observed series")
  lr = logrank_test(dur[lab == 1], dur[lab == 0], event[lab == 1], event[lab == 0])
  x, names = covariates(pairs, rows)
  df = pd.DataFrame(x, columns=names)
  df.insert(0, "tiktok", lab.astype(np.float64))
  region = np.asarray(pairs["region"])[rows]
  strata = len(np.unique(region)) > 1
  if strata:
    df["region"] = region
  df["song"], df["duration"], df["event"] = song_idx, dur, event
  cph = CoxPHFitter(penalizer=penalizer)
  error = None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      cph.fit(df, "duration", "event", strata=["region"] if strata else None, cluster_col="song")
    except ConvergenceError as e:  # a degenerate sample: reported, not fatal to the report
      error = str(e).splitlines()[0]
  table = [] if error else [
      {"covariate": str(c), "hr": float(r["exp(coef)"]), "lo": float(r["exp(coef) lower 95%"]),
       "hi": float(r["exp(coef) upper 95%"]), "coef": float(r["coef"]),
       "se": float(r["se(coef)"]), "p": float(r["p"])} for c, r in cph.summary.iterrows()]
  nan_row = {"covariate": "tiktok", **{k: math.nan for k in ("hr", "lo", "hi", "coef", "se", "p")}}
  cox = {"tiktok": dict(table[0]) if table else nan_row, "table": table,
         "covariates": names, "strata": "region" if strata else None,
         "penalizer": float(penalizer), "n_rows": int(len(df)),
         "n_songs": int(len(np.unique(song_idx))), "events": int(event.sum()),
         "warnings": sorted({str(w.message).splitlines()[0] for w in caught}), "error": error}
  return {"km": km, "logrank": {"statistic": float(lr.test_statistic), "p": float(lr.p_value)},
          "cox": cox, "n_censored": int((event == 0).sum()), "n_rows": int(len(dur))}


def adjusted_second_rise(pairs: dict, labels, *, bootstrap: int = BOOTSTRAP, seed: int = 0,
                         c: float = LOGIT_C) -> dict:
  """Logistic regression second_rise ~ TikTok + covariates + region indicators; the TikTok log
  odds ratio with its song-bootstrap CI and two-sided bootstrap p (module docstring)."""
  from sklearn.linear_model import LogisticRegression

  rows, song_idx, song_lab, _ = _groups(pairs, labels)
  _check_groups(song_lab, "adjusted_second_rise")
  y = shape_stats(pairs["series"][rows], pairs["mask"][rows], pairs["known"][rows])["second_rise"]
  ok = np.isfinite(y)
  rows, song_idx, y = rows[ok], song_idx[ok], y[ok].astype(np.int64)
  tik = song_lab[song_idx].astype(np.float64)
  x, names = covariates(pairs, rows)
  region = np.asarray(pairs["region"])[rows]
  levels = np.unique(region)
  onehot = (region[:, None] == levels[None, 1:]).astype(np.float64)  # the first is the reference
  design = np.column_stack([tik, x, onehot])
  out = {"covariates": names, "regions": int(len(levels)), "C": float(c),
         "n_rows": int(len(y)), "n_songs": int(len(np.unique(song_idx))),
         "bootstrap": int(bootstrap), "seed": int(seed)}
  if len(np.unique(y)) < 2:
    return {**out, "log_odds_ratio": math.nan, "odds_ratio": math.nan, "ci": [math.nan] * 2,
            "odds_ratio_ci": [math.nan] * 2, "p": math.nan,
            "reason": "second_rise takes one value on every row"}

  def fit(w=None):
    model = LogisticRegression(C=c, max_iter=2000)
    return float(model.fit(design, y, sample_weight=w).coef_[0, 0])

  beta = fit()
  draws = np.full(bootstrap, np.nan)
  for b, w in enumerate(stats_lib.bootstrap_weights(song_idx, bootstrap, seed)):
    used = w > 0
    # A resample with one outcome or one group has no TikTok contrast: left out.
    if len(np.unique(y[used])) > 1 and len(np.unique(tik[used])) > 1:
      draws[b] = fit(w)
  v = draws[np.isfinite(draws)]
  p = math.nan
  if len(v):
    p = min(1.0, 2 * min((1 + (v <= 0).sum()) / (1 + len(v)), (1 + (v >= 0).sum()) / (1 + len(v))))
  ci = stats_lib.percentile_ci(v)
  return {**out, "log_odds_ratio": beta, "odds_ratio": math.exp(beta), "ci": ci,
          "odds_ratio_ci": [math.exp(a) if math.isfinite(a) else math.nan for a in ci],
          "p": float(p), "draws_used": int(len(v))}


# ------------------------------------------------------------------------------------------------
# Labels


def _norm_key(text) -> str:
  return " ".join(str(text).split()).lower()


def labels_from_dataset(pairs: dict, name: str = "tiktok") -> np.ndarray:
  """int [N] (-1 unknown, 0, 1): the dataset label `name` of every row."""
  names = list(pairs.get("labels_names", []))
  if name not in names:
    raise ValueError(f"label {name!r} is not in this dataset (its labels: {names}); give the "
                     "labels as a CSV instead")
  return np.asarray(pairs["labels"])[:, names.index(name)].astype(np.int64)


KEY_COLUMNS = ("key", "track", "track_id", "song", "song_id", "isrc")


def labels_from_csv(pairs: dict, path: str) -> np.ndarray:
  """int [N] from a CSV with a key column and a label column (label 0/1); rows not listed are -1.

  The key column is the first of `KEY_COLUMNS` present (track,label and key,label both work).
  A key is matched against each row's track_id, else its song_id (the song_id is the ISRC, or
  when there is none the normalised "artist - title" that data_prep.tables.song_key writes:
  lower case, accents and punctuation removed). Keys compare stripped, lower-cased, with
  whitespace collapsed. A track match wins over a song match.
  """
  import pandas as pd

  try:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
  except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
    raise ValueError(f"{path}: cannot read the labels CSV ({e})") from e
  df.columns = [c.strip().lower() for c in df.columns]
  key_col = next((c for c in KEY_COLUMNS if c in df.columns), None)
  if key_col is None or "label" not in df.columns:
    raise ValueError(f"{path}: needs the columns track,label or key,label (key: one of "
                     f"{', '.join(KEY_COLUMNS)}); it has {list(df.columns)}")
  raw = df["label"].str.strip()
  bad = sorted(set(raw[~raw.isin(["0", "1"])]))
  if bad:
    raise ValueError(f"{path}: labels must be 0 or 1; found {bad[:5]}")
  table: dict[str, int] = {}
  for key, lab in zip(df[key_col].map(_norm_key), raw.astype(int)):
    if table.setdefault(key, lab) != lab:
      raise ValueError(f"{path}: key {key!r} is listed with both labels 0 and 1")
  out = np.full(len(pairs["song"]), -1, np.int64)
  for i, (track, song) in enumerate(zip(pairs["track"], pairs["song"])):
    t, s = _norm_key(track), _norm_key(song)
    if t and t in table:
      out[i] = table[t]
    elif s in table:
      out[i] = table[s]
  if not (out >= 0).any():
    raise ValueError(f"{path}: none of its {len(table)} keys matches a track_id or song_id of "
                     f"the dataset (e.g. its key {next(iter(table), '')!r}, the dataset's "
                     f"track {pairs['track'][0]!r}, song {pairs['song'][0]!r})")
  return out


def _song_labels(pairs: dict, labels):
  """(song index per row [N], label per song [S], songs with conflicting labels)."""
  lab = np.asarray(labels).reshape(-1)
  n = len(pairs["song"])
  if len(lab) != n:
    raise ValueError(f"labels has {len(lab)} entries for {n} rows")
  if not np.isin(lab, (-1, 0, 1)).all():
    odd = sorted(set(lab.tolist()) - {-1, 0, 1})
    raise ValueError(f"labels must be -1 (unknown), 0 or 1; found {odd[:5]}")
  inv = np.unique(np.asarray(pairs["song"]), return_inverse=True)[1].reshape(-1)
  s = int(inv.max()) + 1 if n else 0
  has1 = np.bincount(inv, weights=lab == 1, minlength=s) > 0
  has0 = np.bincount(inv, weights=lab == 0, minlength=s) > 0
  song = np.where(has1 & ~has0, 1, np.where(has0 & ~has1, 0, -1))
  return inv, song, int((has1 & has0).sum())


def shuffle_labels(pairs: dict, labels, seed: int) -> np.ndarray:
  """int [N]: the song labels permuted across the labelled songs (a song keeps one label for all
  its rows; unknown songs stay -1). The null check: no statistic should differ."""
  inv, song, _ = _song_labels(pairs, labels)
  known = song >= 0
  song = song.copy()
  song[known] = np.random.default_rng(seed).permutation(song[known])
  return song[inv]


# ------------------------------------------------------------------------------------------------
# Tests


def _permuted(song_lab: np.ndarray, permutations: int, seed: int) -> np.ndarray:
  """[P, S] float: the song labels, permuted independently per row."""
  rng = np.random.default_rng(seed)
  return rng.permuted(np.tile(song_lab.astype(np.float64), (permutations, 1)), axis=1)


def _test(values, song_idx, song_lab, perms) -> dict:
  """Group summaries, effect size and song-level permutation p of one per-row statistic.

  values [n] (NaN = left out), song_idx [n] into song_lab [S] (0/1), perms [P, S]."""
  v = np.asarray(values, np.float64)
  ok = np.isfinite(v)
  v, g = v[ok], song_idx[ok]
  lab = song_lab[g]
  out = {}
  for code, name in GROUP_NAMES.items():
    x = v[lab == code]
    out[name] = {"mean": float(x.mean()) if len(x) else math.nan,
                 "median": float(np.median(x)) if len(x) else math.nan,
                 "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                 "n_rows": int(len(x)), "n_songs": int(len(np.unique(g[lab == code])))}
  a, b = out["TikTok"], out["rest"]
  diff = a["mean"] - b["mean"]
  n1, n0 = a["n_rows"], b["n_rows"]
  d = math.nan
  if n1 > 1 and n0 > 1:
    pooled = math.sqrt(((n1 - 1) * a["sd"] ** 2 + (n0 - 1) * b["sd"] ** 2) / (n1 + n0 - 2))
    d = diff / pooled if pooled > 0 else math.nan
  p = math.nan
  if n1 and n0 and len(perms):
    # Per song sums and counts: a permuted difference of row means is two matrix products.
    s = len(song_lab)
    sums = np.bincount(g, weights=v, minlength=s)
    cnt = np.bincount(g, minlength=s).astype(np.float64)
    s1, c1 = perms @ sums, perms @ cnt
    with np.errstate(invalid="ignore", divide="ignore"):
      null = s1 / c1 - (sums.sum() - s1) / (cnt.sum() - c1)
    # A permutation that leaves a group without values is as extreme as nothing: not counted.
    extreme = np.abs(null) >= abs(diff) - 1e-9 * max(1.0, abs(diff))
    p = float((1 + np.sum(extreme & np.isfinite(null))) / (1 + len(perms)))
  out.update(difference=float(diff), cohens_d=float(d), p=p)
  return out


def _curves(x, mask, song_idx, song_lab, seed: int, bootstrap: int = BOOTSTRAP) -> dict:
  """Mean of x_t - x_0 per group and step over the rows observed at t and 0, with a 95 % band
  from resampling songs (with replacement) within the group."""
  rel = np.where(mask, x, np.nan) - np.where(mask[:, :1], x[:, :1], np.nan)
  ok = np.isfinite(rel)
  out = {}
  for code, name in GROUP_NAMES.items():
    songs = np.flatnonzero(song_lab == code)
    local = np.full(len(song_lab), -1)
    local[songs] = np.arange(len(songs))
    rows = np.flatnonzero(song_lab[song_idx] == code)
    gi = local[song_idx[rows]]
    h = x.shape[1]
    sums = np.zeros((len(songs), h))
    cnt = np.zeros((len(songs), h))
    np.add.at(sums, gi, np.where(ok[rows], rel[rows], 0.0))
    np.add.at(cnt, gi, ok[rows])
    # The song bootstrap on the per-song sums: each song its own group, a draw's counts weight it.
    w = stats_lib.bootstrap_weights(np.arange(len(songs)), bootstrap, (seed, code))
    with np.errstate(invalid="ignore", divide="ignore"):
      mean = sums.sum(0) / cnt.sum(0)
      boot = (w @ sums) / (w @ cnt)
    lo, hi = np.array([stats_lib.percentile_ci(boot[:, t]) for t in range(h)]).reshape(h, 2).T
    out[name] = {"mean": mean, "lo": lo, "hi": hi, "n_rows": cnt.sum(0).astype(np.int64)}
  return out


def _groups(pairs: dict, labels, keep=None):
  """Labelled rows (optionally within `keep`): row indices, compact song index, song labels."""
  inv, song, conflicts = _song_labels(pairs, labels)
  row_lab = song[inv]
  rows = np.flatnonzero((row_lab >= 0) & (True if keep is None else keep))
  used, song_idx = np.unique(inv[rows], return_inverse=True)
  return rows, song_idx.reshape(-1), song[used], conflicts


def _check_groups(song_lab, what: str):
  counts = {name: int((song_lab == code).sum()) for code, name in GROUP_NAMES.items()}
  if min(counts.values()) < 2:
    raise ValueError(f"{what}: each group needs at least 2 songs with a known label; songs: "
                     + ", ".join(f"{k} {v}" for k, v in counts.items()))
  return counts


def compare(pairs: dict, labels, *, permutations: int = 2000, seed: int = 0,
            bootstrap: int = BOOTSTRAP) -> dict:
  """TikTok (label 1) vs rest (label 0) on every shape statistic and the normalised curves.

  Returns {"stats": {statistic: per-group mean/median/sd/n_rows/n_songs, difference, cohens_d,
  p (and proportions for the binary ones)}, "curves": {group: mean/lo/hi/n_rows per step},
  "n_rows", "n_songs", "songs_conflicting", "permutations", "seed"} plus, for the figures,
  "values" (the shape statistics of the labelled rows), "row_labels" and "rows" (their indices
  into `pairs`). Raises ValueError when a group has fewer than 2 songs."""
  rows, song_idx, song_lab, conflicts = _groups(pairs, labels)
  songs = _check_groups(song_lab, "compare")
  x, m = pairs["series"][rows], pairs["mask"][rows]
  stats = shape_stats(x, m, pairs["known"][rows])
  perms = _permuted(song_lab, permutations, seed)
  results = {}
  for name in STATS:
    res = _test(stats[name], song_idx, song_lab, perms)
    if name in BINARY:
      res["proportions"] = {"TikTok": res["TikTok"]["mean"], "rest": res["rest"]["mean"]}
    results[name] = res
  return {"stats": results, "curves": _curves(x, m, song_idx, song_lab, seed + 1, bootstrap),
          "n_rows": {"TikTok": int((song_lab[song_idx] == 1).sum()),
                     "rest": int((song_lab[song_idx] == 0).sum())},
          "n_songs": songs, "songs_conflicting": conflicts, "permutations": int(permutations),
          "seed": int(seed), "values": stats, "row_labels": song_lab[song_idx],
          "rows": rows}


def model_error(pairs: dict, labels, predictions, *, permutations: int = 2000,
                seed: int = 0) -> dict:
  """Per-series forecast MAE of an MP3 run's test predictions, TikTok vs rest.

  `predictions`: the path of predictions.npz (or a dict of its arrays). Rows join the
  dataset's test rows by (record, region). Returns {"available": False, "reason": ...} when
  no test row has a known label or a group has fewer than 2 songs."""
  name = predictions if isinstance(predictions, (str, os.PathLike)) else "predictions"
  if isinstance(predictions, (str, os.PathLike)):
    with np.load(predictions) as f:
      data = {k: f[k] for k in f.files}
  else:
    data = dict(predictions)
  missing = [k for k in ("pred", "series", "mask", "region_ids", "record") if k not in data]
  if missing:
    raise ValueError(f"{name}: lacks the arrays {missing} (an MP3 forecast/predictions.npz has "
                     "pred, series, mask, region_ids, record, baseline_*)")
  pred = np.asarray(data["pred"], np.float64)
  point = pred[..., pred.shape[-1] // 2] if pred.ndim == 3 else pred  # the median quantile
  series = np.asarray(data["series"], np.float64)
  mask = np.asarray(data["mask"]) > 0
  if point.ndim != 2 or series.ndim != 2 or len(point) != len(series) \
      or point.shape[1] > series.shape[1] or mask.shape != series.shape:
    raise ValueError(f"{name}: pred {pred.shape} does not fit series {series.shape} "
                     f"(mask {mask.shape})")
  k = series.shape[1] - point.shape[1]  # the prefix steps the model was given
  # Join on (record, region) within the test split.
  test = np.flatnonzero(pairs["split"] == "test")
  where = {(int(r), int(g)): i for i, r, g in zip(test, pairs["record"][test],
                                                   pairs["region"][test])}
  idx = np.array([where.get((int(r), int(g)), -1)
                  for r, g in zip(data["record"], data["region_ids"])], np.int64)
  if not (idx >= 0).any():
    raise ValueError(f"{name}: none of its {len(idx)} rows matches a (record, region) of the "
                     "dataset's test split: predictions of another dataset?")
  y, ym = series[:, k:], mask[:, k:]

  def mae(p):
    return _row_nanmean(np.where(ym, np.abs(np.asarray(p, np.float64) - y), np.nan))

  metrics = {"model": mae(point)}
  if "baseline_train_drift" in data:
    metrics["train_drift"] = mae(data["baseline_train_drift"])
    metrics["model_minus_train_drift"] = metrics["model"] - metrics["train_drift"]
  out = {"available": False, "file": str(name), "k": int(k), "rows": int(len(idx)),
         "rows_unmatched": int((idx < 0).sum()), "permutations": int(permutations),
         "seed": int(seed)}
  # Labels of the matched prediction rows (song-level, as in compare).
  inv, song, _ = _song_labels(pairs, labels)
  lab = np.where(idx >= 0, song[inv[np.maximum(idx, 0)]], -1)
  scored = np.isfinite(metrics["model"])
  use = np.flatnonzero((lab >= 0) & scored)
  if not len(use):
    out["reason"] = "no test row with a scored forecast has a known label"
    return out
  used, song_idx = np.unique(inv[idx[use]], return_inverse=True)
  song_lab = song[used]
  try:
    out["n_songs"] = _check_groups(song_lab, "model_error")
  except ValueError as e:
    out["reason"] = str(e)
    return out
  perms = _permuted(song_lab, permutations, seed)
  out.update(available=True, stats={n: _test(v[use], song_idx.reshape(-1), song_lab, perms)
                                    for n, v in metrics.items()})
  return out


def _row_nanmean(err: np.ndarray) -> np.ndarray:
  """Mean over the finite entries of each row; NaN for a row without one (no observed step)."""
  ok = np.isfinite(err)
  n = ok.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, np.where(ok, err, 0.0).sum(1) / n, np.nan)


# ------------------------------------------------------------------------------------------------
# Report


def _num(v) -> float:
  return math.nan if v is None else float(v)


def _f(v, digits=2) -> str:
  """T's numbers: 2 decimals."""
  return output.num(v, digits)


def _ph(p) -> str:
  """A Holm-adjusted or model-based p (2 significant digits): no permutation floor to state."""
  return output.pvalue(p, 2)


def _row(name, r, permutations, pct=False, holm=True) -> list:
  a, b = r["TikTok"], r["rest"]
  scale, unit = (100.0, " %") if pct else (1.0, "")
  return ([name, _f(_num(a["mean"]) * scale) + unit, _f(_num(b["mean"]) * scale) + unit,
           output.num(_num(r["difference"]) * scale, 2, sign=True) + unit, _f(r["cohens_d"]),
           output.pvalue(r["p"], 2, permutations)]
          + ([_ph(r.get("p_holm"))] if holm else []) + [f"{a['n_rows']} / {b['n_rows']}"])


def _pp(p, p_holm, permutations=None) -> str:
  """'p = 0.004, Holm p = 0.03' (the raw one at its permutation floor as '≤')."""
  raw = output.pvalue(p, 2, permutations)
  raw = f"p {raw}" if raw.startswith("≤") else f"p = {raw}"
  return f"{raw}, Holm p = {_ph(p_holm)}"


def _median(km: dict, ci: bool = False) -> str:
  """The KM median (not reached: the curve stays above 1/2), with its 95 % CI when asked."""
  def one(v):
    return "not reached" if not math.isfinite(_num(v)) else f"{_num(v):g}"
  return one(km["median"]) + (f" [{one(km['median_ci'][0])}, {one(km['median_ci'][1])}]"
                              if ci else "")


def _survival_rows(sv: dict, adj: dict, unit: str) -> list[str]:
  km, lr, cox = sv["km"], sv["logrank"], sv["cox"]["tiktok"]
  return output.table(
      ["test", "TikTok", "rest", "estimate [95 % CI]", "p", "p (Holm)", "n (series)"],
      [["log-rank (time on chart)", f"median {_median(km['TikTok'], True)} {unit}",
        f"median {_median(km['rest'], True)} {unit}", f"χ² = {_f(lr['statistic'])}",
        _ph(lr["p"]), _ph(lr.get("p_holm")), f"{km['TikTok']['n_rows']} / {km['rest']['n_rows']}"],
       ["Cox: hazard of leaving the chart, TikTok vs rest (adjusted)", "", "",
        f"HR {_f(cox['hr'])} [{_f(cox['lo'])}, {_f(cox['hi'])}]", _ph(cox["p"]),
        _ph(cox.get("p_holm")), sv["cox"]["n_rows"]],
       ["second_rise adjusted (logistic)", "", "",
        f"OR {_f(adj['odds_ratio'])} [{_f(adj['odds_ratio_ci'][0])}, "
        f"{_f(adj['odds_ratio_ci'][1])}]", _ph(adj["p"]), _ph(adj.get("p_holm")), adj["n_rows"]]])


def _verdict(result: dict) -> list[str]:
  stats, permutations, unit = result["stats"], result["permutations"], result["unit"]
  lines = []
  for name in STATS:
    r = stats[name]
    if not _num(r.get("p_holm")) < 0.05:
      continue
    a, b = r["TikTok"]["mean"], r["rest"]["mean"]
    p = _pp(r["p"], r["p_holm"], permutations)
    if name == "second_rise":
      lines.append(f"- TikTok songs show a second rise in {a * 100:.0f} % of their series vs "
                   f"{b * 100:.0f} % of the others ({p}).")
    elif name == "reentry":
      lines.append(f"- {a * 100:.0f} % of TikTok series drop off the chart and come back vs "
                   f"{b * 100:.0f} % of the others ({p}).")
    else:
      what = _DESCRIBE[name] + ("; uncensored rows only" if name == "half_life" else "")
      u = unit if name in ("weeks_to_peak", "half_life", "longevity") else "log streams"
      lines.append(f"- {name} ({what}): {a:.2f} vs {b:.2f} {u} on average, "
                   f"{'higher' if a > b else 'lower'} for TikTok songs by {abs(a - b):.2f} "
                   f"(d = {_f(r['cohens_d'])}, {p}).")
  sv, adj = result["survival"], result["second_rise_adjusted"]
  lr, cox = sv["logrank"], sv["cox"]["tiktok"]
  if _num(lr.get("p_holm")) < 0.05:
    lines.append(f"- Median time on the chart: {_median(sv['km']['TikTok'])} vs "
                 f"{_median(sv['km']['rest'])} {unit} (Kaplan-Meier, censoring counted; "
                 f"log-rank {_pp(lr['p'], lr['p_holm'])}, rows treated as independent).")
  if _num(cox.get("p_holm")) < 0.05:
    lines.append(f"- Adjusted for artist fame, the other pre-debut features and the region, "
                 f"TikTok series leave the chart {'sooner' if cox['hr'] > 1 else 'later'}: "
                 f"hazard ratio {_f(cox['hr'])} [{_f(cox['lo'])}, {_f(cox['hi'])}] "
                 f"({_pp(cox['p'], cox['p_holm'])}, SEs clustered by song).")
  if _num(adj.get("p_holm")) < 0.05:
    lines.append(f"- Adjusted for the same covariates, the odds of a second rise are "
                 f"{_f(adj['odds_ratio'])} times as high for TikTok series "
                 f"(95 % CI {_f(adj['odds_ratio_ci'][0])} to {_f(adj['odds_ratio_ci'][1])}, "
                 f"{_pp(adj['p'], adj['p_holm'])}).")
  if not lines:
    return ["No statistic differs significantly between TikTok songs and the rest "
            "(Holm-adjusted p >= 0.05 for all ten tests)."]
  return ["Significant differences (Holm-adjusted p < 0.05 over T's ten tests; permutation "
          "tests over songs, the survival and adjusted tests as stated):", ""] + lines


def _cox_table(cox: dict) -> list[str]:
  return output.table(["covariate", "HR", "95 % CI", "p"],
                      [[r["covariate"], _f(r["hr"]), f"[{_f(r['lo'])}, {_f(r['hi'])}]", _ph(r["p"])]
                       for r in cox["table"]])


def markdown(result: dict) -> str:
  """The report section of a `run` result (tiktok.md)."""
  perms, unit = result["permutations"], result["unit"]
  s, n = result["stats"], result["n_songs"]
  sv, adj = result["survival"], result["second_rise_adjusted"]
  lines = ["## T: TikTok songs vs the rest", "",
           f"Labels: {result['label_source']}. {n['TikTok']} TikTok songs "
           f"({result['n_rows']['TikTok']} series) vs {n['rest']} other songs "
           f"({result['n_rows']['rest']} series); {result['period']} steps from the chart debut; "
           f"p from {perms} permutations of the song labels (seed {result['seed']})."
           + (f" {result['songs_conflicting']} songs with conflicting labels left out."
              if result["songs_conflicting"] else ""), ""]
  lines += output.table(
      ["statistic", "TikTok mean", "rest mean", "difference", "effect size (d)", "p", "p (Holm)",
       "n (series)"],
      [_row(name + (" (uncensored rows only; see the survival analysis)"
                    if name == "half_life" else ""), s[name], perms, pct=name in BINARY)
       for name in STATS])
  lines += ["", "Binary statistics are shares of series. half_life and longevity stop at the "
            "horizon; half_life leaves out the series censored before halving, so it is a "
            "description, not a test of staying power: the survival analysis below is.", "",
            "### Time on the chart (survival) and the adjusted second rise", "",
            f"Time on the chart is right-censored: {sv['n_censored']} of {sv['n_rows']} series "
            "are still on the chart when their known steps end. Log-rank: rows treated as "
            "independent (a song's regions are clustered, so this p is optimistic). Cox: "
            f"stratified by {sv['cox']['strata'] or 'nothing (one region)'}, robust SEs "
            f"clustered by song ({sv['cox']['n_songs']} songs), penalizer "
            f"{sv['cox']['penalizer']:g}, covariates standardised; its HR averages over time, "
            "so where the Kaplan-Meier curves cross (a second wave) the hazards are not "
            "proportional and the curves are the better read. Adjusted second rise: "
            f"logistic regression (L2, C = {adj['C']:g}) with region indicators, CI and p from "
            f"{adj['bootstrap']} song-bootstrap refits. Covariates: "
            + (", ".join(f"`{c}`" for c in sv["cox"]["covariates"]) or "none")
            + " (the extrinsic features except the song's own outcomes; the data hold no "
            "promotion feature, so promotion is not adjusted for). Holm-adjusted p over the ten "
            "p-values of both tables.", ""]
  lines += _survival_rows(sv, adj, unit)
  lines += ["", "Cox coefficients (hazard of leaving the chart; HR > 1 = leaves sooner):", ""]
  lines += _cox_table(sv["cox"])
  if sv["cox"].get("error"):
    lines += ["", f"The Cox model did not converge: {sv['cox']['error']}"]
  if sv["cox"].get("warnings"):
    lines += ["", "lifelines warned: " + "; ".join(sv["cox"]["warnings"])]
  lines += [""]
  me = result.get("model_error")
  if me is not None:
    lines += ["### Forecast error of the model (test split)", ""]
    if me.get("available"):
      lines += [f"Per-series MAE (log streams) over the observed forecast steps "
                f"{me['k'] + 1}.. of `{os.path.basename(me['file'])}`; "
                f"songs: {me['n_songs']['TikTok']} TikTok, {me['n_songs']['rest']} rest "
                "(a separate question: not in the Holm family).", ""]
      lines += output.table(
          ["MAE", "TikTok mean", "rest mean", "difference", "effect size (d)", "p", "n (series)"],
          [_row(name, r, perms, holm=False) for name, r in me["stats"].items()])
      r = me["stats"]["model"]
      p = output.pvalue(r["p"], 2, perms)
      sig = _num(r["p"]) < 0.05
      lines += ["", f"The model's error on TikTok series is {_f(r['TikTok']['mean'], 3)} vs "
                f"{_f(r['rest']['mean'], 3)} on the others ("
                + ("" if sig else "not significant, ")
                + (f"p {p})." if p.startswith("≤") else f"p = {p})."), ""]
    else:
      lines += [f"Not available: {me.get('reason')}.", ""]
  lines += ["### Verdict", ""] + _verdict(result) + [
      "", "![Mean normalised curves](tiktok_curves.png)", "",
      "![Shape statistics per group](tiktok_stats.png)", "",
      "![Kaplan-Meier: share of series still on the chart](tiktok_survival.png)", ""]
  return "\n".join(lines)


def plot_survival(path: str, km: dict, unit: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.2))
  for name, color in (("TikTok", "tab:red"), ("rest", "tab:blue")):
    c = km[name]
    ax.step(c["time"], c["survival"], where="post", color=color,
            label=f"{name} ({c['n_rows']} series, median {_median(c)})")
    ax.fill_between(c["time"], c["lo"], c["hi"], step="post", color=color, alpha=0.2,
                    linewidth=0)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel(f"{unit} since chart debut")
  ax.set_ylabel("share still on the chart")
  ax.set_title("Kaplan-Meier time on the chart (censored at the data end), 95 % band")
  ax.legend()
  fig.tight_layout()
  output.save_figure(fig, path)


def plot_curves(path: str, curves: dict, unit: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.2))
  for name, color in (("TikTok", "tab:red"), ("rest", "tab:blue")):
    c = curves[name]
    t = np.arange(len(c["mean"]))
    ax.plot(t, c["mean"], color=color, label=f"{name} (series at debut: {int(c['n_rows'][0])})")
    ax.fill_between(t, c["lo"], c["hi"], color=color, alpha=0.2, linewidth=0)
  ax.axhline(0, color="grey", linewidth=0.8)
  ax.set_xlabel(f"{unit} since chart debut")
  ax.set_ylabel("log streams minus debut")
  ax.set_title("Mean normalised curve (on-chart series), 95 % band over songs")
  ax.legend()
  fig.tight_layout()
  output.save_figure(fig, path)


def plot_stats(path: str, values: dict, row_labels: np.ndarray):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 4, figsize=(13, 6))
  axes = axes.ravel()
  for ax, name in zip(axes, STATS):
    v = values[name]
    groups = [v[(row_labels == code) & np.isfinite(v)] for code in (1, 0)]
    if name in BINARY:
      # Binary: a bar per group, the share of series with the property.
      shares = [g.mean() if len(g) else 0.0 for g in groups]
      ax.bar(["TikTok", "rest"], shares, color=["tab:red", "tab:blue"])
      ax.set_ylim(0, 1)
      ax.set_ylabel("share of series")
    else:
      ax.boxplot([g if len(g) else [np.nan] for g in groups], tick_labels=["TikTok", "rest"])
    ax.set_title(name, fontsize=10)
  axes[-1].axis("off")
  fig.suptitle("Shape statistics per series, TikTok songs vs the rest")
  fig.tight_layout()
  output.save_figure(fig, path)


def run(pairs: dict, labels, outdir: str, *, label_source: str, predictions=None,
        permutations: int = 2000, seed: int = 0, bootstrap: int = BOOTSTRAP, log=print) -> dict:
  """Compares the groups (permutation tests, survival, adjusted second rise, Holm over the ten
  p-values), writes tiktok.json/.md/_curves.png/_stats.png/_survival.png in `outdir` and returns
  what tiktok.json holds plus "markdown"."""
  res = compare(pairs, labels, permutations=permutations, seed=seed, bootstrap=bootstrap)
  sv = survival(pairs, labels)
  adj = adjusted_second_rise(pairs, labels, bootstrap=bootstrap, seed=seed + 2)
  # Holm over T's family: the seven permutation tests, log-rank, Cox TikTok, adjusted rise.
  tests = [res["stats"][n] for n in STATS] + [sv["logrank"], sv["cox"]["tiktok"], adj]
  names = list(STATS) + list(SURVIVAL_TESTS)
  raw = [_num(t["p"]) for t in tests]
  adjusted = stats_lib.holm(raw)
  for t, ph in zip(tests, adjusted):
    t["p_holm"] = float(ph)
  period = pairs.get("period", "weekly")
  unit = {"weekly": "weeks", "daily": "days"}.get(period, "steps")
  result = {"question": "T: do TikTok songs behave differently from classic hits?",
            "label_source": label_source, "period": period, "unit": unit,
            "horizon": int(pairs["series"].shape[1]), "seed": int(seed),
            "permutations": int(permutations), "bootstrap": int(bootstrap),
            "n_rows": res["n_rows"], "n_songs": res["n_songs"],
            "songs_conflicting": res["songs_conflicting"], "stats": res["stats"],
            "survival": sv, "second_rise_adjusted": adj,
            "holm": {"tests": names, "p": raw, "p_holm": adjusted},
            "curves": {g: {k: v.tolist() for k, v in c.items()} for g, c in res["curves"].items()}}
  if predictions is not None:
    result["model_error"] = model_error(pairs, labels, predictions, permutations=permutations,
                                        seed=seed)
  sig = [n for n, ph in zip(names, adjusted) if ph < 0.05]
  sr = res["stats"]["second_rise"]
  cox = sv["cox"]["tiktok"]
  result["verdict"] = (
      (f"TikTok songs differ significantly (Holm-adjusted p < 0.05) in {', '.join(sig)}; second "
       f"rise in {sr['TikTok']['mean'] * 100:.0f} % of their series vs "
       f"{sr['rest']['mean'] * 100:.0f} % (Holm p = {_ph(sr['p_holm'])}); adjusted hazard ratio "
       f"of leaving the chart {_f(cox['hr'])} [{_f(cox['lo'])}, {_f(cox['hi'])}] (Holm p = "
       f"{_ph(cox['p_holm'])})") if sig else
      "no statistic differs significantly between TikTok songs and the rest (Holm-adjusted)")
  result = output.jsonable(result)
  os.makedirs(outdir, exist_ok=True)
  atomic.write_json(os.path.join(outdir, "tiktok.json"), result, indent=1)
  md = markdown(result)
  atomic.write_text(os.path.join(outdir, "tiktok.md"), md)
  plot_curves(os.path.join(outdir, "tiktok_curves.png"), res["curves"], unit)
  plot_stats(os.path.join(outdir, "tiktok_stats.png"), res["values"], res["row_labels"])
  plot_survival(os.path.join(outdir, "tiktok_survival.png"), sv["km"], unit)
  log(f"[analysis] T: {result['verdict']}")
  return {**result, "markdown": md}
