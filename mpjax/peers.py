"""Forecasting peers for MP3 from the field's libraries (numpy + pandas; host-side).

The models a forecasting reviewer expects next to ours, on the same daily windows:
  `fill_history` + `local_forecasts`  per-series statistical models (statsforecast: Naive,
                                      AutoETS, AutoTheta) on each row's own history;
  `direct_inputs` + `lightgbm_direct` one global LightGBM quantile model per quantile over all
                                      windows, the forecast step a feature ("direct" strategy);
  `holiday_features`                  calendar features known at the origin, for the global model.

statsforecast, lightgbm and holidays are in the optional extra `pip install -e .[forecast]`;
each is imported only inside the function that needs it (DESIGN.md 6).
"""
from __future__ import annotations

import datetime
import functools
import warnings

import numpy as np
import pandas as pd

from mpjax import baselines

_EXTRA = "{} is needed here: pip install -e .[forecast]"

LOCAL_MODELS = ("naive", "autoets", "autotheta")
HOLIDAY_FEATURES = ("holidays_forecast", "holidays_prefix_week", "days_to_christmas",
                    "christmas_season")


def _require(module):
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(_EXTRA.format(module)) from e


def _check_int(value, name, lo=1):
  if isinstance(value, bool) or int(value) != value or value < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
  return int(value)


# ----------------------------------------------------------------------------- local models

def fill_history(series, mask, known, floor, length=None) -> list[np.ndarray]:
  """Per row, the gap-free history [L_i] a local model sees, from the window's columns.

  On-chart days keep their value; off-chart known days (censored) take that day's floor when
  finite (the song streamed fewer: its bound), else the row's lowest observed value; unknown
  days repeat the previous filled value, and leading unknown days are dropped. length [M]
  (optional) = how many leading columns of each row are valid (default all). A row without an
  observed value gets an empty array.
  """
  s = np.asarray(series, np.float64)
  if s.ndim != 2:
    raise ValueError(f"series must be [M, L], got shape {s.shape}")
  for name, a in {"mask": mask, "known": known, "floor": floor}.items():
    if np.shape(a) != s.shape:
      raise ValueError(f"{name} must have the shape of series {s.shape}, got {np.shape(a)}")
  obs, kn = np.asarray(mask) > 0, np.asarray(known) > 0
  fl = np.asarray(floor, np.float64)
  m, w = s.shape
  n = np.full(m, w) if length is None else np.asarray(length)
  if (n.shape != (m,) or (n.size and not np.issubdtype(n.dtype, np.integer))
      or (n.size and (n.min() < 0 or n.max() > w))):
    raise ValueError(f"length must be [M] = [{m}] integers in [0, {w}], got {n!r}")
  valid = np.arange(w)[None, :] < n[:, None]
  obs, off = obs & valid, kn & ~obs & valid
  low = np.where(obs, s, np.inf).min(axis=1)
  filled = np.full((m, w), np.nan)
  filled[off] = np.where(np.isfinite(fl), fl, low[:, None])[off]
  filled[obs] = s[obs]
  filled = pd.DataFrame(filled).ffill(axis=1).to_numpy()
  out = []
  for i in range(m):
    row = filled[i, :n[i]]  # NaN only before the first known day: drop those
    out.append(row[np.argmax(np.isfinite(row)):].copy() if obs[i].any() else np.empty(0))
  return out


class LocalForecasts(dict):
  """name -> [M, h] forecasts, with `fallbacks`: name -> number of rows that got Naive."""

  def __init__(self, forecasts, fallbacks):
    super().__init__(forecasts)
    self.fallbacks = fallbacks


class _Failed:
  """statsforecast fallback model that marks a failed fit with NaN, so we can count it (a
  counter would not survive statsforecast's worker processes)."""
  alias = "failed"

  def new(self):
    return _Failed()

  def forecast(self, h, *args, **kwargs):
    return {"mean": np.full(h, np.nan)}


