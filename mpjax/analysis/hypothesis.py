"""H: is a song's debut driven by extrinsic factors and its longevity by the audio?

For each horizon (the debut step, then later windows of steps after it, then the whole life on
the chart) three nested regressions of the same target are fitted on the fit split(s) and
scored on the score split (default: train / test):

  extrinsic  region indicators + the debut-time extrinsic features (artist history, featured
             artists, ...; the song's own chart outcomes -- its debut position, its streams in
             other regions -- are left out by default: they carry the audio's effect, they are
             not its causes)
  audio      region indicators + the audio representation (PCA to `components`, fitted on the
             fit rows' clips) and its interaction with the region indicators: regions weigh
             the audio differently
  both       all of the above
and, as the floor all three share, `region` (the region indicators alone).

Targets per (song, region) series, in log1p streams: at the debut, the debut step's value (the
level); at a later window, the mean over its on-chart steps minus the debut value (retention:
the log of the streams relative to the debut, so the level the debut already shows does not
count again; a series with no on-chart step in the window is left out of that horizon: late
windows hold the songs still charting); and `longevity` = steps on the chart within the first
12 weeks (28 days) after the debut (series whose span is known). Models: ridge regression on standardised features, the
penalty chosen by 5-fold cross-validation grouped by song on the fit rows.

Score: R² on the score rows (1 - SSE / SST around the score rows' mean). Uncertainty: a
bootstrap over SONGS of the score split (one song charts in several regions; its rows move
together), B resamples, percentile 95 % intervals for every R² and for the audio increment
  increment = R²(both) - R²(extrinsic),
the share of the target's variance the audio explains beyond the extrinsic features. A CI
that excludes zero is called significant. Verdict on H: supported when the audio increment at
the debut is small (its CI includes zero or the extrinsic model explains more of the debut
than the audio one) and significant at later horizons.

Audio representations: `fbank` (per mel bin mean and std over the clip: model-free) and
`encoder` (a trained run's AST encoder: pooled output and per-layer patch-token means, from
`mpjax.analysis.probes`); each gets its own table, figure and verdict.

Outputs (`run`): OUT/hypothesis.json (every number), hypothesis.md (tables + verdicts),
hypothesis_<audio>.png (R² vs horizon for the three models with 95 % bands).
"""
from __future__ import annotations

import math
import os

import numpy as np

from mpjax.analysis import rows as rows_lib

# The song's own outcomes: on real data (data_prep.build) and synthetic alike.
OUTCOME_FEATURES = ("debut_pos", "debut_prior_log_streams", "debut_periods_on_source_chart",
                    "song_regions_charted_before", "song_days_charted_elsewhere",
                    "song_peak_log_streams_elsewhere")
MODELS = ("region", "extrinsic", "audio", "both")
LONGEVITY_SPAN = {True: 12, False: 28}  # steps: weekly (True) / daily
ALPHAS = np.logspace(-2, 4, 13)


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


def targets(pairs: dict) -> dict[str, np.ndarray]:
  """horizon name -> target [N] (NaN = not defined for that series); the module docstring."""
  series, mask, known = pairs["series"], pairs["mask"], pairs["known"]
  out = {}
  debut = np.where(mask[:, 0], series[:, 0], np.nan)
  for name, lo, hi in horizons(series.shape[1], pairs.get("period", "weekly")):
    m = mask[:, lo:hi]
    s = np.where(m, series[:, lo:hi], 0.0).sum(1)
    level = np.where(m.any(1), s / np.maximum(m.sum(1), 1), np.nan)
    out[name] = level if lo == 0 else level - debut  # later: retention relative to the debut
  # Longevity over a fixed span every series can be judged on (most debuts are too recent for
  # the whole stored horizon to be known).
  span = min(series.shape[1], LONGEVITY_SPAN[pairs.get("period", "weekly") == "weekly"])
  full = (known | mask)[:, :span].all(1)
  out["longevity"] = np.where(full, mask[:, :span].sum(1).astype(np.float64), np.nan)
  return out


# ------------------------------------------------------------------------------------------------
# Features and the nested ridge models
# ------------------------------------------------------------------------------------------------


