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
  """{'mse': ..., 'r2': ..., 'us/r2': ..., ...}: overall, then per region."""
  out = regression(pred, target, weight)
  ids = np.asarray(region_ids).ravel()
  w = np.asarray(weight).ravel()
  for i, name in enumerate(region_names):
    sel = (ids == i) & (w > 0)
    if sel.any():
      for k, v in regression(np.asarray(pred).ravel()[sel], np.asarray(target).ravel()[sel],
                             np.ones(sel.sum())).items():
        out[f"{name}/{k}"] = v
  return out