def local_forecasts(histories, h: int, *, season_length: int = 7, models=LOCAL_MODELS,
                    n_jobs: int = 1, ets_model: str = "AZZ") -> LocalForecasts:
  """Per-series forecasts of the next h steps of each history, through statsforecast.

  naive = the last value (what statsforecast's Naive returns). autoets = AutoETS(ets_model):
  the default "AZZ" (additive errors: the data are logs; trend and season chosen by AICc) is
  about 3x faster than "ZZZ" at season 7. autotheta = AutoTheta. Both use `season_length` where
  a history has at least two seasons, else season 1 (no season). Where statsforecast fails on
  a row (in 2.1.1: AutoETS needs >= 7 points, AutoTheta >= 4) or returns a non-finite
  forecast, the row gets naive and counts in `fallbacks[name]`. Empty histories give NaN.
  Returns a `LocalForecasts` (a dict name -> [M, h] float64 with a `fallbacks` attribute).
  """
  h = _check_int(h, "h")
  season_length = _check_int(season_length, "season_length")
  models = tuple(models)
  if not models or set(models) - set(LOCAL_MODELS):
    raise ValueError(f"models must be a non-empty subset of {LOCAL_MODELS}, got {models!r}")
  hist = [np.asarray(x, np.float64).ravel() for x in histories]
  if any(not np.isfinite(x).all() for x in hist):
    raise ValueError("histories must be finite (use fill_history)")
  m = len(hist)
  lengths = np.array([len(x) for x in hist], np.int64)
  last = np.array([x[-1] if len(x) else np.nan for x in hist])
  out = {name: np.full((m, h), np.nan) for name in models}
  naive = np.repeat(last[:, None], h, axis=1)
  if "naive" in models:
    out["naive"] = naive.copy()
  fitted = [name for name in models if name != "naive"]
  if fitted and lengths.any():
    sf = _require("statsforecast")
    from statsforecast.models import AutoETS, AutoTheta
    make = {"autoets": lambda s: AutoETS(season_length=s, model=ets_model, alias="autoets"),
            "autotheta": lambda s: AutoTheta(season_length=s, alias="autotheta")}
    seasons = np.where(lengths >= 2 * season_length, season_length, 1)
    for s in np.unique(seasons[lengths > 0]):
      rows = np.flatnonzero((seasons == s) & (lengths > 0))
      df = pd.DataFrame({"unique_id": np.repeat(rows, lengths[rows]),
                         "ds": np.concatenate([np.arange(lengths[i]) for i in rows]),
                         "y": np.concatenate([hist[i] for i in rows])})
      engine = sf.StatsForecast(models=[make[name](int(s)) for name in fitted], freq=1,
                                n_jobs=n_jobs, fallback_model=_Failed())
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimiser chatter on short series
        res = engine.forecast(df=df, h=h).sort_values(["unique_id", "ds"])
      for name in fitted:
        out[name][rows] = res[name].to_numpy(np.float64).reshape(len(rows), h)
  fallbacks = {name: 0 for name in models}
  for name in fitted:
    bad = (lengths > 0) & ~np.isfinite(out[name]).all(axis=1)
    out[name][bad] = naive[bad]
    fallbacks[name] = int(bad.sum())
  return LocalForecasts(out, fallbacks)


# ----------------------------------------------------------------------------- global model

def direct_inputs(series, mask, k: int, region_ids, num_regions: int, known=None, weekday=None,
                  extra=None):
  """(x [M, F], last [M]) for `lightgbm_direct`: `baselines.prefix_features` of the prefix,
  then the `extra` [M, E] columns (e.g. `holiday_features`); last = the last observed prefix
  value (EMPTY_PREFIX_VALUE where none)."""
  x = baselines.prefix_features(series, mask, k, region_ids, num_regions, known, weekday)
  if extra is not None:
    extra = np.asarray(extra, np.float64)
    if extra.ndim != 2 or len(extra) != len(x):
      raise ValueError(f"extra must be [M, E] with M = {len(x)}, got shape {extra.shape}")
    x = np.concatenate([x, extra], axis=1)
  last, _ = baselines._last_observed(np.asarray(series, np.float64), np.asarray(mask) > 0, k)
  return x, last


LGB_PARAMS = {"num_leaves": 31, "learning_rate": 0.05, "min_data_in_leaf": 50,
              "feature_fraction": 0.9, "bagging_freq": 0, "verbosity": -1,
              "deterministic": True, "force_row_wise": True}


def _direct_rows(x, last, y, ymask, name):
  """Feature rows [x_i, h] and targets y[i, h] - last[i] of the (i, h) pairs with ymask."""
  x, last, y = (np.asarray(a, np.float64) for a in (x, last, y))
  if x.ndim != 2:
    raise ValueError(f"x_{name} must be [N, F], got shape {x.shape}")
  if last.shape != (len(x),):
    raise ValueError(f"last_{name} must be [N] = [{len(x)}], got shape {last.shape}")
  if y.ndim != 2 or len(y) != len(x) or np.shape(ymask) != y.shape:
    raise ValueError(f"y_{name} and ymask_{name} must be [N, H] with N = {len(x)}, "
                     f"got {y.shape} and {np.shape(ymask)}")
  i, h = np.nonzero(np.asarray(ymask) > 0)
  target = y[i, h] - last[i]
  if not np.isfinite(target).all():
    raise ValueError(f"y_{name} and last_{name} must be finite where ymask_{name} is 1")
  return np.column_stack([x[i], h]).astype(np.float32), target


