"""H: is a song's debut driven by extrinsic factors and its longevity by the audio?

A pre-registered test: the claims, the margin and the error rates are fixed before the data are
looked at, and each verdict can come out either way (tests reach all three on planted worlds).

Horizons and targets, per (song, region) series, in log1p streams:
  debut          the debut step's value (the level).
  later windows  retention: the mean over the window's steps relative to the debut value, an
                 off-chart step counting at the region's chart floor (the lowest value any
                 series of the region shows on the chart): leaving the chart is low retention,
                 not a missing value. A series counts at a window only when every step of it is
                 known (the data run that far), so no series is dropped for having left the
                 chart (no survivorship).
  decay slope    the censoring-aware decay slope of `data_prep.targets` (a Tobit line through
                 the series with off-chart steps below the floor; the MP2 `longevity` target).
  longevity      steps on the chart within the first 12 weeks (28 days) after the debut
                 (series whose whole span is known).

Models, nested, fitted on the fit split(s) (train by default), ridge on standardised features
with the penalty chosen by 5-fold CV grouped by song (`stats.ridge_cv`):
  region     region indicators (the floor all share)
  extrinsic  + the debut-time extrinsic features (artist history, featured artists, ...; the
             song's own chart outcomes are left out by default: they carry the audio's effect)
  audio      region + the audio representation (PCA to `components` on the fit rows' clips)
             and its interaction with the region indicators
  both       all of the above.
Score: R² on the score split, test by default (songs never used for a model or checkpoint
choice; the report names the split). The audio increment at a horizon is
  inc_h = R²(both) - R²(extrinsic).

Uncertainty: a refit song bootstrap. Each of B resamples draws the fit songs and the score
songs with replacement (a song's series move together, across horizons too, so differences
between horizons are paired), refits every model on the resampled fit songs at the penalty
chosen on the full fit split (the PCA stays the full fit split's), and scores it on the
resampled score songs. Percentile intervals.

The tests (alpha = 0.05; margin m = 0.02 of R² by default, `--margin`):
  debut      equivalence: the upper bound of the 90 % interval of inc_debut (a one-sided 95 %
             bound) lies below m: the audio adds nothing that matters at the debut. Only the
             upper side is tested: the population increment of a nested model is >= 0, and
             values below 0 are the cost of fitting more features. Audio at the debut:
             inc_debut > 0 one-sided (p < alpha) and not equivalent.
  longevity  per later horizon, the one-sided test of inc_h - inc_debut > 0 (the audio explains
             more of the later target than of the debut), Holm-adjusted across the later
             horizons. No more audio later: every later difference's upper 95 % bound < m.
Verdict: supported = debut equivalent and some later horizon significant after Holm; rejected =
audio at the debut, or no more audio later at any horizon; otherwise inconclusive, with the
power: the smallest margin this many songs could show equivalent with 80 % power (2.93 bootstrap
SEs) and the smallest later difference it would detect (2.49 SEs), and the songs that would
take at the stated margin.

Audio representations: `fbank` (per mel bin mean and std over the clip: model-free),
`encoder` (a trained run's AST encoder: pooled output and per-layer patch-token means, from
`mpjax.analysis.probes`) and on synthetic data `planted` (the six planted attributes); each
gets its own table, figure and verdict.

Outputs (`run`): OUT/hypothesis.json (every number), hypothesis.md (tables + verdicts),
hypothesis_<audio>.png (R² vs horizon for the three models with 95 % bands).
"""
from __future__ import annotations

import math
import os

import numpy as np

from mpjax.analysis import output
from mpjax.analysis import rows as rows_lib
from mpjax.analysis import stats

# The song's own outcomes: on real data (data_prep.build) and synthetic alike.
OUTCOME_FEATURES = ("debut_pos", "debut_prior_log_streams", "debut_periods_on_source_chart",
                    "song_regions_charted_before", "song_days_charted_elsewhere",
                    "song_peak_log_streams_elsewhere")
MODELS = ("region", "extrinsic", "audio", "both")
LONGEVITY_SPAN = {True: 12, False: 28}  # steps: weekly (True) / daily
MARGIN = 0.02
ALPHA = 0.05
# 80 % power multiples of the bootstrap SE: TOST at true 0 (z .95 + z .90), one-sided (z .95 + z .80).
EQUIVALENCE_SE, DETECT_SE = 2.93, 2.49


