"""MP3 evaluation: the model and every baseline scored by one evaluator on the same series.

    rows = collect(data_dir, split, config, eval_fn=..., params=..., mesh=...)
        one row per (record, region it charted in): series [N, T], mask [N, T] (observed),
        known [N, T] (chart in the data), weekday [N], region_ids [N], extrinsic [N, F],
        record [N], and the model's output pred [N, H, Q] (when eval_fn given)
    model_metrics(...)   flat {mae, rmse, smape, pinball, coverage, n, <region>/mae} (val logs)
    report(...)          WORKDIR/forecast/: forecast_metrics.json, forecast_table.md (model vs
                         baselines: overall, per forecast step, per region), fan_charts.png

Baselines are fitted on the train split's rows (`train_drift`, `extrinsic_ridge`, and the
global models on the prefix `prefix_ridge`, `prefix_boosted`) or on each series' own prefix
(`seasonal_naive`, `last_value`, `mean_last7`, `exp_decay`, `power_decay`); see
`mpjax.baselines`. MASE is relative to the seasonal naive forecast on the same points; MAE is
reported pooled over points and as the mean of per-series MAEs.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from mpjax import atomic
from mpjax import baselines
from mpjax import metrics as metrics_lib
from mpjax.analysis import report as report_lib
from mpjax.input import pipeline
from mpjax.models.mp3 import median_index


def quantiles_of(config):
  """config.mp3.quantiles as a tuple of floats, or None (point forecast)."""
  q = config.mp3.quantiles
  return tuple(float(v) for v in q) if q else None


def window_of(config, manifest: dict) -> int:
  """Series length the model sees, prefix included: mp3.window, or the dataset's horizon when 0.
  A longer stored series serves the later forecast origins of training (mp3.origins)."""
  w = int(config.mp3.get("window", 0) or 0)
  return w or int(manifest["horizon"])


def horizon_bands(k: int, horizon: int, manifest: dict) -> dict[str, tuple[int, int]]:
  """Early vs late forecast steps. Weekly: split after the MP2 window (`mp2_weeks`: in the
  synthetic truth the level there is extrinsic, the decay after it audio-driven); daily: after
  day 14. Absolute 0-based [lo, hi) step ranges; labels are 1-based."""
  split = int(manifest.get("mp2_weeks", 6)) if manifest.get("period", "weekly") == "weekly" else 14
  split = min(max(split, k + 1), horizon - 1)
  if split <= k:
    return {}
  return {f"{k + 1}..{split}": (k, split), f"{split + 1}..{horizon}": (split, horizon)}


def collect(data_dir, split, config, *, eval_fn=None, params=None, mesh=None) -> dict:
  """Rows of `split` (every record x every region it charted in, eval mode: centre crop), in
  record order, gathered from every process (a collective: every process calls it)."""
  ds = pipeline.make_dataset(data_dir, split, cfg=config.input, augment=None, seed=config.seed,
                             train=False)
  keys = ("series", "series_mask", "series_known", "weekday", "region_ids", "extrinsic", "record",
          "keep")
  parts = {k: [] for k in keys + ("pred",)}
  for batch in ds:
    b, v = batch["region_ids"].shape
    if eval_fn is not None:
      out = pipeline.to_host(eval_fn(params, pipeline.to_global(batch, mesh)), mesh)
      parts["pred"].append(out.reshape(b * v, *out.shape[2:]))
    parts["keep"].append(((batch["valid"][:, None] > 0) & (batch["region_mask"] > 0)).reshape(-1))
    # The forecast window from the debut (eval origin 0): the stored series may be longer.
    w = window_of(config, pipeline.load_manifest(data_dir))
    parts["series"].append(batch["series"][..., :w].reshape(b * v, -1))
    parts["series_mask"].append(batch["series_mask"][..., :w].reshape(b * v, -1))
    parts["series_known"].append(batch["series_known"][..., :w].reshape(b * v, -1))
    parts["weekday"].append(batch["weekday"].reshape(-1))
    parts["region_ids"].append(batch["region_ids"].reshape(-1))
    parts["extrinsic"].append(batch["extrinsic"].reshape(b * v, -1))
    parts["record"].append(np.repeat(batch["record"], v))
  if not parts["series"]:
    return {}
  rows = pipeline.gather_rows({k: np.concatenate(v, 0) for k, v in parts.items() if v})
  keep = np.flatnonzero(rows.pop("keep"))
  # Record order (regions in vocabulary order within a record): the same rows, in the same
  # order, whatever the number of processes.
  order = keep[np.argsort(rows["record"][keep], kind="stable")]
  rows = {k: v[order] for k, v in rows.items()}
  rows["mask"] = rows.pop("series_mask")
  rows["known"] = rows.pop("series_known")
  rows.setdefault("pred", None)
  return rows


def _flat(result: dict) -> dict[str, float]:
  out = dict(result["overall"])
  for name, m in result["per_region"].items():
    out[f"{name}/mae"] = m["mae"]
  return out


def model_metrics(eval_fn, params, data_dir, split, config, manifest, mesh) -> dict[str, float]:
  rows = collect(data_dir, split, config, eval_fn=eval_fn, params=params, mesh=mesh)
  if not rows:
    return {}
  k = config.mp3.prefix_steps
  q = quantiles_of(config)
  pred = rows["pred"] if q else rows["pred"][..., 0]
  naive = (baselines.seasonal_naive(rows["series"], rows["mask"], k, config.mp3.season)
           if k >= 1 else None)
  res = metrics_lib.forecast(pred, rows["series"][:, k:], rows["mask"][:, k:], rows["region_ids"],
                             manifest["regions"], quantiles=q, naive=naive, k=k)
  return _flat(res)


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
  test = collect(data_dir, split, config, eval_fn=eval_fn, params=params, mesh=mesh)
  if not test:
    return f"(no {split} rows to evaluate)"
  train = collect(data_dir, "train", config)
  calib = None
  if q and len(q) > 1 and config.mp3.get("calibrate", False) and split != "val":
    val = collect(data_dir, "val", config, eval_fn=eval_fn, params=params, mesh=mesh)
    if val:
      scale = band_scale(val["pred"], val["series"], val["mask"], k, q)
      calib = {"scale": scale, "chosen_on": "val",
               "val_coverage_raw": band_coverage(val["pred"], val["series"], val["mask"], k),
               "val_coverage": band_coverage(scale_bands(val["pred"], q, scale), val["series"],
                                             val["mask"], k),
               f"{split}_coverage_raw": band_coverage(test["pred"], test["series"],
                                                      test["mask"], k)}
      test["pred"] = scale_bands(test["pred"], q, scale)
  if jax.process_index() != 0:
    return ""
  os.makedirs(outdir, exist_ok=True)
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
  md = report_lib.write_forecast_report(outdir, results, title=title, k=k, period=period,
                                        quantiles=q)
  point = metrics_lib.point_from_quantiles(test["pred"], q) if q else test["pred"][..., 0]
  report_lib.fan_charts(os.path.join(outdir, "fan_charts.png"), test["series"], test["mask"], k,
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