class DirectQuantiles:
  """A fitted `lightgbm_direct` model; predict(x [M, F], last [M]) -> [M, H, Q]."""

  def __init__(self, boosters, quantiles, horizon, num_features):
    self.boosters, self.quantiles = boosters, quantiles
    self.horizon, self.num_features = horizon, num_features
    self.rounds = [b.best_iteration or b.current_iteration() for b in boosters]

  def predict(self, x, last) -> np.ndarray:
    x, last = np.asarray(x, np.float64), np.asarray(last, np.float64)
    if x.ndim != 2 or x.shape[1] != self.num_features:
      raise ValueError(f"x must be [M, {self.num_features}] (as in training), got {x.shape}")
    if last.shape != (len(x),):
      raise ValueError(f"last must be [M] = [{len(x)}], got shape {last.shape}")
    hh = self.horizon
    feats = np.column_stack([np.repeat(x.astype(np.float32), hh, axis=0),
                             np.tile(np.arange(hh, dtype=np.float32), len(x))])
    change = np.stack([b.predict(feats, num_iteration=r)
                       for b, r in zip(self.boosters, self.rounds)], axis=-1)
    # Separate models per quantile can cross; sorting keeps the set, orders the levels.
    return np.sort(last[:, None, None] + change.reshape(len(x), hh, -1), axis=-1)

  __call__ = predict


def lightgbm_direct(x_train, last_train, y_train, ymask_train, *, quantiles=(0.1, 0.5, 0.9),
                    seed: int = 0, num_threads: int = 2, params=None, num_rounds: int = 400,
                    x_val=None, last_val=None, y_val=None, ymask_val=None,
                    early_stopping_rounds: int = 50) -> DirectQuantiles:
  """One global LightGBM model per quantile over all (window, forecast step h) pairs.

  Rows are the (i, h) with ymask_train[i, h]; features x_train[i] and h (0..H-1); target
  y[i, h] - last[i], the change from the last observed prefix value (`direct_inputs` builds
  x and last). Objective "quantile" with alpha = q; q = 0.5 is the median (MAE-optimal) point
  forecast. `params` update LGB_PARAMS (the seed and num_threads arguments win). With a
  validation set (all four *_val given) each model stops at the round best on it (patience
  early_stopping_rounds), else runs num_rounds. Deterministic given seed and num_threads.
  num_threads: LightGBM's OpenMP threads busy-wait; on a host whose cores are already busy,
  2 threads ran ~7x slower than 1 (measured), so pass 1 there.
  Returns a `DirectQuantiles` (levels sorted, never crossing).
  """
  lgb = _require("lightgbm")
  qs = tuple(float(q) for q in quantiles)
  if not qs or any(not 0.0 < q < 1.0 for q in qs) or len(set(qs)) != len(qs):
    raise ValueError(f"quantiles must be distinct values in (0, 1), got {quantiles!r}")
  num_rounds = _check_int(num_rounds, "num_rounds")
  x_tr, t_tr = _direct_rows(x_train, last_train, y_train, ymask_train, "train")
  if len(t_tr) == 0:
    raise ValueError("ymask_train has no observed target")
  val = (x_val, last_val, y_val, ymask_val)
  if any(v is not None for v in val) and any(v is None for v in val):
    raise ValueError("give all of x_val, last_val, y_val, ymask_val, or none")
  horizon, num_features = np.shape(y_train)[1], np.shape(x_train)[1]
  base = {**LGB_PARAMS, **(params or {}), "seed": seed, "num_threads": num_threads}
  train = lgb.Dataset(x_tr, t_tr, params={"verbosity": -1}, free_raw_data=False)
  valid = None
  if x_val is not None:
    if np.shape(x_val)[1:] != (num_features,) or np.shape(y_val)[1:] != (horizon,):
      raise ValueError(f"x_val / y_val must be [N, {num_features}] / [N, {horizon}], got "
                       f"{np.shape(x_val)} / {np.shape(y_val)}")
    valid = lgb.Dataset(*_direct_rows(*val, "val"), reference=train)
  boosters = []
  for q in qs:
    p = dict(base, objective="quantile", alpha=q, metric="quantile")
    callbacks = [lgb.early_stopping(early_stopping_rounds, verbose=False)] if valid else []
    boosters.append(lgb.train(p, train, num_boost_round=num_rounds,
                              valid_sets=[valid] if valid else None, callbacks=callbacks))
  return DirectQuantiles(boosters, qs, horizon, num_features)