def _standardise(x, fit):
  mu = x[fit].mean(0)
  sd = x[fit].std(0)
  keep = sd > 1e-9
  return (x[:, keep] - mu[keep]) / sd[keep]


def audio_components(audio: np.ndarray, fit: np.ndarray, k: int) -> np.ndarray:
  """Standardise then PCA the audio representation on the fit rows; the top-k scores [N, k]
  (scaled to unit variance on the fit rows)."""
  z = _standardise(np.asarray(audio, np.float64), fit)
  if z.shape[1] == 0:
    raise ValueError("the audio representation is constant over the fit rows")
  _, s, vt = np.linalg.svd(z[fit], full_matrices=False)
  k = min(k, len(s), int((s > 1e-8 * s[0]).sum()))
  scores = z @ vt[:k].T
  return scores / scores[fit].std(0)


def design(pairs: dict, audio_pc: np.ndarray, fit: np.ndarray, exclude=OUTCOME_FEATURES
           ) -> dict[str, np.ndarray]:
  """model name -> feature matrix [N, d] (module docstring)."""
  r = len(pairs["regions"])
  onehot = np.eye(r)[pairs["region"]]
  names = pairs["feature_names"]
  keep = [i for i, n in enumerate(names) if n not in set(exclude)]
  ext = pairs["extrinsic"][:, keep]
  ext = _standardise(ext, fit) if ext.shape[1] else ext
  inter = (audio_pc[:, :, None] * onehot[:, None, :]).reshape(len(onehot), -1)
  audio = np.concatenate([audio_pc, inter], 1)
  return {"region": onehot, "extrinsic": np.concatenate([onehot, ext], 1),
          "audio": np.concatenate([onehot, audio], 1),
          "both": np.concatenate([onehot, ext, audio], 1)}


def _ridge_fit(x, y, alpha):
  """Ridge with an unpenalised intercept; (coef, intercept)."""
  mx, my = x.mean(0), y.mean()
  xc = x - mx
  d = x.shape[1]
  coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T @ (y - my)) if d else np.zeros(0)
  return coef, my - mx @ coef


def fit_predict(x_fit, y_fit, groups_fit, x_score, *, folds: int = 5, seed: int = 0):
  """Ridge with alpha chosen by grouped K-fold CV MSE on the fit rows; (predictions, alpha)."""
  uniq = np.unique(groups_fit)
  folds = min(folds, len(uniq))
  if folds < 2:
    raise ValueError(f"need at least 2 songs to fit, got {len(uniq)}")
  rng = np.random.default_rng(seed)
  fold_of = dict(zip(rng.permutation(uniq), np.arange(len(uniq)) % folds))
  f = np.array([fold_of[g] for g in groups_fit])
  cv = []
  for alpha in ALPHAS:
    err = 0.0
    for i in range(folds):
      tr, te = f != i, f == i
      coef, b = _ridge_fit(x_fit[tr], y_fit[tr], alpha)
      err += ((x_fit[te] @ coef + b - y_fit[te]) ** 2).sum()
    cv.append(err)
  alpha = float(ALPHAS[int(np.argmin(cv))])
  coef, b = _ridge_fit(x_fit, y_fit, alpha)
  return x_score @ coef + b, alpha


def r2(y, pred, w=None) -> np.ndarray:
  """R² of pred for y; with weights w [B, n] one R² per row of w (a bootstrap)."""
  if w is None:
    return 1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
  tot = w.sum(1)
  mean = (w @ y) / tot
  sst = (w * (y[None] - mean[:, None]) ** 2).sum(1)
  # A resample whose target is (nearly) constant has no R²: NaN, left out of the interval.
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(sst > 1e-9 * tot * max(float(y.var()), 1e-12),
                    1.0 - (w @ ((y - pred) ** 2)) / sst, np.nan)


def bootstrap_weights(groups: np.ndarray, samples: int, seed: int) -> np.ndarray:
  """[samples, n] row weights: songs drawn with replacement, each row weighted by its song's
  count in the draw."""
  uniq, idx = np.unique(groups, return_inverse=True)
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(uniq), size=(samples, len(uniq)))
  counts = np.zeros((samples, len(uniq)))
  np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
  return counts[:, idx]


def _ci(v):
  lo, hi = np.nanpercentile(v, [2.5, 97.5])
  return [float(lo), float(hi)]