def horizons(h: int, period: str = "weekly") -> list[tuple[str, int, int]]:
  """(name, lo, hi): step windows [lo, hi) from the debut (step 0), within the stored h steps."""
  if period == "weekly":
    edges = [(0, 1), (1, 3), (3, 6), (6, 12), (12, 26), (26, 52)]
    unit = "week"
  else:
    edges = [(0, 1), (1, 7), (7, 14), (14, 28), (28, 56), (56, 91)]
    unit = "day"
  out = []
  for lo, hi in edges:
    hi = min(hi, h)
    if lo >= hi:
      break
    name = "debut" if (lo, hi) == (0, 1) else (f"{unit} {lo + 1}" if hi == lo + 1
                                              else f"{unit}s {lo + 1}-{hi}")
    out.append((name, lo, hi))
  return out


def chart_floors(pairs: dict) -> np.ndarray:
  """[N] per row: the lowest on-chart value of any series of the row's region."""
  series, mask, region = pairs["series"], pairs["mask"], pairs["region"]
  floor = np.full(int(region.max()) + 1, np.nan)
  for r in np.unique(region):
    v = series[region == r][mask[region == r]]
    floor[r] = v.min() if len(v) else np.nan
  return floor[region]


def targets(pairs: dict) -> dict[str, np.ndarray]:
  """horizon name -> target [N] (NaN = not defined for that series); the module docstring."""
  series, mask, known = pairs["series"], pairs["mask"], pairs["known"]
  period = pairs.get("period", "weekly")
  floor = chart_floors(pairs)[:, None]
  out = {}
  debut = np.where(mask[:, 0], series[:, 0], np.nan)
  seen = known | mask
  for name, lo, hi in horizons(series.shape[1], period):
    if lo == 0:
      out[name] = debut
      continue
    value = np.where(mask[:, lo:hi], series[:, lo:hi], floor)  # off the chart: at the floor
    full = seen[:, lo:hi].all(1)
    out[name] = np.where(full, value.mean(1) - debut, np.nan)
  if "longevity" in pairs and np.isfinite(pairs["longevity"]).any():
    out["decay slope"] = np.asarray(pairs["longevity"], np.float64)
  # Longevity over a fixed span every series can be judged on (most debuts are too recent for
  # the whole stored horizon to be known).
  span = min(series.shape[1], LONGEVITY_SPAN[period == "weekly"])
  full = seen[:, :span].all(1)
  out["longevity"] = np.where(full, mask[:, :span].sum(1).astype(np.float64), np.nan)
  return out


# ------------------------------------------------------------------------------------------------
# Features and the nested ridge models
# ------------------------------------------------------------------------------------------------


def audio_components(audio: np.ndarray, fit: np.ndarray, k: int) -> np.ndarray:
  """The top-k principal component scores [N, k] of the standardised audio representation,
  fitted on the fit rows (`stats.pca_scores`)."""
  try:
    return stats.pca_scores(audio, fit, k)
  except ValueError:
    raise ValueError("the audio representation is constant over the fit rows") from None


def design(pairs: dict, audio_pc: np.ndarray, exclude=OUTCOME_FEATURES) -> dict[str, np.ndarray]:
  """model name -> feature matrix [N, d] (module docstring); the ridge standardises them."""
  r = len(pairs["regions"])
  onehot = np.eye(r)[pairs["region"]]
  names = pairs["feature_names"]
  keep = [i for i, n in enumerate(names) if n not in set(exclude)]
  ext = pairs["extrinsic"][:, keep]
  inter = (audio_pc[:, :, None] * onehot[:, None, :]).reshape(len(onehot), -1)
  audio = np.concatenate([audio_pc, inter], 1)
  return {"region": onehot, "extrinsic": np.concatenate([onehot, ext], 1),
          "audio": np.concatenate([onehot, audio], 1),
          "both": np.concatenate([onehot, ext, audio], 1)}


