"""MP3's report: the model and every baseline scored by one evaluator on the same series.

    report(...)   WORKDIR/forecast/: forecast_metrics.json, forecast_table.md (model vs
                  baselines: overall, per forecast step, per region), fan_charts.png,
                  predictions.npz, summary.json (and calibration.json with mp3.calibrate)

The rows come from `mpjax.tasks.forecast_rows` (one per record and region it charted in), the
same rows MP3's validation metrics use (`tasks.MP3Task.evaluate`). Baselines are fitted on the
train split's rows (`train_drift`, `extrinsic_ridge`, and the global models on the prefix
`prefix_ridge`, `prefix_boosted`) or on each series' own prefix (`seasonal_naive`,
`last_value`, `mean_last7`, `exp_decay`, `power_decay`); see `mpjax.baselines`. MASE is
relative to the seasonal naive forecast on the same points; MAE is reported pooled over points
and as the mean of per-series MAEs.

`results` in the writers is name -> the dict returned by `mpjax.metrics.forecast` (the model,
"mp3", next to the baselines). Steps in the tables are 1-based: the row for step index s
(0-based, as in `per_horizon[h]["step"] = k + h`) is labelled s + 1, so with a prefix of k
observed steps the first forecast row is k + 1.
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import numpy as np

from mpjax import atomic
from mpjax import baselines
from mpjax import metrics as metrics_lib
from mpjax import tasks
from mpjax.models.factory import quantiles_of, window_of
from mpjax.models.mp3 import median_index

FORECAST_JSON = "forecast_metrics.json"
FORECAST_MD = "forecast_table.md"
ORIGINS_NPZ = "origin_predictions.npz"
_MAX_HORIZON_ROWS = 12
_HORIZON_SAMPLE = 8


def horizon_bands(k: int, horizon: int, manifest: dict) -> dict[str, tuple[int, int]]:
  """Early vs late forecast steps. Weekly: split after the MP2 window (`mp2_weeks`: in the
  synthetic truth the level there is extrinsic, the decay after it audio-driven); daily: after
  day 14. Absolute 0-based [lo, hi) step ranges; labels are 1-based."""
  split = int(manifest.get("mp2_weeks", 6)) if manifest.get("period", "weekly") == "weekly" else 14
  split = min(max(split, k + 1), horizon - 1)
  if split <= k:
    return {}
  return {f"{k + 1}..{split}": (k, split), f"{split + 1}..{horizon}": (split, horizon)}


def band_coverage(pred_q, series, mask, k: int) -> float:
  """Share of the observed forecast points inside [lowest, highest] quantile."""
  y, m = np.asarray(series)[:, k:], np.asarray(mask)[:, k:] > 0
  inside = (y >= pred_q[..., 0]) & (y <= pred_q[..., -1])
  return float(inside[m].mean()) if m.any() else float("nan")


def scale_bands(pred_q, quantiles, scale: float):
  """Quantile forecasts with their distances from the median multiplied by `scale` (the
  median, hence every point metric, unchanged; monotone for scale > 0)."""
  med = pred_q[..., median_index(quantiles)][..., None]
  return med + scale * (pred_q - med)


def band_scale(pred_q, series, mask, k: int, quantiles) -> float:
  """The factor for `scale_bands` (from 1/4 to 8) that brings the outer band's coverage of the
  given (validation) rows nearest its nominal level: conformal-style calibration of a model
  whose bands come out too narrow (or wide) on unseen songs."""
  nominal = quantiles[-1] - quantiles[0]
  grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 301))
  cov = np.array([band_coverage(scale_bands(pred_q, quantiles, g), series, mask, k)
                  for g in grid])
  if not np.isfinite(cov).any():
    return 1.0
  return float(grid[np.nanargmin(np.abs(cov - nominal))])


def report(eval_fn, params, data_dir, config, manifest, mesh, outdir, *, split="test") -> str:
  """Scores the model and every baseline on `split`; writes the files; returns the markdown.
  Every process calls it (the evaluation is sharded); process 0 alone scores and writes.
  With mp3.calibrate (quantile models), the band scale is chosen on the val split
  (`band_scale`) and applied to `split`'s quantiles: calibration.json says by how much."""
  k, m = config.mp3.prefix_steps, config.mp3.season
  q = quantiles_of(config)
  test = tasks.forecast_rows(data_dir, split, config, manifest, eval_fn=eval_fn, params=params,
                             mesh=mesh)
  if not test:
    return f"(no {split} rows to evaluate)"
  train = tasks.forecast_rows(data_dir, "train", config, manifest)
  calib = None
  if q and len(q) > 1 and config.mp3.get("calibrate", False) and split != "val":
    val = tasks.forecast_rows(data_dir, "val", config, manifest, eval_fn=eval_fn, params=params,
                              mesh=mesh)
    if val:
      scale = band_scale(val["pred"], val["series"], val["mask"], k, q)
      calib = {"scale": scale, "chosen_on": "val",
               "val_coverage_raw": band_coverage(val["pred"], val["series"], val["mask"], k),
               "val_coverage": band_coverage(scale_bands(val["pred"], q, scale), val["series"],
                                             val["mask"], k),
               f"{split}_coverage_raw": band_coverage(test["pred"], test["series"],
                                                      test["mask"], k)}
      test["pred"] = scale_bands(test["pred"], q, scale)
  origins = origin_predictions(eval_fn, params, data_dir, config, manifest, mesh)
  if jax.process_index() != 0:
    return ""
  os.makedirs(outdir, exist_ok=True)
  if origins:
    with open(os.path.join(outdir, ORIGINS_NPZ), "wb") as f:
      np.savez(f, **origins)
  names = manifest["regions"]
  fc = baselines.run_all(train, test, k, m, len(names))
  w = window_of(config, manifest)
  bands = horizon_bands(k, w, manifest)
  target, tmask = test["series"][:, k:], test["mask"][:, k:]
  naive = fc.get("seasonal_naive")
  results = {"mp3": metrics_lib.forecast(test["pred"] if q else test["pred"][..., 0], target,
                                         tmask, test["region_ids"], names, quantiles=q,
                                         naive=naive, k=k, bands=bands)}
  for name, pred in fc.items():
    results[name] = metrics_lib.forecast(pred, target, tmask, test["region_ids"], names,
                                         naive=naive, k=k, bands=bands)
  period = manifest.get("period", "weekly")
  scored = int((np.asarray(tmask) > 0).any(axis=1).sum())  # series with a point to score
  title = (f"MP3 on the {split} split: forecast steps {k + 1}..{w} from the "
           f"first {k} ({period}; {'audio' if config.mp3.audio else 'no audio'}, "
           f"{scored} scored series"
           + (f"; quantile bands x{calib['scale']:.2f}, calibrated on val" if calib else "") + ")")
  if calib:
    atomic.write_json(os.path.join(outdir, "calibration.json"), calib, indent=2)
  md = write_forecast_report(outdir, results, title=title, k=k, period=period,
                                        quantiles=q)
  point = metrics_lib.point_from_quantiles(test["pred"], q) if q else test["pred"][..., 0]
  fan_charts(os.path.join(outdir, "fan_charts.png"), test["series"], test["mask"], k,
                        {"mp3": point, **{n: fc[n] for n in ("last_value", "train_drift") if n in fc}},
                        quantiles=q, quantile_pred=test["pred"] if q else None,
                        titles=[f"{names[r]} #{i}" for r, i in zip(test["region_ids"], test["record"])],
                        seed=config.seed)
  with open(os.path.join(outdir, "predictions.npz"), "wb") as f:
    np.savez(f, pred=test["pred"], series=test["series"], mask=test["mask"],
             region_ids=test["region_ids"], record=test["record"],
             **{f"baseline_{n}": v for n, v in fc.items()})
  with open(os.path.join(outdir, "summary.json"), "w") as f:
    json.dump({n: r["overall"] for n, r in results.items()}, f, indent=2)
  return md


