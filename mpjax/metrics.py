"""Regression metrics, overall and per region (numpy; computed on host after eval).

All functions take predictions, targets and weights of the same shape; weight 0 entries
(padding regions, targets that are not computable) are ignored.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _select(pred, target, weight):
  pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
  w = np.asarray(weight, np.float64).ravel() > 0
  return pred[w], target[w]


def _rank(x):
  """Average ranks (ties get the mean rank), like scipy.stats.rankdata."""
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(1, len(x) + 1)
  _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inv, weights=ranks)
  return (sums / counts)[inv]


def regression(pred, target, weight) -> dict[str, float]:
  """mse, mae, r2 (1 - SSE/SST around the target mean), spearman, n."""
  p, t = _select(pred, target, weight)
  n = len(p)
  out = {"n": float(n)}
  if n == 0:
    return out | {"mse": np.nan, "mae": np.nan, "r2": np.nan, "spearman": np.nan}
  err = p - t
  out["mse"] = float(np.mean(err ** 2))
  out["mae"] = float(np.mean(np.abs(err)))
  sst = float(np.sum((t - t.mean()) ** 2))
  out["r2"] = float(1 - np.sum(err ** 2) / sst) if sst > 0 else np.nan
  if n > 1 and np.ptp(p) > 0 and np.ptp(t) > 0:
    out["spearman"] = float(np.corrcoef(_rank(p), _rank(t))[0, 1])
  else:
    out["spearman"] = np.nan
  return out


def per_region(pred, target, weight, region_ids, region_names: Sequence[str]) -> dict[str, float]:
  """{'within_region_r2': ..., 'region_means_r2': ..., 'mse': ..., 'r2': ..., 'us/r2': ...}.

  r2, mse, ... are pooled over regions, then per region 'us/r2', ...; within_region_r2 = the
  mean of the per-region R² (regions with 2+ pairs): how well songs are ranked within a region,
  the figure to compare with an audio-only ceiling. region_means_r2 = the pooled R² of predicting
  every pair by its region's mean target in the same split: what knowing the region alone buys
  (an upper bound of that baseline, the means being the split's own), to read the pooled R² by.
  """
  out = regression(pred, target, weight)
  ids = np.asarray(region_ids).ravel()
  w = np.asarray(weight).ravel()
  t = np.asarray(target, np.float64).ravel()
  means = np.zeros_like(t)
  within = []
  for i, name in enumerate(region_names):
    sel = (ids == i) & (w > 0)
    if sel.any():
      means[sel] = t[sel].mean()
      for k, v in regression(np.asarray(pred).ravel()[sel], t[sel], np.ones(sel.sum())).items():
        out[f"{name}/{k}"] = v
      if sel.sum() >= 2 and np.isfinite(out[f"{name}/r2"]):
        within.append(out[f"{name}/r2"])
  out["within_region_r2"] = float(np.mean(within)) if within else np.nan
  out["region_means_r2"] = regression(means, t, w)["r2"]
  return out


# ----------------------------------------------------------------------------- forecasting
#
# Chart-curve forecasts after a song's debut: the first k steps of a (song, region) series are
# given, steps k..k+H-1 are forecast. `target` and `mask` [N, H] cover the forecast window only;
# targets are log1p(streams), and only mask > 0 points count.
#
#   mae, rmse   on log1p streams.
#   smape       symmetric MAPE in % on streams (expm1 of the log values, which are clipped at
#               700 to stay finite): mean of 200 |F - A| / (|F| + |A|), a term being 0 where
#               F = A = 0. Range [0, 200].
#   mase        MAE(pred) / MAE(naive) over the same points, where `naive` is the seasonal-naive
#               forecast from the prefix (mpjax.baselines.seasonal_naive): the seasonal naive
#               scores exactly 1, < 1 beats it. NaN if naive is None or its MAE is 0.
#   n           number of scored points.
#   mae_series  the mean over scored series of each series' own MAE (every series weighs the
#               same, however many points it has); n_series = the number of scored series.
# With quantile forecasts pred [N, H, Q] at levels `quantiles` (ascending):
#   point       the 0.5 quantile if 0.5 is a level, else the mean over the Q levels; mae, rmse,
#               smape and mase score this point forecast.
#   pinball     mean pinball loss over all levels and points (`pinball_loss`).
#   crps        2 * mean over levels of the pinball loss: the standard quantile approximation of
#               the CRPS (exact in the limit of many evenly spaced levels).
#   coverage    fraction of scored targets inside [lowest quantile, highest quantile];
#   coverage_nominal  highest - lowest level (what coverage should be if calibrated).

_SMAPE_LOG_CLIP = 700.0


def pinball_loss(pred_q, target, quantiles) -> np.ndarray:
  """Elementwise pinball loss [..., Q]: max(q (y - y_q), (q - 1) (y - y_q)) per level q.

  pred_q [..., Q], target [...] (broadcast against pred_q[..., 0]), quantiles [Q] in [0, 1].
  """
  p = np.asarray(pred_q, np.float64)
  q = np.asarray(quantiles, np.float64)
  if q.ndim != 1 or p.ndim < 1 or p.shape[-1] != q.shape[0]:
    raise ValueError(f"pred_q must be [..., Q] with Q = len(quantiles); got pred_q shape "
                     f"{p.shape}, quantiles shape {q.shape}")
  if np.any((q < 0) | (q > 1)):
    raise ValueError(f"quantiles must lie in [0, 1], got {q.tolist()}")
  err = np.asarray(target, np.float64)[..., None] - p
  return np.maximum(q * err, (q - 1) * err)


def point_from_quantiles(pred_q, quantiles) -> np.ndarray:
  """The point forecast of a quantile forecast [..., Q]: the 0.5 level if present, else the mean."""
  p = np.asarray(pred_q, np.float64)
  q = np.asarray(quantiles, np.float64)
  mid = np.flatnonzero(np.isclose(q, 0.5))
  return p[..., mid[0]] if mid.size else p.mean(axis=-1)


def _forecast_point_metrics(p, t, naive):
  """Metrics on 1-D arrays of already-selected points (p, t, naive or None)."""
  n = len(p)
  nan = float("nan")
  if n == 0:
    return {"mae": nan, "rmse": nan, "smape": nan, "mase": nan, "n": 0}
  err = p - t
  mae = float(np.mean(np.abs(err)))
  f = np.expm1(np.minimum(p, _SMAPE_LOG_CLIP))
  a = np.expm1(np.minimum(t, _SMAPE_LOG_CLIP))
  den = np.abs(f) + np.abs(a)
  terms = np.where(den > 0, 200.0 * np.abs(f - a) / np.where(den > 0, den, 1.0), 0.0)
  mase = nan
  if naive is not None:
    naive_mae = float(np.mean(np.abs(naive - t)))
    if naive_mae > 0:
      mase = mae / naive_mae
  return {"mae": mae, "rmse": float(np.sqrt(np.mean(err ** 2))), "smape": float(np.mean(terms)),
          "mase": float(mase), "n": int(n)}


def _forecast_quantile_metrics(pq, t, q):
  n = len(t)
  nan = float("nan")
  nominal = float(q[-1] - q[0])
  if n == 0:
    return {"pinball": nan, "crps": nan, "coverage": nan, "coverage_nominal": nominal}
  loss = pinball_loss(pq, t, q)  # [n, Q]
  inside = (t >= pq[:, 0]) & (t <= pq[:, -1])
  return {"pinball": float(loss.mean()), "crps": float(2.0 * loss.mean()),
          "coverage": float(inside.mean()), "coverage_nominal": nominal}


def forecast(pred, target, mask, region_ids, region_names: Sequence[str], *, quantiles=None,
             naive=None, k: int = 0, bands: dict | None = None) -> dict:
  """Forecast metrics overall, per region and per horizon step (definitions above).

  pred [N, H] point or [N, H, Q] quantiles (then `quantiles` = the Q ascending levels);
  target, mask [N, H]; region_ids [N] indexing region_names; naive [N, H] optional
  seasonal-naive forecast for MASE; k = the prefix length (only labels the steps).
  bands: optional {name: (lo, hi)} ranges of absolute steps (k <= lo < hi <= k + H), each scored
  pooled over its steps into result["per_band"][name] (e.g. early vs late horizons).

  Returns {"overall": {...}, "per_region": {name: {...}} (regions with no scored point omitted),
  "per_horizon": [{"step": k + h, ...} for h in range(H)] (n = 0 and NaN metrics where a step has
  no scored point)} of plain Python numbers.
  """
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  m = np.asarray(mask)
  if quantiles is not None and len(quantiles) == 0:
    quantiles = None
  if target.ndim != 2:
    raise ValueError(f"target must be [N, H], got shape {target.shape}")
  n_rows, h_len = target.shape
  if m.shape != target.shape:
    raise ValueError(f"mask must have the shape of target {target.shape}, got {m.shape}")
  m = m > 0
  if pred.ndim == 2:
    if quantiles is not None:
      raise ValueError(f"quantiles given but pred is a point forecast of shape {pred.shape}")
    if pred.shape != target.shape:
      raise ValueError(f"pred must be [N, H] = {list(target.shape)} (or [N, H, Q]), "
                       f"got shape {pred.shape}")
    point, pq, q = pred, None, None
  elif pred.ndim == 3:
    if quantiles is None:
      raise ValueError(f"pred of shape {pred.shape} is a quantile forecast: pass quantiles")
    q = np.asarray(quantiles, np.float64)
    if pred.shape[:2] != target.shape or q.shape != (pred.shape[2],):
      raise ValueError(f"pred must be [N, H, Q] = [{n_rows}, {h_len}, len(quantiles) = "
                       f"{q.size}], got shape {pred.shape}")
    if np.any(np.diff(q) <= 0) or np.any((q < 0) | (q > 1)):
      raise ValueError(f"quantiles must be strictly ascending in [0, 1], got {q.tolist()}")
    pq = pred
    point = point_from_quantiles(pred, q)
  else:
    raise ValueError(f"pred must be [N, H] or [N, H, Q], got shape {pred.shape}")
  if naive is not None:
    naive = np.asarray(naive, np.float64)
    if naive.shape != target.shape:
      raise ValueError(f"naive must be [N, H] = {list(target.shape)}, got shape {naive.shape}")
  ids = np.asarray(region_ids)
  if ids.shape != (n_rows,):
    raise ValueError(f"region_ids must be [N] = [{n_rows}], got shape {ids.shape}")
  ids = ids.astype(np.int64)
  if n_rows and (ids.min() < 0 or ids.max() >= len(region_names)):
    raise ValueError(f"region_ids must index region_names (len {len(region_names)}), "
                     f"got range [{ids.min()}, {ids.max()}]")

  def score(sel):
    out = _forecast_point_metrics(point[sel], target[sel],
                                  None if naive is None else naive[sel])
    # Per-series mean MAE: every scored series weighs the same, however many points it has.
    rows = sel.any(axis=1)
    per_row = (np.abs(point - target) * sel).sum(axis=1)[rows] / sel.sum(axis=1)[rows]
    out["mae_series"] = float(per_row.mean()) if rows.any() else float("nan")
    out["n_series"] = int(rows.sum())
    if pq is not None:
      out |= _forecast_quantile_metrics(pq[sel], target[sel], q)
    return out

  result = {"overall": score(m), "per_region": {}, "per_horizon": []}
  for i, name in enumerate(region_names):
    sel = m & (ids == i)[:, None]
    if sel.any():
      result["per_region"][name] = score(sel)
  for h in range(h_len):
    sel = np.zeros_like(m)
    sel[:, h] = m[:, h]
    result["per_horizon"].append({"step": int(k) + h} | score(sel))
  if bands:
    result["per_band"] = {}
    for name, (lo, hi) in bands.items():
      if not k <= lo < hi <= k + h_len:
        raise ValueError(f"bands[{name!r}] = ({lo}, {hi}): need k={k} <= lo < hi <= {k + h_len}")
      sel = np.zeros_like(m)
      sel[:, lo - k:hi - k] = m[:, lo - k:hi - k]
      result["per_band"][name] = {"steps": [int(lo), int(hi)]} | score(sel)
  return result