def analyse(pairs: dict, audio: np.ndarray, fit: np.ndarray, score: np.ndarray, *,
            components: int = 16, bootstrap: int = 1000, seed: int = 0,
            exclude=OUTCOME_FEATURES, min_songs: int = 8) -> dict:
  """Every horizon's R² per model on the score rows with bootstrap CIs, and the audio
  increment. fit/score: bool [N] row masks; audio [N, d] (one clip's representation per row)."""
  fit, score = np.asarray(fit, bool), np.asarray(score, bool)
  if (fit & score).any():
    raise ValueError("the fit and score rows overlap")
  audio = np.asarray(audio, np.float64)
  if not np.isfinite(audio).all():
    raise ValueError("the audio representation holds NaN/Inf")
  pcs = audio_components(audio, fit, components)
  x = design(pairs, pcs, fit, exclude)
  groups = rows_lib.song_groups(pairs["song"])
  out = {"components": int(pcs.shape[1]), "horizons": {}, "skipped": {}}
  for name, y in targets(pairs).items():
    ok = np.isfinite(y)
    f, s = fit & ok, score & ok
    n_fit, n_score = len(np.unique(groups[f])), len(np.unique(groups[s]))
    if n_fit < min_songs or n_score < min_songs or np.ptp(y[s]) == 0:
      out["skipped"][name] = (f"{n_fit} fit songs, {n_score} score songs with a target "
                              f"(need >= {min_songs} each, and a non-constant target)")
      continue
    w = bootstrap_weights(groups[s], bootstrap, seed)
    entry = {"n_fit": int(f.sum()), "n_score": int(s.sum()), "songs_fit": n_fit,
             "songs_score": n_score, "target_sd": float(y[s].std()), "r2": {}, "ci": {},
             "alpha": {}}
    boot = {}
    for model in MODELS:
      pred, alpha = fit_predict(x[model][f], y[f], groups[f], x[model][s], seed=seed)
      entry["r2"][model] = float(r2(y[s], pred))
      entry["alpha"][model] = alpha
      boot[model] = r2(y[s], pred, w)
      entry["ci"][model] = _ci(boot[model])
    inc = boot["both"] - boot["extrinsic"]
    entry["increment"] = entry["r2"]["both"] - entry["r2"]["extrinsic"]
    entry["increment_ci"] = _ci(inc)
    inc = inc[np.isfinite(inc)]
    entry["increment_p"] = float((1 + (inc <= 0).sum()) / (1 + len(inc)))  # one-sided
    entry["bootstrap_undefined"] = int(bootstrap - len(inc))
    entry["significant"] = entry["increment_ci"][0] > 0
    out["horizons"][name] = entry
  out["verdict"] = verdict(out)
  return out


def verdict(result: dict) -> dict:
  """Plain-language verdict on H from the per-horizon numbers (module docstring)."""
  hz = result["horizons"]
  if "debut" not in hz:
    return {"supported": None, "text": "no verdict: the debut horizon could not be scored"}
  later = [n for n in hz if n != "debut"]
  d = hz["debut"]
  debut_extrinsic = (not d["significant"]) or d["r2"]["extrinsic"] > d["r2"]["audio"]
  sig_later = [n for n in later if hz[n]["significant"]]
  lines = [f"At the debut the extrinsic features explain R² = {d['r2']['extrinsic']:.2f} "
           f"(95 % CI {d['ci']['extrinsic'][0]:.2f} to {d['ci']['extrinsic'][1]:.2f}) and the "
           f"audio alone {d['r2']['audio']:.2f}; the audio adds {d['increment']:+.3f} "
           f"(CI {d['increment_ci'][0]:+.3f} to {d['increment_ci'][1]:+.3f}, "
           + ("significant" if d["significant"] else "not significant: the CI includes zero")
           + ")."]
  for n in later:
    e = hz[n]
    lines.append(f"{n}: the audio adds {e['increment']:+.3f} (CI {e['increment_ci'][0]:+.3f} "
                 f"to {e['increment_ci'][1]:+.3f}) to the extrinsic R² {e['r2']['extrinsic']:.2f}"
                 + (" - significant." if e["significant"] else " - not significant."))
  supported = bool(debut_extrinsic and sig_later)
  if supported:
    head = (f"H supported: the debut is explained by the extrinsic features, and the audio "
            f"adds significantly at {len(sig_later)} of {len(later)} later horizons "
            f"({', '.join(sig_later)}).")
  elif not sig_later:
    head = ("H not supported here: the audio adds no significant explained variance beyond "
            "the extrinsic features at any later horizon.")
  else:
    head = ("H not supported here: the audio already adds significantly at the debut, where H "
            "says the extrinsic factors drive it.")
  return {"supported": supported, "significant_later": sig_later, "text": head,
          "details": lines}


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