def song_draws(groups, fit, score, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """([samples, N], [samples, N]) draw counts per row of the refit bootstrap: the fit rows'
  songs and the score rows' songs, each drawn with replacement among their own (a song's rows
  share its count); 0 outside fit / score."""
  out = []
  for rows, s in ((np.flatnonzero(fit), seed), (np.flatnonzero(score), seed + 1)):
    uniq, inv = np.unique(np.asarray(groups)[rows], return_inverse=True)
    counts = np.zeros((samples, len(groups)))
    counts[:, rows] = stats.bootstrap_weights(np.arange(len(uniq)), samples, s)[:, inv.reshape(-1)]
    out.append(counts)
  return out[0], out[1]


def refit_r2(x, y, groups, f, s, fit_counts, score_counts, *, seed: int = 0):
  """One model's R² on the score rows s (indices) fitted on the fit rows f, the penalty chosen
  there (`stats.ridge_cv`), and its refit bootstrap: (R², alpha, [B] R² of the model refitted
  on each draw's fit songs at that penalty, scored on its score songs; NaN where undefined)."""
  pred, alpha = stats.ridge_predict(x[f], y[f], groups[f], x[s], seed=seed)
  uniq, first, local = np.unique(groups[f], return_index=True, return_inverse=True)
  preds = stats.ridge_refit_draws(x[f], y[f], local.reshape(-1), fit_counts[:, f][:, first],
                                  alpha, x[s])  # [B, n_score]
  boot = stats.weighted_r2(y[s], preds, score_counts[:, s])
  return stats.weighted_r2(y[s], pred), alpha, boot


def analyse(pairs: dict, audio: np.ndarray, fit: np.ndarray, score: np.ndarray, *,
            components: int = 16, bootstrap: int = 1000, seed: int = 0, margin: float = MARGIN,
            exclude=OUTCOME_FEATURES, min_songs: int = 8) -> dict:
  """Every horizon's R² per model on the score rows with refit-bootstrap CIs, the audio
  increments and the verdict (module docstring). fit/score: bool [N] row masks; audio [N, d]
  (one clip's representation per row)."""
  fit, score = np.asarray(fit, bool), np.asarray(score, bool)
  if (fit & score).any():
    raise ValueError("the fit and score rows overlap")
  audio = np.asarray(audio, np.float64)
  if not np.isfinite(audio).all():
    raise ValueError("the audio representation holds NaN/Inf")
  pcs = audio_components(audio, fit, components)
  x = design(pairs, pcs, exclude)
  groups = rows_lib.song_groups(pairs["song"])
  # Song draws shared by every horizon: inc_h - inc_debut is paired.
  fit_counts, score_counts = song_draws(groups, fit, score, bootstrap, seed)
  horizon_targets = targets(pairs)
  later = len(horizon_targets) - 1
  if (bootstrap + 1) * ALPHA <= later:  # the smallest bootstrap p is 1 / (B + 1), x K by Holm
    raise ValueError(f"bootstrap={bootstrap}: with {later} later horizons no Holm-adjusted p can "
                     f"fall below {ALPHA}; use at least {int(math.ceil(later / ALPHA))} resamples")
  out = {"components": int(pcs.shape[1]), "margin": float(margin), "alpha": ALPHA,
         "horizons": {}, "skipped": {}}
  boot_inc = {}
  for name, y in horizon_targets.items():
    ok = np.isfinite(y)
    f, s = np.flatnonzero(fit & ok), np.flatnonzero(score & ok)
    n_fit, n_score = len(np.unique(groups[f])), len(np.unique(groups[s]))
    if n_fit < min_songs or n_score < min_songs or np.ptp(y[s]) == 0:
      out["skipped"][name] = (f"{n_fit} fit songs, {n_score} score songs with a target "
                              f"(need >= {min_songs} each, and a non-constant target)")
      continue
    entry = {"n_fit": int(len(f)), "n_score": int(len(s)), "songs_fit": n_fit,
             "songs_score": n_score, "target_sd": float(y[s].std()), "r2": {}, "ci": {},
             "ridge_alpha": {}}
    boot = {}
    for model in MODELS:
      entry["r2"][model], entry["ridge_alpha"][model], boot[model] = refit_r2(
          x[model], y, groups, f, s, fit_counts, score_counts, seed=seed)
      entry["ci"][model] = stats.percentile_ci(boot[model])
    inc = boot["both"] - boot["extrinsic"]
    boot_inc[name] = inc
    entry["increment"] = entry["r2"]["both"] - entry["r2"]["extrinsic"]
    entry["increment_ci"] = stats.percentile_ci(inc)
    entry["increment_se"] = float(np.nanstd(inc, ddof=1))
    entry["increment_p"] = stats.p_greater(inc)  # one-sided: > 0
    entry["bootstrap_undefined"] = int((~np.isfinite(inc)).sum())
    out["horizons"][name] = entry
  _tests(out, boot_inc, margin)
  out["verdict"] = verdict(out)
  return out


def _tests(out: dict, boot_inc: dict, margin: float) -> None:
  """Adds the debut equivalence test and the Holm-adjusted later-minus-debut tests."""
  hz = out["horizons"]
  if "debut" not in hz:
    return
  d = hz["debut"]
  # One-sided: a nested model's population increment cannot be below 0 (below is overfitting).
  d["equivalence"] = stats.equivalence(boot_inc["debut"], margin, ALPHA, two_sided=False)
  d["audio_at_debut"] = bool(d["increment_p"] < ALPHA and not d["equivalence"]["equivalent"])
  d["smallest_margin"] = EQUIVALENCE_SE * d["increment_se"]
  later = [n for n in hz if n != "debut"]
  raw_p = []
  for n in later:
    diff = boot_inc[n] - boot_inc["debut"]
    e = hz[n]
    e["over_debut"] = e["increment"] - d["increment"]
    e["over_debut_ci"] = stats.percentile_ci(diff)
    e["over_debut_se"] = float(np.nanstd(diff, ddof=1))
    e["over_debut_p"] = stats.p_greater(diff)
    e["detectable"] = DETECT_SE * e["over_debut_se"]
    raw_p.append(e["over_debut_p"])
  for n, p in zip(later, stats.holm(raw_p)):
    hz[n]["over_debut_p_holm"] = float(p)
    hz[n]["significant"] = bool(p < ALPHA)
    hz[n]["no_more_audio"] = bool(hz[n]["over_debut_ci"][1] < margin)


def verdict(result: dict) -> dict:
  """The verdict on H from the tests (module docstring): 'supported', 'rejected' or
  'inconclusive', with a plain-language text and the details behind it."""
  hz = result["horizons"]
  if "debut" not in hz:
    return {"outcome": None, "supported": None, "significant_later": [], "details": [],
            "text": "no verdict: the debut horizon could not be scored (too few songs with a "
                    "target in the fit or score split)"}
  d, m = hz["debut"], result["margin"]
  later = [n for n in hz if n != "debut"]
  sig = [n for n in later if hz[n]["significant"]]
  none_later = bool(later) and all(hz[n]["no_more_audio"] for n in later)
  eq = d["equivalence"]
  lines = [f"Debut: the audio adds {d['increment']:+.3f} to the extrinsic R² "
           f"{d['r2']['extrinsic']:.2f} (90 % CI {eq['ci'][0]:+.3f} to {eq['ci'][1]:+.3f}; "
           f"margin ±{m:g}): " + ("equivalent to no effect." if eq["equivalent"] else
                                 "audio at the debut (one-sided p = "
                                 f"{d['increment_p']:.3g})." if d["audio_at_debut"] else
                                 "not shown equivalent (the interval reaches past the margin).")]
  for n in later:
    e = hz[n]
    lines.append(f"{n}: the audio adds {e['increment']:+.3f}, {e['over_debut']:+.3f} more than "
                 f"at the debut (95 % CI {e['over_debut_ci'][0]:+.3f} to "
                 f"{e['over_debut_ci'][1]:+.3f}; Holm-adjusted one-sided p = "
                 f"{e['over_debut_p_holm']:.3g})" + (" - significant." if e["significant"] else "."))
  if d["audio_at_debut"]:
    outcome = "rejected"
    head = (f"H rejected: the audio already explains the debut (it adds {d['increment']:+.3f} "
            f"R² beyond the extrinsic features, beyond the ±{m:g} margin), where H says the "
            "extrinsic factors drive it.")
  elif none_later:
    outcome = "rejected"
    head = ("H rejected: at no later horizon does the audio explain more than at the debut "
            f"(every upper 95 % bound < {m:g}).")
  elif eq["equivalent"] and sig:
    outcome = "supported"
    head = (f"H supported: the audio adds nothing beyond ±{m:g} R² at the debut (equivalence), "
            f"and significantly more at {len(sig)} of {len(later)} later horizons after Holm "
            f"({', '.join(sig)}).")
  else:
    outcome = "inconclusive"
    n = d["songs_score"]
    need = int(math.ceil(n * (d["smallest_margin"] / m) ** 2)) if m > 0 else None
    parts = []
    if not eq["equivalent"]:
      parts.append(f"the debut is not shown equivalent: with {n} scored songs the smallest margin "
                   f"showable with 80 % power is ±{d['smallest_margin']:.3f} (about {need} songs "
                   f"for ±{m:g})")
    if not sig:
      det = min((hz[k]["detectable"] for k in later), default=float("nan"))
      parts.append(f"no later horizon is significant after Holm (the smallest later-minus-debut "
                   f"increment detectable with 80 % power is about {det:.3f})")
    head = "H inconclusive: " + "; ".join(parts) + "."
  return {"outcome": outcome, "supported": outcome == "supported", "significant_later": sig,
          "text": head, "details": lines}


# ------------------------------------------------------------------------------------------------
# The whole analysis: audio representations, report, figure
# ------------------------------------------------------------------------------------------------


def encoder_features(workdir: str, pairs: dict, data_dir: str, *, step: str = "latest",
                     seed: int = 0, log=print) -> np.ndarray:
  """[N, d] per row: the run's trained encoder on the row's clip (centre crop, the run's input
  settings): pooled output and every layer's patch-token mean, concatenated."""
  from mpjax import export as export_lib
  from mpjax import records
  from mpjax.analysis import probes

  config = export_lib.run_config(workdir)
  step_n, _ = export_lib.choose_step(workdir, str(step), config)
  probes.embed_config(config, records.load_manifest(data_dir))
  trained, _, _ = probes.load_encoders(workdir, config, step_n, seed)
  feats = {}
  for split in sorted(set(pairs["split"].tolist())):
    emb = probes.embed_split(trained, None, data_dir, split, config, log=log)
    per = np.concatenate([emb["trained"], emb["trained_layers"].reshape(len(emb["record"]), -1)],
                         1)
    for rec, v in zip(emb["record"], per):
      feats[f"{split}/{rec}"] = v
  missing = [k for k in pairs["rec_key"] if k not in feats]
  if missing:
    raise ValueError(f"{workdir}: no encoder features for records {missing[:3]}")
  return np.stack([feats[k] for k in pairs["rec_key"]]).astype(np.float64)


def _signed(v, ci) -> str:
  """'+0.012 [-0.003, +0.030]'."""
  return (f"{output.num(v, sign=True)} [{output.num(ci[0], sign=True)}, "
          f"{output.num(ci[1], sign=True)}]")


def markdown(result: dict) -> str:
  lines = ["## H: debut from extrinsic factors, longevity from the audio?", "",
           f"Fit on {result['fit']}, scored on **{result['score']}** ({result['score_songs']} "
           f"songs never used for a model or checkpoint choice); 95 % intervals from "
           f"{result['bootstrap']} refit song-bootstrap resamples (seed {result['seed']}). "
           f"Pre-registered: equivalence margin ±{result['margin']:g} R² at the debut (TOST, "
           f"90 % interval), one-sided tests of the later-minus-debut audio increment, "
           f"Holm-adjusted across the later horizons, alpha {ALPHA}. Extrinsic features: "
           f"{', '.join(result['extrinsic_features']) or 'none'} (left out as outcomes: "
           f"{', '.join(result['excluded']) or 'none'}). All models hold the region indicators.", ""]
  for audio, res in result["audio"].items():
    lines += [f"### Audio = {audio} ({res['description']}; {res['components']} principal "
              "components, with region interactions)", "",
              f"**{res['verdict']['text']}**", ""]
    rows = []
    for name, e in res["horizons"].items():
      cell = lambda m: (f"{output.num(e['r2'][m])} [{output.num(e['ci'][m][0], 2)}, "  # noqa: E731
                        f"{output.num(e['ci'][m][1], 2)}]")
      inc = _signed(e["increment"], e["increment_ci"])
      if name == "debut":
        eq = e.get("equivalence", {})
        diff = (f"90 % CI [{output.num(eq['ci'][0], sign=True)}, "
                f"{output.num(eq['ci'][1], sign=True)}]: "
                + ("equivalent" if eq["equivalent"] else "not equivalent")) if eq else "–"
        p, ph = output.pvalue(e["increment_p"]), output.MISSING
      elif "over_debut" in e:
        diff = _signed(e["over_debut"], e["over_debut_ci"]) + (" *" if e.get("significant") else "")
        p, ph = output.pvalue(e["over_debut_p"]), output.pvalue(e["over_debut_p_holm"])
      else:  # no debut to compare with (too few songs there)
        diff, p, ph = output.MISSING, output.MISSING, output.MISSING
      rows.append([name, e["n_score"], output.num(e["r2"]["region"]), cell("extrinsic"),
                   cell("audio"), cell("both"), inc, diff, p, ph])
    lines += output.table(["horizon", "series", "region", "extrinsic", "audio", "both",
                           "audio increment (95 % CI)", "minus debut (95 % CI)", "p", "Holm p"],
                          rows)
    lines += ["", "\\* significant after Holm. Debut row: the equivalence test of its increment "
              "(p: one-sided, increment > 0); later rows: the increment minus the debut's "
              "(p: one-sided, > 0).", ""]
    lines += [f"- {d}" for d in res["verdict"]["details"]]
    if res["skipped"]:
      lines += ["", "Skipped horizons: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items())]
    lines += ["", f"![R² per horizon, audio = {audio}]({res['figure']})", ""]
  return "\n".join(lines) + "\n"


def plot(res: dict, path: str, title: str):
  """R² vs horizon for extrinsic, audio and both, 95 % bands."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(res["horizons"])
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4))
  for model, color in (("extrinsic", "C0"), ("audio", "C2"), ("both", "C3"), ("region", "0.5")):
    r = [res["horizons"][n]["r2"][model] for n in names]
    ci = np.array([res["horizons"][n]["ci"][model] for n in names])
    ax.plot(x, r, "-o", color=color, label=model, ms=4, lw=1 if model == "region" else 1.6)
    if model != "region":
      ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.15)
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xticks(x, names, rotation=20, ha="right")
  ax.set_ylabel("R² on the scored series")
  lo = min(-0.1, min(min(res["horizons"][n]["ci"][m][0] for m in ("extrinsic", "audio", "both"))
                     for n in names))
  ax.set_ylim(max(lo, -1.0) - 0.02, 1.02)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  output.save_figure(fig, path)


AUDIO_DESCRIPTIONS = {
    "fbank": "per mel bin mean and std of the clip's log-mel spectrogram, model-free",
    "encoder": "the run's trained AST encoder: pooled output and per-layer patch-token means",
    "planted": "the song's six planted attributes from truth.json: the ceiling",
}


def run(pairs: dict, outdir: str, *, audio: dict[str, np.ndarray], fit: str = "train",
        score: str = "test", components: int = 16, bootstrap: int = 1000, seed: int = 0,
        margin: float = MARGIN, exclude=OUTCOME_FEATURES, log=print) -> dict:
  """Runs `analyse` once per audio representation (name -> [N, d]); writes OUT/hypothesis.json,
  hypothesis.md and one figure per representation; returns the json content + 'markdown'."""
  from mpjax import atomic

  fit_rows = np.isin(pairs["split"], fit.split(","))
  score_rows = np.isin(pairs["split"], score.split(","))
  if not fit_rows.any() or not score_rows.any():
    raise ValueError(f"fit splits {fit!r} / score splits {score!r}: no rows (the data hold "
                     f"{sorted(set(pairs['split'].tolist()))})")
  result = {"fit": fit, "score": score, "bootstrap": bootstrap, "seed": seed, "margin": margin,
            "score_songs": int(len(np.unique(pairs["song"][score_rows]))),
            "extrinsic_features": [n for n in pairs["feature_names"] if n not in set(exclude)],
            "excluded": [n for n in pairs["feature_names"] if n in set(exclude)],
            "horizon_windows": {n: [lo, hi] for n, lo, hi in
                                horizons(pairs["horizon"], pairs["period"])},
            "audio": {}}
  for name, feats in audio.items():
    log(f"[analysis] H with audio = {name} ({feats.shape[1]} features per clip) ...")
    res = analyse(pairs, feats, fit_rows, score_rows, components=components,
                  bootstrap=bootstrap, seed=seed, margin=margin, exclude=exclude)
    res["description"] = AUDIO_DESCRIPTIONS.get(name, name)
    res["figure"] = f"hypothesis_{name}.png"
    if res["horizons"]:
      plot(res, os.path.join(outdir, res["figure"]),
           f"H: R² per horizon (audio = {name}; {result['score']} split, "
           f"{result['score_songs']} songs)")
    result["audio"][name] = res
  md = markdown(result)
  atomic.write_json(os.path.join(outdir, "hypothesis.json"), result, indent=1)
  atomic.write_text(os.path.join(outdir, "hypothesis.md"), md)
  return {**result, "markdown": md}