def origin_predictions(eval_fn, params, data_dir, config, manifest, mesh) -> dict:
  """MP3's raw forecasts (bands not calibrated) of every val and test row from each origin of
  `mp3.eval_origins` (steps after the debut; the rolling origins of `launch/backtest.py`):
  {split}_record, {split}_region [M], {split}_origin [M], {split}_pred [M, H, Q], quantiles.
  {} when mp3.eval_origins is empty. A collective: every process calls it."""
  origins = [int(o) for o in (config.mp3.get("eval_origins") or ())]
  out = {}
  for split in ("val", "test") if origins else ():
    parts = [tasks.forecast_rows(data_dir, split, config, manifest, eval_fn=eval_fn,
                                 params=params, mesh=mesh, origin=o) for o in origins]
    parts = [(o, p) for o, p in zip(origins, parts) if p]
    if not parts:
      continue
    out[f"{split}_record"] = np.concatenate([p["record"] for _, p in parts])
    out[f"{split}_region"] = np.concatenate([p["region_ids"] for _, p in parts])
    out[f"{split}_origin"] = np.concatenate([np.full(len(p["record"]), o) for o, p in parts])
    out[f"{split}_pred"] = np.concatenate([p["pred"] for _, p in parts]).astype(np.float32)
  if out:
    out["quantiles"] = np.asarray(quantiles_of(config) or [0.5], np.float32)
  return out


