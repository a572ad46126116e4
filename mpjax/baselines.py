"""Forecast baselines for chart curves after a song's debut (numpy; host-side).

Data layout (per (song, region) row):
  series [N, T]  log1p(streams) per step (weekly or daily).
  mask   [N, T]  1 = observed on the chart; 0 = off-chart / censored / unknown. Values where
                 mask = 0 are meaningless and are never read.
  k              the observed prefix is steps 0..k-1; steps k..T-1 (H = T - k) are forecast.
  region_ids [N] int in [0, num_regions).
  extrinsic [N, F] float features known at debut (F may be 0).
  known  [N, T]  optional: 1 = the region's chart for that step exists in the data; 0 = no data
                 (a missing chart day, or after the data end). An unobserved step is off the
                 chart (censored) only where known = 1, missing where known = 0; None = every
                 step known. Only the prefix models (`prefix_features` and the regressors on
                 it) read it; the other baselines skip every unobserved step, i.e. they already
                 treat unknown steps as missing.
  weekday [N]    optional int: weekday of the debut date, 0 = Monday .. 6 = Sunday, -1 = unknown.

Every baseline returns a float64 point forecast [N, H] for steps k..T-1 that is finite
everywhere, the same shape as a model's median forecast, so one evaluator
(`mpjax.metrics.forecast`) scores all of them. Where a rule has no data to work with, a
documented fallback is used instead:

  "last value" of a row = the value at the last observed prefix step (mask > 0, step < k);
  a row with no observed prefix step uses `EMPTY_PREFIX_VALUE` (0.0 = log1p(0 streams), i.e.
  "off the chart").

The prefix-based baselines (`seasonal_naive`, `last_value`, `exp_decay`, `power_decay`) need
k >= 1. The trend baselines floor their forecasts at `floor` (default 0.0: log1p streams
cannot be negative); pass floor=None when `series` is not in log1p space.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

EMPTY_PREFIX_VALUE = 0.0


# ----------------------------------------------------------------------------- validation

def _check_series(series, mask, k, *, name="series", mask_name="mask", min_k=0):
  series = np.asarray(series, np.float64)
  mask = np.asarray(mask)
  if series.ndim != 2:
    raise ValueError(f"{name} must be [N, T], got shape {series.shape}")
  if mask.shape != series.shape:
    raise ValueError(f"{mask_name} must have the shape of {name} {series.shape}, "
                     f"got {mask.shape}")
  k = _check_k(k, series.shape[1], min_k=min_k, name=name)
  return series, mask > 0, k


def _check_k(k, t, *, min_k=0, name="series"):
  if isinstance(k, bool) or int(k) != k:
    raise ValueError(f"k must be an integer, got {k!r}")
  k = int(k)
  if not min_k <= k < t:
    raise ValueError(f"k must satisfy {min_k} <= k < T = {t} ({name} has T = {t}), got k = {k}")
  return k


def _check_regions(region_ids, n, num_regions, *, name="region_ids"):
  ids = np.asarray(region_ids)
  if ids.shape != (n,):
    raise ValueError(f"{name} must be [N] = [{n}], got shape {ids.shape}")
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    if not np.all(ids == np.round(ids)):
      raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")
  ids = ids.astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= num_regions):
    raise ValueError(f"{name} must lie in [0, num_regions = {num_regions}), "
                     f"got range [{ids.min()}, {ids.max()}]")
  return ids


def _check_num_regions(num_regions):
  if isinstance(num_regions, bool) or int(num_regions) != num_regions or num_regions < 1:
    raise ValueError(f"num_regions must be a positive integer, got {num_regions!r}")
  return int(num_regions)


def _check_known(known, shape, *, name="known"):
  kn = np.asarray(known)
  if kn.shape != tuple(shape):
    raise ValueError(f"{name} must have the shape of the series [N, T] = {tuple(shape)}, "
                     f"got {kn.shape}")
  if kn.size and not (kn.dtype == bool or np.issubdtype(kn.dtype, np.number)):
    raise ValueError(f"{name} must be bool or 0/1, got dtype {kn.dtype}")
  return kn > 0


def _check_weekday(weekday, n, *, name="weekday"):
  wd = np.asarray(weekday)
  if wd.shape != (n,):
    raise ValueError(f"{name} must be [N] = [{n}], got shape {wd.shape}")
  if wd.size and not np.issubdtype(wd.dtype, np.integer):
    if not (np.issubdtype(wd.dtype, np.number) and np.all(wd == np.round(wd))):
      raise ValueError(f"{name} must be integers, got dtype {wd.dtype}")
  wd = wd.astype(np.int64)
  if wd.size and (wd.min() < -1 or wd.max() > 6):
    raise ValueError(f"{name} must lie in [-1, 6] (0 = Monday, -1 = unknown), "
                     f"got range [{wd.min()}, {wd.max()}]")
  return wd


def _check_extrinsic(extrinsic, n=None, *, name="extrinsic", f=None):
  x = np.asarray(extrinsic, np.float64)
  if n is not None and x.ndim == 1 and x.size == 0:
    x = x.reshape(n, 0)
  if x.ndim != 2 or (n is not None and x.shape[0] != n):
    want = "[N, F]" if n is None else f"[N, F] with N = {n}"
    raise ValueError(f"{name} must be {want}, got shape {x.shape}")
  if f is not None and x.shape[1] != f:
    raise ValueError(f"{name} must have F = {f} features (as in training), got shape {x.shape}")
  return x


# ----------------------------------------------------------------------------- helpers

def _last_observed(series, mask, k):
  """(value [N], has_prefix [N] bool): value at the last observed step < k."""
  obs = mask[:, :k]
  has = obs.any(axis=1)
  idx = k - 1 - np.argmax(obs[:, ::-1], axis=1)
  val = np.where(has, series[np.arange(len(series)), idx], EMPTY_PREFIX_VALUE)
  return val, has


def _floor(pred, floor):
  return pred if floor is None else np.maximum(pred, floor)


def _fit_line(x, series, mask, k):
  """Per-row least squares y = mean_y + s (x - mean_x) on the observed prefix points.

  Returns (mean_y, mean_x, s, ok) [N] each; ok = at least 2 points at distinct x (s = 0 where not).
  """
  w = mask[:, :k].astype(np.float64)
  x = np.broadcast_to(x[:k], w.shape)
  y = np.where(mask[:, :k], series[:, :k], 0.0)
  cnt = w.sum(axis=1)
  safe = np.maximum(cnt, 1.0)
  mx = (w * x).sum(axis=1) / safe
  my = (w * y).sum(axis=1) / safe
  dx = (x - mx[:, None]) * w
  sxx = (dx ** 2).sum(axis=1)
  sxy = (dx * (y - my[:, None])).sum(axis=1)
  ok = (cnt >= 2) & (sxx > 0)
  s = np.where(ok, sxy / np.where(ok, sxx, 1.0), 0.0)
  return my, mx, s, ok


# ----------------------------------------------------------------------------- prefix baselines

def last_value(series, mask, k: int) -> np.ndarray:
  """The last observed prefix value, repeated over the horizon (EMPTY_PREFIX_VALUE if none)."""
  series, mask, k = _check_series(series, mask, k, min_k=1)
  val, _ = _last_observed(series, mask, k)
  return np.repeat(val[:, None], series.shape[1] - k, axis=1)


def seasonal_naive(series, mask, k: int, m: int = 1) -> np.ndarray:
  """Repeat the last observed season: y_hat[k + h] = series[k - m + (h mod m)].

  m = 7 for daily data (weekly season), m = 1 for weekly data (= last value). Where k < m, or
  that prefix step is unobserved, the row's last observed prefix value is used instead.
  """
  series, mask, k = _check_series(series, mask, k, min_k=1)
  if isinstance(m, bool) or int(m) != m or m < 1:
    raise ValueError(f"m (season length) must be a positive integer, got {m!r}")
  m = int(m)
  n, t = series.shape
  h = t - k
  last, _ = _last_observed(series, mask, k)
  out = np.repeat(last[:, None], h, axis=1)
  if k >= m:
    src = k - m + (np.arange(h) % m)
    obs = mask[:, src]
    out = np.where(obs, series[:, src], out)
  return out


def exp_decay(series, mask, k: int, *, floor: float | None = 0.0) -> np.ndarray:
  """Exponential decay of streams = a straight line in log1p space.

  Per row, least squares y = a + b t over the observed prefix points (t = step index), with the
  slope clipped to b <= 0 (a decay; a clipped slope refits the intercept, giving the mean of the
  observed prefix), extrapolated to t = k..T-1 and floored at `floor`. Rows with fewer than 2
  observed prefix points use the last observed value.
  """
  series, mask, k = _check_series(series, mask, k, min_k=1)
  t = np.arange(series.shape[1], dtype=np.float64)
  my, mt, b, ok = _fit_line(t, series, mask, k)
  b = np.minimum(b, 0.0)
  pred = my[:, None] + b[:, None] * (t[None, k:] - mt[:, None])
  last, _ = _last_observed(series, mask, k)
  pred = np.where(ok[:, None], pred, last[:, None])
  return _floor(pred, floor)


def power_decay(series, mask, k: int, *, floor: float | None = 0.0) -> np.ndarray:
  """Power-law decay of streams, c (t + 1)^(-b): y = a - b log(t + 1) in log space.

  Per row, least squares over the observed prefix points with b clipped to b >= 0 (a clipped
  slope refits the intercept = mean of the observed prefix), extrapolated to t = k..T-1 and
  floored at `floor`. Rows with fewer than 2 observed prefix points use the last observed value.
  """
  series, mask, k = _check_series(series, mask, k, min_k=1)
  x = np.log(np.arange(series.shape[1], dtype=np.float64) + 1.0)
  my, mx, s, ok = _fit_line(x, series, mask, k)
  b = np.maximum(-s, 0.0)
  pred = my[:, None] - b[:, None] * (x[None, k:] - mx[:, None])
  last, _ = _last_observed(series, mask, k)
  pred = np.where(ok[:, None], pred, last[:, None])
  return _floor(pred, floor)


# ----------------------------------------------------------------------------- trained baselines

def _region_step_mean(values, valid, region_ids, num_regions):
  """Mean of values [N, H] over rows per (region, step) where valid; (mean [R, H], count [R, H],
  all-region mean [H], all-region count [H])."""
  v = np.where(valid, values, 0.0)
  w = valid.astype(np.float64)
  h = values.shape[1]
  sums = np.zeros((num_regions, h))
  cnts = np.zeros((num_regions, h))
  np.add.at(sums, region_ids, v)
  np.add.at(cnts, region_ids, w)
  all_s, all_c = sums.sum(axis=0), cnts.sum(axis=0)
  mean = sums / np.maximum(cnts, 1.0)
  all_mean = all_s / np.maximum(all_c, 1.0)
  return mean, cnts, all_mean, all_c


def train_drift(train_series, train_mask, train_region_ids, k: int,
                num_regions: int) -> Callable[..., np.ndarray]:
  """Learned average curve shape after the prefix, per (region, forecast step).

  Fitted on the training split: drift[r, h] = mean over training rows of region r with an
  observed prefix and step k + h observed of (y[k + h] - last observed prefix value). The
  forecast is a row's last observed prefix value + drift[region, h]. A (region, step) without
  training data uses the all-region mean drift of that step, then 0.

  The level table level[r, h] = mean of y[k + h] over observed training rows of region r (falling
  back to the all-region step mean, then the mean of all observed training forecast-window
  values, then 0) is the forecast for k == 0 (no prefix: a usable pure-audio baseline) and for
  test rows whose prefix has no observed step.

  Returns f(series [N, T], mask [N, T], region_ids [N]) -> [N, H]; `series` must have the
  training T (its values are only read in the prefix).
  """
  num_regions = _check_num_regions(num_regions)
  ys, ms, k = _check_series(train_series, train_mask, k, name="train_series",
                            mask_name="train_mask")
  n, t = ys.shape
  ids = _check_regions(train_region_ids, n, num_regions, name="train_region_ids")
  fut, fmask = ys[:, k:], ms[:, k:]

  level, lcnt, all_level, all_lcnt = _region_step_mean(fut, fmask, ids, num_regions)
  overall = float(fut[fmask].mean()) if fmask.any() else 0.0
  all_level = np.where(all_lcnt > 0, all_level, overall)
  level = np.where(lcnt > 0, level, all_level[None, :])

  if k > 0:
    last, has = _last_observed(ys, ms, k)
    valid = fmask & has[:, None]
    drift, dcnt, all_drift, all_dcnt = _region_step_mean(fut - last[:, None], valid, ids,
                                                         num_regions)
    all_drift = np.where(all_dcnt > 0, all_drift, 0.0)
    drift = np.where(dcnt > 0, drift, all_drift[None, :])

  def f(series, mask, region_ids) -> np.ndarray:
    s, msk, _ = _check_series(series, mask, k)
    if s.shape[1] != t:
      raise ValueError(f"series must have the training T = {t} steps, got shape {s.shape}")
    r = _check_regions(region_ids, len(s), num_regions)
    lev = level[r]
    if k == 0:
      return lev.copy()
    lst, hs = _last_observed(s, msk, k)
    return np.where(hs[:, None], lst[:, None] + drift[r], lev)

  return f


def extrinsic_regressor(train_extrinsic, train_series, train_mask, train_region_ids, k: int,
                        num_regions: int, alpha: float = 1.0) -> Callable[..., np.ndarray]:
  """Ridge regression from debut-time features to each forecast step (ignores the prefix).

  Features: the extrinsic columns standardised with the training mean / std (std 0 -> 1;
  non-finite entries -> the training mean, i.e. 0 after standardising) plus a one-hot region.
  One sklearn `Ridge(alpha)` (with intercept) per forecast step k + h, fitted on the training
  rows observed at that step. A step with fewer than 2 observed training rows predicts the
  training mean of that step if it has one row, else the mean of all observed training
  forecast-window values, else 0. Works with F = 0 (region one-hot only).

  Returns f(extrinsic [N, F], region_ids [N]) -> [N, H].
  """
  from sklearn.linear_model import Ridge

  num_regions = _check_num_regions(num_regions)
  ys, ms, k = _check_series(train_series, train_mask, k, name="train_series",
                            mask_name="train_mask")
  n, t = ys.shape
  x = _check_extrinsic(train_extrinsic, n, name="train_extrinsic")
  ids = _check_regions(train_region_ids, n, num_regions, name="train_region_ids")
  if not alpha >= 0:
    raise ValueError(f"alpha must be >= 0, got {alpha!r}")
  nf = x.shape[1]
  finite = np.isfinite(x)
  cnt = finite.sum(axis=0)
  mu = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(cnt, 1)
  var = np.where(finite, (x - mu) ** 2, 0.0).sum(axis=0) / np.maximum(cnt, 1)
  sd = np.sqrt(var)
  sd = np.where(sd > 0, sd, 1.0)

  def design(ext, r):
    z = np.where(np.isfinite(ext), (ext - mu) / sd, 0.0)
    return np.concatenate([z, np.eye(num_regions)[r]], axis=1)

  xd = design(x, ids)
  fut, fmask = ys[:, k:], ms[:, k:]
  overall = float(fut[fmask].mean()) if fmask.any() else 0.0
  models = []  # per step: fitted Ridge or a constant
  for h in range(t - k):
    rows = fmask[:, h]
    if rows.sum() >= 2:
      models.append(Ridge(alpha=alpha).fit(xd[rows], fut[rows, h]))
    elif rows.sum() == 1:
      models.append(float(fut[rows, h][0]))
    else:
      models.append(overall)

  def f(extrinsic, region_ids) -> np.ndarray:
    ext = _check_extrinsic(extrinsic, f=nf)
    r = _check_regions(region_ids, len(ext), num_regions)
    d = design(ext, r)
    out = np.empty((len(ext), t - k))
    for h, mdl in enumerate(models):
      out[:, h] = mdl if isinstance(mdl, float) else mdl.predict(d)
    return out

  return f


def mean_last(series, mask, k: int, window: int = 7) -> np.ndarray:
  """Mean of the observed values among the last `window` prefix steps, repeated over the
  horizon (EMPTY_PREFIX_VALUE for a row with none): the smoothed level a practitioner tries
  first on daily charts (weekday effects average out over 7 days)."""
  series, mask, k = _check_series(series, mask, k, min_k=1)
  if isinstance(window, bool) or int(window) != window or window < 1:
    raise ValueError(f"window must be a positive integer, got {window!r}")
  lo = max(0, k - int(window))
  obs = mask[:, lo:k]
  cnt = obs.sum(axis=1)
  val = np.where(obs, series[:, lo:k], 0.0).sum(axis=1) / np.maximum(cnt, 1)
  val = np.where(cnt > 0, val, EMPTY_PREFIX_VALUE)
  return np.repeat(val[:, None], series.shape[1] - k, axis=1)


def prefix_features(series, mask, k: int, region_ids, num_regions: int, known=None,
                    weekday=None) -> np.ndarray:
  """[N, 2k + 3 + R (+ k with known) (+ 7 with weekday)] features of the prefix, as a global
  model on it sees them, in this column order: the shape relative to the last observed value
  (0 where unobserved), the observed flags, the level (last observed value), the slope of a
  line through the observed prefix, whether any step was observed, the region one-hot; then,
  when `known` [N, T] is given, the off-chart flags known & ~mask of the prefix steps (so a
  step is observed, off chart, or unknown = both flags 0); then, when `weekday` [N] is given,
  the one-hot of the debut weekday (0 = Monday .. 6 = Sunday; all zeros for -1 = unknown).
  Without known / weekday the columns are exactly the first 2k + 3 + R."""
  series, mask, k = _check_series(series, mask, k, min_k=1)
  ids = _check_regions(region_ids, len(series), _check_num_regions(num_regions))
  last, has = _last_observed(series, mask, k)
  rel = np.where(mask[:, :k], series[:, :k] - last[:, None], 0.0)
  _, _, slope, _ = _fit_line(np.arange(k, dtype=np.float64), series, mask, k)
  cols = [rel, mask[:, :k].astype(np.float64), last[:, None], slope[:, None],
          has[:, None].astype(np.float64), np.eye(num_regions)[ids]]
  # New columns go last, so the layout without them is unchanged.
  if known is not None:
    kn = _check_known(known, series.shape)
    cols.append((kn[:, :k] & ~mask[:, :k]).astype(np.float64))
  if weekday is not None:
    wd = _check_weekday(weekday, len(series))
    # Row 7 of the padded identity is all zeros: -1 (unknown) indexes it.
    cols.append(np.eye(8, 7)[np.where(wd < 0, 7, wd)])
  return np.concatenate(cols, axis=1)


def prefix_regressor(train_series, train_mask, train_region_ids, k: int, num_regions: int,
                     make_model: Callable[[], object], train_known=None,
                     train_weekday=None) -> Callable[..., np.ndarray]:
  """A global model on `prefix_features`, one per forecast step k + h, predicting the change
  from the last observed value; fitted on the training rows with an observed prefix and an
  observed step k + h. The forecast is last value + predicted change. Rows without an observed
  prefix, and steps with fewer than 2 training rows, get `train_drift`'s forecast.

  make_model: () -> an unfitted scikit-learn regressor (fit / predict).
  train_known [N, T] / train_weekday [N]: optional, add the off-chart flags / the debut-weekday
  one-hot to the features (see `prefix_features`).
  Returns f(series [N, T], mask [N, T], region_ids [N], known=None, weekday=None) -> [N, H];
  known (weekday) is required if and only if the model was fitted with train_known
  (train_weekday).
  """
  num_regions = _check_num_regions(num_regions)
  ys, ms, k = _check_series(train_series, train_mask, k, name="train_series",
                            mask_name="train_mask", min_k=1)
  n, t = ys.shape
  ids = _check_regions(train_region_ids, n, num_regions, name="train_region_ids")
  use_known, use_weekday = train_known is not None, train_weekday is not None
  if use_known:
    train_known = _check_known(train_known, ys.shape, name="train_known")
  if use_weekday:
    train_weekday = _check_weekday(train_weekday, n, name="train_weekday")
  drift = train_drift(ys, ms, ids, k, num_regions)
  x = prefix_features(ys, ms, k, ids, num_regions, train_known, train_weekday)
  last, has = _last_observed(ys, ms, k)
  models = []
  for h in range(t - k):
    rows = has & ms[:, k + h]
    models.append(make_model().fit(x[rows], ys[rows, k + h] - last[rows])
                  if rows.sum() >= 2 else None)

  def f(series, mask, region_ids, known=None, weekday=None) -> np.ndarray:
    s, msk, _ = _check_series(series, mask, k, min_k=1)
    if s.shape[1] != t:
      raise ValueError(f"series must have the training T = {t} steps, got shape {s.shape}")
    r = _check_regions(region_ids, len(s), num_regions)
    # The fitted models expect exactly the training feature columns.
    if use_known != (known is not None):
      raise ValueError("known must be given if and only if the model was fitted with "
                       f"train_known (fitted with train_known: {use_known})")
    if use_weekday != (weekday is not None):
      raise ValueError("weekday must be given if and only if the model was fitted with "
                       f"train_weekday (fitted with train_weekday: {use_weekday})")
    if use_known:
      known = _check_known(known, s.shape)
    if use_weekday:
      weekday = _check_weekday(weekday, len(s))
    out = drift(s, msk, r)
    lst, hs = _last_observed(s, msk, k)
    if hs.any():
      feats = prefix_features(s[hs], msk[hs], k, r[hs], num_regions,
                              None if known is None else known[hs],
                              None if weekday is None else weekday[hs])
      for h, mdl in enumerate(models):
        if mdl is not None:
          out[hs, h] = lst[hs] + mdl.predict(feats)
    return out

  return f


def prefix_ridge(train_series, train_mask, train_region_ids, k: int, num_regions: int,
                 alpha: float = 1.0, train_known=None, train_weekday=None):
  """`prefix_regressor` with a ridge regression (sklearn `Ridge(alpha)`, intercept)."""
  from sklearn.linear_model import Ridge
  return prefix_regressor(train_series, train_mask, train_region_ids, k, num_regions,
                          lambda: Ridge(alpha=alpha), train_known, train_weekday)


def prefix_boosted(train_series, train_mask, train_region_ids, k: int, num_regions: int,
                   seed: int = 0, train_known=None, train_weekday=None):
  """`prefix_regressor` with gradient-boosted trees (sklearn `HistGradientBoostingRegressor`,
  default settings, `random_state=seed`)."""
  from sklearn.ensemble import HistGradientBoostingRegressor
  return prefix_regressor(train_series, train_mask, train_region_ids, k, num_regions,
                          lambda: HistGradientBoostingRegressor(random_state=seed),
                          train_known, train_weekday)


# ----------------------------------------------------------------------------- forecast origins

def origin_support(mask, k: int, o_max: int, xp=np):
  """[..., o_max + 1] bool: the origins o in [0, o_max] a training window (steps o..o + W - 1
  of the stored series) may start at: those whose prefix (steps o..o + k - 1) holds an observed
  step; a row with none has origin 0 alone. MP3's training sampler (`tasks.forecast_window`)
  draws uniformly from this set and the peers of the backtest are fitted on exactly these
  windows, so both learn from the same data. `xp` = numpy or jax.numpy."""
  k = max(int(k), 1)
  m = mask.astype(xp.int32)
  obs = xp.cumsum(xp.pad(m, [(0, 0)] * (m.ndim - 1) + [(1, 0)]), axis=-1)
  o = xp.arange(o_max + 1)
  valid = (obs[..., o + k] - obs[..., o]) > 0
  return valid | (~valid.any(-1, keepdims=True) & (o == 0))


def take_windows(rows: dict, row, origin, window: int) -> dict:
  """Steps [o, o + window) of the rows' [N, T] arrays (T = that of rows['series']) for each
  (row, origin) pair: arrays [N, T] are cut (steps past T: 0, False, or NaN for floats named
  'floor'), other arrays [N, ...] are indexed, the rest is left out. Adds 'row' and 'origin'
  [M]."""
  row, origin = np.asarray(row, np.int64), np.asarray(origin, np.int64)
  n, t = np.shape(rows["series"])
  idx = origin[:, None] + np.arange(window)
  inside = idx < t
  out = {"row": row, "origin": origin}
  for name, v in rows.items():
    if not isinstance(v, np.ndarray) or len(v) != n:
      continue
    if v.ndim == 2 and v.shape[1] == t:
      fill = np.nan if name == "floor" else 0
      out[name] = np.where(inside, v[row[:, None], np.minimum(idx, t - 1)], fill).astype(v.dtype)
    else:
      out[name] = v[row]
  return out


# ----------------------------------------------------------------------------- all at once

def _split(d, name):
  for key in ("series", "mask", "region_ids"):
    if key not in d:
      raise ValueError(f"{name} must have key {key!r}, got keys {sorted(d)}")
  s = np.asarray(d["series"], np.float64)
  ext = d.get("extrinsic")
  if ext is None:
    ext = np.zeros((s.shape[0] if s.ndim else 0, 0))
  return s, d["mask"], d["region_ids"], ext


def run_all(train: dict, test: dict, k: int, m: int, num_regions: int) -> dict[str, np.ndarray]:
  """All baselines on `test` (dicts with series, mask, region_ids and optional extrinsic,
  known [N, T] and weekday [N]).

  Returns name -> [N_test, H]: seasonal_naive, last_value, mean_last7, exp_decay, power_decay,
  and, fitted on `train`, prefix_ridge and prefix_boosted (all omitted for k == 0: no prefix),
  train_drift and extrinsic_ridge (fitted on `train`). known and weekday are features of
  prefix_ridge / prefix_boosted only (see `prefix_features`), each used only when both `train`
  and `test` have it (not None); present on one side only, it is ignored for both.
  """
  trs, trm, tri, trx = _split(train, "train")
  tes, tem, tei, tex = _split(test, "test")
  # A prefix model needs the same feature columns at fit and at predict time.
  opt = {key: (train[key], test[key]) if train.get(key) is not None
         and test.get(key) is not None else (None, None) for key in ("known", "weekday")}
  (trk, tek), (trw, tew) = opt["known"], opt["weekday"]
  out = {}
  if k > 0:
    out["seasonal_naive"] = seasonal_naive(tes, tem, k, m)
    out["last_value"] = last_value(tes, tem, k)
    out["exp_decay"] = exp_decay(tes, tem, k)
    out["power_decay"] = power_decay(tes, tem, k)
    out["mean_last7"] = mean_last(tes, tem, k, 7)
    out["prefix_ridge"] = prefix_ridge(trs, trm, tri, k, num_regions, train_known=trk,
                                       train_weekday=trw)(tes, tem, tei, tek, tew)
    out["prefix_boosted"] = prefix_boosted(trs, trm, tri, k, num_regions, train_known=trk,
                                           train_weekday=trw)(tes, tem, tei, tek, tew)
  out["train_drift"] = train_drift(trs, trm, tri, k, num_regions)(tes, tem, tei)
  out["extrinsic_ridge"] = extrinsic_regressor(trx, trs, trm, tri, k, num_regions)(tex, tei)
  return out