# ----------------------------------------------------------------------------- calendar

@functools.lru_cache(maxsize=None)
def _holiday_days(country: str, year: int) -> tuple[int, ...]:
  """Public holidays of a country in a year, as days since 1970-01-01 (cached)."""
  holidays = _require("holidays")
  try:
    cal = holidays.country_holidays(country.upper(), years=year)
  except NotImplementedError as e:
    raise ValueError(f"country_codes: the holidays package has no country {country!r}") from e
  return tuple(sorted((d - datetime.date(1970, 1, 1)).days for d in cal))


def _count_between(days, lo, hi):
  """Number of entries of the sorted `days` in [lo, hi], per element of lo / hi."""
  return np.searchsorted(days, hi, side="right") - np.searchsorted(days, lo, side="left")


def _before_new_year(years, n):
  """Day number (since 1970-01-01) n days before Jan 1 of the year after `years`
  (datetime64[Y]): n = 7 is Dec 25, 22 is Dec 10, 1 is Dec 31."""
  return (years + 1).astype("datetime64[D]").astype(np.int64) - n


def holiday_features(country_codes, origin_dates, horizon: int) -> np.ndarray:
  """[M, 4] calendar features known at the origin (columns HOLIDAY_FEATURES).

  origin_dates [M] = the date of each window's last prefix day (the forecast origin);
  country_codes [M] = ISO alpha-2 codes ("id", "kr", ...). Columns: public holidays of the
  country (the `holidays` package) in the forecast days origin+1 .. origin+horizon, and in the
  prefix week origin-6 .. origin; days from the origin to the nearest Dec 25 (positive =
  ahead, clipped to +-60); 1 if the forecast days overlap Dec 10 .. Dec 31, else 0.
  """
  horizon = _check_int(horizon, "horizon")
  origin = np.asarray(origin_dates, "datetime64[D]")
  codes = np.asarray(country_codes, dtype=object)
  if origin.ndim != 1 or codes.shape != origin.shape:
    raise ValueError(f"country_codes and origin_dates must be [M] of one length, got "
                     f"{codes.shape} and {origin.shape}")
  if np.isnat(origin).any():
    raise ValueError("origin_dates must not contain NaT")
  day = origin.astype(np.int64)  # days since 1970-01-01
  start, end = day + 1, day + horizon
  out = np.zeros((len(day), len(HOLIDAY_FEATURES)))
  first_year = (origin - 7).astype("datetime64[Y]").astype(int) + 1970
  last_year = (origin + horizon).astype("datetime64[Y]").astype(int) + 1970
  codes = np.array([c.lower() if isinstance(c, str) else c for c in codes], dtype=object)
  for code in sorted(set(codes), key=str):
    if not isinstance(code, str) or len(code) != 2:
      raise ValueError(f"country_codes must be ISO alpha-2 strings, got {code!r}")
    rows = codes == code
    years = range(first_year[rows].min(), last_year[rows].max() + 1)
    days = np.array(sorted(d for y in years for d in _holiday_days(code, int(y))), np.int64)
    out[rows, 0] = _count_between(days, start[rows], end[rows])
    out[rows, 1] = _count_between(days, day[rows] - 6, day[rows])
  year = origin.astype("datetime64[Y]")
  to_xmas = np.stack([_before_new_year(year + dy, 7) - day for dy in (-1, 0, 1)])
  nearest = to_xmas[np.argmin(np.abs(to_xmas), axis=0), np.arange(len(day))]
  out[:, 2] = np.clip(nearest, -60, 60)
  y0 = (origin + 1).astype("datetime64[Y]")
  span = (origin + horizon).astype("datetime64[Y]") - y0
  for dy in range(int(span.astype(np.int64).max(initial=0)) + 1):
    overlap = (start <= _before_new_year(y0 + dy, 1)) & (end >= _before_new_year(y0 + dy, 22))
    out[:, 3] = np.maximum(out[:, 3], overlap)
  return out