# ------------------------------------------------------------------------------------------------
# Writers: metrics JSON, markdown tables, fan charts
# ------------------------------------------------------------------------------------------------


def _fmt(v, digits=4):
  if v is None:
    return "–"
  v = float(v)
  if math.isnan(v):
    return "nan"
  return f"{v:.{digits}f}"


def _mae_key(name, results):
  v = results[name]["overall"].get("mae", float("nan"))
  return (math.isnan(v), v, name)


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return lines


def _best_row(values):
  """Index of the smallest non-NaN value, or None."""
  arr = np.array([np.nan if v is None else float(v) for v in values])
  return None if np.all(np.isnan(arr)) else int(np.nanargmin(arr))


def _horizon_steps(h_len):
  if h_len <= _MAX_HORIZON_ROWS:
    return list(range(h_len))
  return sorted(set(np.round(np.linspace(0, h_len - 1, _HORIZON_SAMPLE)).astype(int).tolist()))


def write_forecast_report(outdir: str, results: dict[str, dict], *, title: str, k: int,
                          period: str, quantiles: Sequence[float] | None = None) -> str:
  """Writes `forecast_metrics.json` (all of `results` plus title, k, period, quantiles) and
  `forecast_table.md` to outdir; returns the markdown.

  The markdown has an overall table sorted by MAE (best MAE in bold; pinball, CRPS and coverage
  columns when any method has them), a per-horizon MAE table (1-based steps; about 8 steps incl.
  the first and last when H > 12; best per row in bold) and a per-region MAE table.
  `period` names a step ("week", "day") for the text.
  """
  if not results:
    raise ValueError("results must name at least one method, got an empty dict")
  for name, r in results.items():
    if not isinstance(r, dict) or "overall" not in r:
      raise ValueError(f"results[{name!r}] must be a metrics.forecast dict with 'overall', "
                       f"got {type(r).__name__}")
  os.makedirs(outdir, exist_ok=True)
  payload = {"title": title, "k": int(k), "period": period,
             "quantiles": None if quantiles is None else [float(q) for q in quantiles],
             "results": results}
  with open(os.path.join(outdir, FORECAST_JSON), "w") as f:
    json.dump(payload, f, indent=1)

  names = sorted(results, key=lambda n: _mae_key(n, results))
  has_q = any("pinball" in results[n]["overall"] for n in names)
  lines = [f"# {title}", "",
           f"Prefix: k = {k} observed steps ({period}); forecast steps k+1.. (1-based). "
           "MAE / RMSE on log1p streams, sMAPE (%) on streams, MASE relative to the seasonal "
           "naive forecast.", ""]
  if quantiles is not None:
    lines += [f"Quantile levels: {', '.join(_fmt(q, 2) for q in quantiles)}.", ""]
  header = ["method", "MAE", "MAE/series", "RMSE", "sMAPE", "MASE"]
  if has_q:
    nominal = next((results[n]["overall"].get("coverage_nominal") for n in names
                    if "coverage_nominal" in results[n]["overall"]), None)
    header += ["pinball", "CRPS", f"coverage (nominal {_fmt(nominal, 2)})"]
  header += ["n"]
  best = _best_row([results[n]["overall"].get("mae") for n in names])
  rows = []
  for i, n in enumerate(names):
    o = results[n]["overall"]
    mae = _fmt(o.get("mae"))
    rows.append([n, f"**{mae}**" if i == best else mae, _fmt(o.get("mae_series")),
                 _fmt(o.get("rmse")),
                 _fmt(o.get("smape"), 2), _fmt(o.get("mase"), 3)]
                + ([_fmt(o.get("pinball")), _fmt(o.get("crps")), _fmt(o.get("coverage"), 3)]
                   if has_q else [])
                + [str(o.get("n", "–"))])
  lines += ["## Overall", "",
            "MAE pools every scored point; MAE/series averages each series' own MAE (every "
            "series weighs the same).", ""] + _table(header, rows) + [""]

  band_names = list(next((results[n]["per_band"] for n in names if results[n].get("per_band")), {}))
  if band_names:
    lines += [f"## MAE by horizon band (steps 1-based; {period})", ""]
    rows = []
    for band in band_names:
      vals = [results[n].get("per_band", {}).get(band, {}).get("mae") for n in names]
      npts = next((results[n]["per_band"][band]["n"] for n in names
                   if band in results[n].get("per_band", {})), "–")
      b = _best_row(vals)
      rows.append([band] + [f"**{_fmt(v)}**" if j == b else _fmt(v) for j, v in enumerate(vals)]
                  + [str(npts)])
    lines += _table(["band"] + names + ["n"], rows) + [""]
    lines += [f"## Per-series mean MAE by horizon band (steps 1-based; {period})", ""]
    rows = []
    for band in band_names:
      vals = [results[n].get("per_band", {}).get(band, {}).get("mae_series") for n in names]
      nser = next((results[n]["per_band"][band].get("n_series", "–") for n in names
                   if band in results[n].get("per_band", {})), "–")
      b = _best_row(vals)
      rows.append([band] + [f"**{_fmt(v)}**" if j == b else _fmt(v) for j, v in enumerate(vals)]
                  + [str(nser)])
    lines += _table(["band"] + names + ["series"], rows) + [""]

  h_len = max(len(results[n].get("per_horizon", [])) for n in names)
  if h_len:
    lines += [f"## MAE per horizon (step, 1-based; {period})", ""]
    rows = []
    for h in _horizon_steps(h_len):
      entries = [results[n]["per_horizon"][h] if h < len(results[n].get("per_horizon", []))
                 else None for n in names]
      step = next((e["step"] for e in entries if e is not None), int(k) + h)
      vals = [None if e is None else e.get("mae") for e in entries]
      b = _best_row(vals)
      cells = [f"**{_fmt(v)}**" if j == b else _fmt(v) for j, v in enumerate(vals)]
      rows.append([str(step + 1)] + cells)
    lines += _table(["step"] + names, rows) + [""]

  regions = []
  for n in names:
    for reg in results[n].get("per_region", {}):
      if reg not in regions:
        regions.append(reg)
  if regions:
    lines += ["## MAE per region", ""]
    rows = []
    for reg in regions:
      vals = [results[n].get("per_region", {}).get(reg, {}).get("mae") for n in names]
      b = _best_row(vals)
      rows.append([reg] + [f"**{_fmt(v)}**" if j == b else _fmt(v) for j, v in enumerate(vals)])
    lines += _table(["region"] + names, rows) + [""]

  text = "\n".join(lines)
  with open(os.path.join(outdir, FORECAST_MD), "w") as f:
    f.write(text)
  return text