def _fmt(v, d=3):
  return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def markdown(result: dict) -> str:
  lines = ["## H: debut from extrinsic factors, longevity from the audio?", "",
           f"Fit on {result['fit']}, scored on {result['score']} ({result['score_songs']} songs); "
           f"95 % intervals from {result['bootstrap']} bootstrap resamples of the scored songs "
           f"(seed {result['seed']}). Extrinsic features: {', '.join(result['extrinsic_features']) or 'none'}"
           f" (left out as outcomes: {', '.join(result['excluded']) or 'none'}). All models hold "
           "the region indicators; R² is of the horizon's target over the scored series.", ""]
  for audio, res in result["audio"].items():
    lines += [f"### Audio = {audio} ({res['description']}; {res['components']} principal "
              "components, with region interactions)", "",
              f"**{res['verdict']['text']}**", "",
              "| horizon | series | region | extrinsic | audio | both | audio increment (95 % CI) |",
              "|---|---|---|---|---|---|---|"]
    for name, e in res["horizons"].items():
      cell = lambda m: f"{_fmt(e['r2'][m])} [{_fmt(e['ci'][m][0], 2)}, {_fmt(e['ci'][m][1], 2)}]"  # noqa: E731
      inc = (f"{e['increment']:+.3f} [{e['increment_ci'][0]:+.3f}, {e['increment_ci'][1]:+.3f}]"
             + (" *" if e["significant"] else ""))
      lines.append(f"| {name} | {e['n_score']} | {_fmt(e['r2']['region'])} | {cell('extrinsic')} "
                   f"| {cell('audio')} | {cell('both')} | {inc} |")
    lines += ["", "\\* the CI excludes zero.", ""]
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

  from mpjax import atomic

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
  with atomic.replacing(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


AUDIO_DESCRIPTIONS = {
    "fbank": "per mel bin mean and std of the clip's log-mel spectrogram, model-free",
    "encoder": "the run's trained AST encoder: pooled output and per-layer patch-token means",
    "planted": "the song's six planted attributes from truth.json: the ceiling",
}


def run(pairs: dict, outdir: str, *, audio: dict[str, np.ndarray], fit: str = "train",
        score: str = "test", components: int = 16, bootstrap: int = 1000, seed: int = 0,
        exclude=OUTCOME_FEATURES, log=print) -> dict:
  """Runs `analyse` once per audio representation (name -> [N, d]); writes OUT/hypothesis.json,
  hypothesis.md and one figure per representation; returns the json content + 'markdown'."""
  from mpjax import atomic

  fit_rows = np.isin(pairs["split"], fit.split(","))
  score_rows = np.isin(pairs["split"], score.split(","))
  if not fit_rows.any() or not score_rows.any():
    raise ValueError(f"fit splits {fit!r} / score splits {score!r}: no rows (the data hold "
                     f"{sorted(set(pairs['split'].tolist()))})")
  result = {"fit": fit, "score": score, "bootstrap": bootstrap, "seed": seed,
            "score_songs": int(len(np.unique(pairs["song"][score_rows]))),
            "extrinsic_features": [n for n in pairs["feature_names"] if n not in set(exclude)],
            "excluded": [n for n in pairs["feature_names"] if n in set(exclude)],
            "horizon_windows": {n: [lo, hi] for n, lo, hi in
                                horizons(pairs["horizon"], pairs["period"])},
            "audio": {}}
  for name, feats in audio.items():
    log(f"[analysis] H with audio = {name} ({feats.shape[1]} features per clip) ...")
    res = analyse(pairs, feats, fit_rows, score_rows, components=components,
                  bootstrap=bootstrap, seed=seed, exclude=exclude)
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