def fan_charts(path: str, series, mask, k: int, forecasts: dict[str, np.ndarray] | None = None,
               *, quantiles: Sequence[float] | None = None, quantile_pred=None,
               titles: Sequence[str] | None = None, n: int = 6, seed: int = 0) -> str:
  """PNG grid of n randomly sampled series (seeded): observed prefix (line, steps 0..k-1),
  observed truth after it (dots; unobserved steps not drawn), the model's quantile band
  (lowest..highest level) and median (the 0.5 level, else the mean over levels; the middle
  level when quantiles is None) when quantile_pred [N, H, Q] is given, and point forecasts
  `forecasts` (name -> [N, H]) as lines.
  x = step (0-based index), y = log1p streams; titles [N] label the panels. Returns path.
  """
  y = np.asarray(series, np.float64)
  msk = np.asarray(mask)
  if y.ndim != 2:
    raise ValueError(f"series must be [N, T], got shape {y.shape}")
  if msk.shape != y.shape:
    raise ValueError(f"mask must have the shape of series {y.shape}, got {msk.shape}")
  n_rows, t = y.shape
  if not 0 <= int(k) < t:
    raise ValueError(f"k must satisfy 0 <= k < T = {t}, got {k}")
  k = int(k)
  h_len = t - k
  forecasts = dict(forecasts or {})
  for name, fc in forecasts.items():
    if np.shape(fc) != (n_rows, h_len):
      raise ValueError(f"forecasts[{name!r}] must be [N, H] = [{n_rows}, {h_len}], "
                       f"got shape {np.shape(fc)}")
  qp = None
  if quantile_pred is not None:
    qp = np.asarray(quantile_pred, np.float64)
    if qp.ndim != 3 or qp.shape[:2] != (n_rows, h_len):
      raise ValueError(f"quantile_pred must be [N, H, Q] with N, H = {n_rows}, {h_len}, "
                       f"got shape {qp.shape}")
    if quantiles is not None and len(quantiles) != qp.shape[2]:
      raise ValueError(f"quantiles must have Q = {qp.shape[2]} levels (quantile_pred "
                       f"{qp.shape}), got {len(quantiles)}")
  if titles is not None and len(titles) != n_rows:
    raise ValueError(f"titles must have N = {n_rows} entries, got {len(titles)}")
  if n_rows == 0 or n < 1:
    raise ValueError(f"need at least one series and n >= 1, got series {y.shape}, n = {n}")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  pick = np.sort(np.random.default_rng(seed).choice(n_rows, size=min(n, n_rows), replace=False))
  ncols = min(3, len(pick))
  nrows = -(-len(pick) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
  steps = np.arange(t)
  fut = steps[k:]
  for ax, i in zip(axes.ravel(), pick):
    obs = msk[i] > 0
    hist = np.where(obs[:k], y[i, :k], np.nan)
    if k:
      ax.plot(steps[:k], hist, "o-", color="black", ms=3, lw=1.2, label="history")
    ax.plot(fut[obs[k:]], y[i, k:][obs[k:]], "o", color="black", ms=3, mfc="white",
            label="truth")
    if qp is not None:
      band = qp[i]
      ax.fill_between(fut, band[:, 0], band[:, -1], color="C0", alpha=0.25,
                      label="model band" if quantiles is None else
                      f"model {quantiles[0]:g}–{quantiles[-1]:g}")
      med = (metrics_lib.point_from_quantiles(band, quantiles) if quantiles is not None
             else band[:, band.shape[1] // 2])
      ax.plot(fut, med, "-", color="C0", lw=1.5, label="model median")
    for j, (name, fc) in enumerate(forecasts.items()):
      ax.plot(fut, np.asarray(fc, np.float64)[i], "--", color=f"C{j + 1}", lw=1.0, label=name)
    if k:
      ax.axvline(k - 0.5, color="grey", lw=0.6, ls=":")
    ax.set_title(str(titles[i]) if titles is not None else f"series {i}", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("log1p streams")
  for ax in axes.ravel()[len(pick):]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=7, loc="best")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
