"""Rolling-origin evaluation on real chart data: MP3 and its peers forecast the same windows,
and every "A beats B" carries a paired song-bootstrap CI and a Diebold-Mariano test.

`launch/backtest.py` trains MP3 at each cutoff (its report writes `origin_predictions.npz`: MP3's
forecasts of every val and test series from the weekly origins `mp3.eval_origins`), then calls

    cut = cutoff_forecasts(data_dir, {seed: run_dir}, spec)   # every method on the same windows
    save_cutoff(path, cut) ... pooled = load_cutoffs(paths)
    summary = summarise(pooled, samples=1000)                  # tables, CIs, DM, segments
    markdown(summary, ...), horizon_figure(pooled, ...)

A **window** is (series, origin o): the k prefix days o..o+k-1 after the debut are given, days
o+k..o+W-1 are forecast. Val/test windows start at each origin of `spec.origins` whose prefix
holds a chart day and whose forecast days hold at least one; the train windows are exactly
those MP3 trains on (`baselines.origin_support` over 0..`spec.max_origin`), so every fitted
peer learns from the same data:
  - the baselines of `mpjax.baselines` (as in `run_all`: last value, seasonal naive, decays,
    the drift, the extrinsic ridge, and the prefix ridge / boosted trees, here fitted on the
    windows of every origin: `ridge_all_origins`, `boosted_all_origins`);
  - statsforecast's Naive, AutoETS, AutoTheta on each series' own history up to the origin
    (off-chart days filled with the chart floor, `peers.fill_history`);
  - a global LightGBM direct model (the step as a feature; quantiles 0.1 / 0.5 / 0.9) on the
    prefix features plus what is known at the origin: the origin, the chart floor, the song's
    streams in the other regions over the prefix days, and holidays (`window_features`);
  - MP3 (each seed), and `mp3_ensemble`: w * MP3 + (1 - w) * the global peer (LightGBM, the
    ridge or the boosted trees on all origins) best on the val windows, w chosen on them too.
Quantile bands (MP3, LightGBM, the ensemble) are calibrated on the val windows
(`forecast.band_scale`), as MP3's own report does.

Scores, per window and method: MAE over the on-chart forecast days (each window weighs the
same: "MAE/window"), per 7-day horizon band, and, censoring-aware, the share of off-chart known
forecast days predicted below that day's chart floor (`below_floor`; higher is better).
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np
import threadpoolctl

from mpjax import atomic
from mpjax import baselines
from mpjax import forecast as forecast_lib
from mpjax import peers
from mpjax import records
from mpjax.analysis import stats

LGBM = "lightgbm"
ENSEMBLE = "mp3_ensemble"
LOCAL = ("naive", "autoets", "autotheta")
HOLIDAY_SEASON = ((11, 20), (1, 6))  # debuts from Nov 20 to Jan 6: the holiday-season segment


@dataclasses.dataclass(frozen=True)
class Spec:
  """The windows of a backtest: k prefix days, W days in all, the scored origins, the train
  origins 0..max_origin (MP3's `mp3.origins`), the seasonal-naive period."""
  k: int = 7
  window: int = 35
  origins: tuple = (0, 7, 14, 21)
  max_origin: int = 56
  season: int = 7
  seed: int = 0


# ------------------------------------------------------------------------------------------------
# Rows and windows
# ------------------------------------------------------------------------------------------------


def read_rows(data_dir: str, split: str, manifest: dict | None = None) -> dict:
  """One row per (record of `split`, region it charted in), in the record order of
  `tasks.forecast_rows` (record, then region id): series [N, H] (log1p streams), mask, known
  [N, H] bool, floor [N, H] (log1p chart floor, NaN unknown), region_ids, record, weekday [N],
  song (str), debut (datetime64[D]), extrinsic [N, F]."""
  manifest = manifest or records.load_manifest(data_dir)
  parts = {k: [] for k in ("series", "mask", "known", "floor", "region_ids", "record", "weekday",
                           "song", "debut", "extrinsic")}
  for rec in records.read(data_dir, split, manifest=manifest):
    order = np.argsort(rec["regions"], kind="stable")
    floor = rec.get("series_floor")
    if floor is None:
      floor = np.full(rec["series"].shape, np.nan)
    for j in order:
      parts["series"].append(rec["series"][j])
      parts["mask"].append(rec["series_mask"][j])
      parts["known"].append(rec["series_known"][j])
      parts["floor"].append(np.where(rec["series_known"][j] & ~rec["series_mask"][j],
                                     floor[j], np.nan))
      parts["region_ids"].append(rec["regions"][j])
      parts["record"].append(rec["record"])
      parts["weekday"].append(rec["weekday"][j])
      parts["song"].append(rec["song_id"])
      parts["debut"].append(rec["debut"][j] or "NaT")
      parts["extrinsic"].append(rec["extrinsic"][j])
  if not parts["series"]:
    return {}
  out = {k: np.stack(v) if k in ("series", "mask", "known", "floor", "extrinsic") else np.asarray(v)
         for k, v in parts.items()}
  out["series"] = out["series"].astype(np.float64)
  out["floor"] = out["floor"].astype(np.float64)
  out["debut"] = out["debut"].astype("datetime64[D]")
  out["song"] = out["song"].astype(object)
  return out


def eval_pairs(rows: dict, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
  """(row, origin) of the scored windows: origins of spec.origins whose prefix holds a chart day
  and whose forecast days hold at least one."""
  m = rows["mask"]
  out_r, out_o = [], []
  for o in spec.origins:
    if o + spec.k >= m.shape[1]:
      continue
    pre = m[:, o:o + spec.k].any(1)
    tgt = m[:, o + spec.k:o + spec.window].any(1)
    r = np.flatnonzero(pre & tgt)
    out_r.append(r)
    out_o.append(np.full(len(r), o))
  return np.concatenate(out_r), np.concatenate(out_o)


def train_pairs(rows: dict, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
  """(row, origin) of every window MP3's training sampler can draw (`baselines.origin_support`)."""
  support = baselines.origin_support(rows["mask"], spec.k, spec.max_origin)
  return np.nonzero(support)


def windows(rows: dict, pairs, spec: Spec) -> dict:
  """`baselines.take_windows` of the pairs plus each window's calendar: origin_date = the last
  prefix day (the day the forecast is made)."""
  win = baselines.take_windows(rows, *pairs, spec.window)
  win["origin_date"] = win["debut"] + (win["origin"] + spec.k - 1).astype("timedelta64[D]")
  return win


# ------------------------------------------------------------------------------------------------
# Features known at the origin (LightGBM)
# ------------------------------------------------------------------------------------------------


def other_regions(rows: dict, win: dict, k: int) -> np.ndarray:
  """[M, 3] the song's chart life in its other regions over the window's prefix days (the same
  calendar days): regions on the chart on the last prefix day, regions on the chart on any
  prefix day, the highest log1p streams there (0 when none). Regions where the song had not
  debuted yet count as off the chart (their stored series start at their own debut)."""
  m = len(win["row"])
  out = np.zeros((m, 3))
  by_record = {}
  for i, rec in enumerate(rows["record"]):
    by_record.setdefault(int(rec), []).append(i)
  h = rows["mask"].shape[1]
  days = np.arange(k)
  for w in range(m):
    i = int(win["row"][w])
    for j in by_record[int(rows["record"][i])]:
      if j == i:
        continue
      shift = int((rows["debut"][i] - rows["debut"][j]).astype(int))
      idx = shift + int(win["origin"][w]) + days
      ok = (idx >= 0) & (idx < h)
      on = np.zeros(k, bool)
      on[ok] = rows["mask"][j, idx[ok]]
      out[w, 0] += on[-1]
      out[w, 1] += on.any()
      if on.any():
        out[w, 2] = max(out[w, 2], rows["series"][j, idx[ok & on]].max())
  return out


def window_features(rows: dict, win: dict, spec: Spec, region_codes) -> tuple[np.ndarray, np.ndarray]:
  """(x [M, F], last [M]) for the global LightGBM: `baselines.prefix_features` (with the
  off-chart flags and the debut weekday) of the window's prefix, then the origin, the chart
  floor of the last prefix day relative to the last value (0 where unknown, with a flag), the
  other regions (`other_regions`) and the holidays of the region's country
  (`peers.holiday_features`). Everything is known at the origin."""
  k = spec.k
  s, msk, kn = win["series"], win["mask"], win["known"]
  x = baselines.prefix_features(s, msk, k, win["region_ids"], len(region_codes), kn,
                                win["weekday"])
  last, _ = baselines._last_observed(s, msk, k)
  fl = win["floor"][:, k - 1]
  has_fl = np.isfinite(fl)
  cc = [region_codes[r] for r in win["region_ids"]]
  hol = peers.holiday_features(cc, win["origin_date"], spec.window - k)
  x = np.concatenate([x, win["origin"][:, None] / 7.0,
                      np.where(has_fl, fl - last, 0.0)[:, None], has_fl[:, None],
                      other_regions(rows, win, k), hol], axis=1)
  return x, last


# ------------------------------------------------------------------------------------------------
# Every method on one cutoff's windows
# ------------------------------------------------------------------------------------------------


def _histories(win: dict, rows: dict, k: int) -> list[np.ndarray]:
  """Each window's series from the debut to its last prefix day, filled (`peers.fill_history`)."""
  end = win["origin"] + k
  cols = int(end.max())
  r = win["row"]
  return peers.fill_history(rows["series"][r, :cols], rows["mask"][r, :cols],
                            rows["known"][r, :cols], rows["floor"][r, :cols], length=end)


def _mp3(run: str, split: str, rows: dict, win: dict) -> np.ndarray | None:
  """MP3's raw quantile forecasts [M, H, Q] of the windows from a run's origin_predictions.npz."""
  path = os.path.join(run, "forecast", forecast_lib.ORIGINS_NPZ)
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    if f"{split}_pred" not in z:
      return None
    keys = {(int(a), int(b), int(c)): i for i, (a, b, c) in enumerate(
        zip(z[f"{split}_record"], z[f"{split}_region"], z[f"{split}_origin"]))}
    pred = z[f"{split}_pred"].astype(np.float64)
  want = [(int(rows["record"][i]), int(rows["region_ids"][i]), int(o))
          for i, o in zip(win["row"], win["origin"])]
  missing = [w for w in want if w not in keys]
  if missing:
    raise ValueError(f"{path}: no {split} forecast for {len(missing)} window(s) (record, region, "
                     f"origin), e.g. {missing[0]}: the run's mp3.eval_origins must cover "
                     "the backtest's origins")
  return pred[[keys[w] for w in want]]


def _calibrated(val_q, test_q, val_win, k, quantiles):
  scale = forecast_lib.band_scale(val_q, val_win["series"], val_win["mask"], k, quantiles)
  return forecast_lib.scale_bands(test_q, quantiles, scale), scale


def ensemble_weight(mp3_val, other_val, win_val, k, grid=np.linspace(0, 1, 21)) -> float:
  """The weight w of MP3 in w * MP3 + (1 - w) * other (point forecasts [M, H]) that gives the
  lowest MAE/window on the val windows."""
  y, m = win_val["series"][:, k:], win_val["mask"][:, k:]
  def score(w):
    return np.nanmean(window_mae(w * mp3_val + (1 - w) * other_val, y, m))
  return float(grid[int(np.argmin([score(w) for w in grid]))])


def rules(tr: dict, te: dict, k: int, season: int, num_regions: int) -> dict:
  """The baselines of `mpjax.baselines` that need no global fit on the prefix (as in
  `baselines.run_all`): rules on each window's own prefix, and the per-region drift and the
  extrinsic ridge fitted on the train windows."""
  s, m, r = te["series"], te["mask"], te["region_ids"]
  return {"seasonal_naive": baselines.seasonal_naive(s, m, k, season),
          "last_value": baselines.last_value(s, m, k),
          "exp_decay": baselines.exp_decay(s, m, k),
          "power_decay": baselines.power_decay(s, m, k),
          "mean_last7": baselines.mean_last(s, m, k, 7),
          "train_drift": baselines.train_drift(tr["series"], tr["mask"], tr["region_ids"], k,
                                               num_regions)(s, m, r),
          "extrinsic_ridge": baselines.extrinsic_regressor(
              tr["extrinsic"], tr["series"], tr["mask"], tr["region_ids"], k,
              num_regions)(te["extrinsic"], r)}


def cutoff_forecasts(data_dir: str, runs: dict, spec: Spec, *, progress=print) -> dict:
  """Every method's forecasts of one cutoff's test windows (val windows serve calibration and
  the ensemble weight). runs: {seed: MP3 run directory}. Returns {"meta": per-window arrays,
  "point": {method: [M, H]}, "quantiles": {method: [M, H, Q]}, "target", "mask", "known",
  "floor" [M, H], "info": {...}}."""
  manifest = records.load_manifest(data_dir)
  codes = list(manifest["regions"])
  k, h = spec.k, spec.window - spec.k
  rows = {s: read_rows(data_dir, s, manifest) for s in ("train", "val", "test")}
  if not all(rows.values()):
    raise ValueError(f"{data_dir}: the train, val and test splits must all hold series (val "
                     "calibrates the bands and chooses the ensemble)")
  tr = windows(rows["train"], train_pairs(rows["train"], spec), spec)
  te = windows(rows["test"], eval_pairs(rows["test"], spec), spec)
  va = windows(rows["val"], eval_pairs(rows["val"], spec), spec)
  progress(f"[backtest] {data_dir}: {len(tr['row'])} train windows ({len(rows['train']['series'])}"
           f" series), {len(te['row'])} test, {len(va['row'])} val")
  t0 = time.time()
  point, quant = rules(tr, te, k, spec.season, len(codes)), {}

  # The global models of mpjax.baselines, fitted once on the train windows (all origins).
  # One thread: OpenMP's busy-waiting threads crawl when the other cores are busy (a training
  # run or CI beside the backtest), and each fit is small.
  fit = dict(train_known=tr["known"], train_weekday=tr["weekday"])
  val_point = {}
  with threadpoolctl.threadpool_limits(1):
    for name, make in (("ridge_all_origins", baselines.prefix_ridge),
                       ("boosted_all_origins", baselines.prefix_boosted)):
      f = make(tr["series"], tr["mask"], tr["region_ids"], k, len(codes), **fit)
      point[name], val_point[name] = (f(w["series"], w["mask"], w["region_ids"], w["known"],
                                        w["weekday"]) for w in (te, va))
  progress(f"[backtest] baselines {time.time() - t0:.0f} s")

  # statsforecast on each window's own history.
  local = peers.local_forecasts(_histories(te, rows["test"], k), h, season_length=spec.season)
  for name in LOCAL:
    point[f"sf_{name}"] = local[name]
  progress(f"[backtest] statsforecast {time.time() - t0:.0f} s")

  # LightGBM global direct on the origin-time features, early-stopped on the val windows.
  xq = [0.1, 0.5, 0.9]
  (x_tr, last_tr), (x_te, last_te), (x_va, last_va) = (
      window_features(rows[s], w, spec, codes) for s, w in (("train", tr), ("test", te),
                                                             ("val", va)))
  progress(f"[backtest] LightGBM on {int(tr['mask'][:, k:].sum())} (window, day) rows ...")
  lgbm = peers.lightgbm_direct(x_tr, last_tr, tr["series"][:, k:], tr["mask"][:, k:],
                               quantiles=xq, seed=spec.seed, num_threads=1, x_val=x_va,
                               last_val=last_va, y_val=va["series"][:, k:],
                               ymask_val=va["mask"][:, k:])
  progress(f"[backtest] LightGBM {time.time() - t0:.0f} s, rounds {lgbm.rounds}")
  lq_va = lgbm(x_va, last_va)
  quant[LGBM], scale = _calibrated(lq_va, lgbm(x_te, last_te), va, k, xq)
  point[LGBM], val_point[LGBM] = quant[LGBM][..., 1], lq_va[..., 1]

  # The ensemble's partner: the global peer best on the val windows.
  y_va, m_va = va["series"][:, k:], va["mask"][:, k:]
  val_mae = {n: float(np.nanmean(window_mae(p, y_va, m_va))) for n, p in val_point.items()}
  partner = min(val_mae, key=val_mae.get)
  info = {"train_windows": int(len(tr["row"])), "test_windows": int(len(te["row"])),
          "val_windows": int(len(va["row"])), "lightgbm_rounds": [int(r) for r in lgbm.rounds],
          "local_fallbacks": {n: int(v) for n, v in getattr(local, "fallbacks", {}).items()},
          "val_mae": val_mae, "ensemble_partner": partner, "ensemble_weight": {},
          "band_scale": {LGBM: scale}}

  # MP3 per seed and its ensemble: w * MP3 + (1 - w) * partner, w chosen on val; the
  # ensemble's band is MP3's moved to the ensemble's median, calibrated on val.
  for seed, run in sorted(runs.items()):
    q_te, q_va = _mp3(run, "test", rows["test"], te), _mp3(run, "val", rows["val"], va)
    if q_te is None or q_va is None:
      raise ValueError(f"{run}: no {forecast_lib.ORIGINS_NPZ} with val and test forecasts "
                       "(train with mp3.eval_origins set)")
    with np.load(os.path.join(run, "forecast", forecast_lib.ORIGINS_NPZ)) as z:
      qs = z["quantiles"].tolist()
    mid = qs.index(0.5)
    name, ens = f"mp3/s{seed}", f"{ENSEMBLE}/s{seed}"
    quant[name], info["band_scale"][name] = _calibrated(q_va, q_te, va, k, qs)
    point[name] = quant[name][..., mid]
    info["val_mae"][name] = float(np.nanmean(window_mae(q_va[..., mid], y_va, m_va)))
    w = ensemble_weight(q_va[..., mid], val_point[partner], va, k)
    info["ensemble_weight"][ens] = w
    shift = lambda q, p: q + (w * q[..., mid] + (1 - w) * p - q[..., mid])[..., None]  # noqa: E731
    quant[ens], info["band_scale"][ens] = _calibrated(shift(q_va, val_point[partner]),
                                                      shift(q_te, point[partner]), va, k, qs)
    point[ens] = quant[ens][..., mid]
  meta = {"song": te["song"], "region": te["region_ids"], "record": te["record"],
          "origin": te["origin"], "origin_date": te["origin_date"], "debut": te["debut"],
          "debut_pos": te["extrinsic"][:, list(manifest["feature_names"]).index("debut_pos")]
          if "debut_pos" in manifest["feature_names"] else np.full(len(te["row"]), np.nan),
          "reentry": reentered(rows["test"], te["row"], te["origin"], k),
          "gap": scrape_gap(te, k)}
  return {"meta": meta, "point": point, "quantiles": quant, "target": te["series"][:, k:],
          "mask": te["mask"][:, k:], "known": te["known"][:, k:], "floor": te["floor"][:, k:],
          "info": info}


def reentered(rows: dict, row, origin, k: int) -> np.ndarray:
  """[M] bool: by the window's last prefix day the series had left the chart (a known off-chart
  day) and come back, i.e. the window forecasts a re-entered song."""
  m, kn = rows["mask"], rows["known"]
  t = np.arange(m.shape[1])
  first_off = np.where(kn & ~m, t, m.shape[1]).min(1)
  last_on = np.maximum.accumulate(np.where(m, t, -1), axis=1)
  end = np.minimum(np.asarray(origin) + k - 1, m.shape[1] - 1)
  return last_on[row, end] > first_off[row]


def scrape_gap(win: dict, k: int) -> np.ndarray:
  """[M] bool: a day of the window without a chart in the data (a scrape gap) before its last
  known day."""
  kn = win["known"]
  last_known = np.where(kn, np.arange(kn.shape[1]), -1).max(1)
  return ((~kn) & (np.arange(kn.shape[1]) < last_known[:, None])).any(1)


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------


def window_mae(pred, target, mask) -> np.ndarray:
  """[M] each window's MAE over its on-chart forecast days (NaN for none)."""
  m = np.asarray(mask, bool)
  err = np.where(m, np.abs(np.asarray(pred) - np.asarray(target)), 0.0)
  n = m.sum(1)
  return np.where(n > 0, err.sum(1) / np.maximum(n, 1), np.nan)


def _seed_groups(names) -> dict[str, list[str]]:
  """{"mp3": ["mp3/s0", ...], ...}: the methods with a value per seed, by their base name."""
  out = {}
  for n in names:
    if "/s" in n:
      out.setdefault(n.split("/s")[0], []).append(n)
  return out


def save_cutoff(path: str, cut: dict, cutoff: str) -> None:
  """One cutoff's forecasts as an npz (no pickles: song ids as fixed-width strings)."""
  arrays = {f"meta/{k}": (v.astype(str) if v.dtype == object else v) for k, v in cut["meta"].items()}
  arrays.update({f"point/{k}": v.astype(np.float32) for k, v in cut["point"].items()})
  arrays.update({f"quantiles/{k}": v.astype(np.float32) for k, v in cut["quantiles"].items()})
  for k in ("target", "mask", "known", "floor"):
    arrays[k] = cut[k]
  arrays["meta/cutoff"] = np.full(len(cut["target"]), cutoff)
  tmp = path + ".tmp.npz"
  with open(tmp, "wb") as f:
    np.savez_compressed(f, **arrays)
  os.replace(tmp, path)
  atomic.write_json(path[:-len(".npz")] + ".json", cut["info"], indent=2)


def load_cutoffs(paths: list[str]) -> dict:
  """The saved cutoffs pooled: {"meta", "point", "quantiles", "target", "mask", "known",
  "floor"}. Every cutoff must hold the same methods."""
  parts = []
  for p in paths:
    with np.load(p) as z:
      parts.append({k: z[k] for k in z.files})
  names = [set(p) for p in parts]
  if any(n != names[0] for n in names):
    raise ValueError(f"the cutoffs {paths} hold different methods: "
                     f"{sorted(set.union(*names) - set.intersection(*names))}")
  out = {"meta": {}, "point": {}, "quantiles": {}}
  for key in parts[0]:
    v = np.concatenate([p[key] for p in parts])
    if "/" in key:
      group, name = key.split("/", 1)
      out[group][name] = v
    else:
      out[key] = v
  return out


def _ci_cell(point, ci, pct=False, digits=4):
  if not np.isfinite(point):
    return "–"
  if pct:
    return f"{100 * point:+.1f} % [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
  return f"{point:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def summarise(pooled: dict, *, samples: int = 1000, seed: int = 0, bands: int = 7) -> dict:
  """Every figure of the report from the pooled windows (see the module docstring):
  methods {name: {mae_window, mae_pooled, seeds: [per-seed MAE/window], vs_last_value: [rel,
  lo, hi], vs_mp3 / vs_ensemble: {diff, ci, dm_stat, dm_p, p_holm}, coverage, below_floor,
  bands {label: MAE/window}, origins {o: MAE/window}}}, segments {name: {n_windows, n_songs,
  methods {name: MAE/window}, mp3_vs_lightgbm [diff, lo, hi]}}, per_cutoff, counts.
  Per-seed methods (mp3/sS) enter as their mean over seeds of each window's MAE."""
  y, m = pooled["target"].astype(np.float64), pooled["mask"].astype(bool)
  known, floor = pooled["known"].astype(bool), pooled["floor"].astype(np.float64)
  meta = pooled["meta"]
  song = meta["song"]
  groups = _seed_groups(pooled["point"])
  err = {n: np.where(m, np.abs(p - y), np.nan) for n, p in pooled["point"].items()}
  for base, members in groups.items():
    err[base] = np.mean([err[n] for n in members], axis=0)
  methods = [n for n in err if "/s" not in n]
  with np.errstate(invalid="ignore"):
    mae = {n: np.nanmean(err[n], axis=1) for n in methods}
  keep = np.isfinite(mae["last_value"])
  w = stats.bootstrap_weights(song[keep], samples, seed)
  tot = w.sum(1)
  boot = {n: (w @ mae[n][keep]) / tot for n in methods}
  cens = known & ~m & np.isfinite(floor)
  out = {"methods": {}, "segments": {}, "per_cutoff": {}, "per_origin": {},
         "counts": {"windows": int(keep.sum()), "songs": int(len(set(song[keep]))),
                    "series": int(len(set(zip(meta["record"][keep], meta["region"][keep],
                                               meta["cutoff"][keep])))),
                    "cutoffs": sorted(set(meta["cutoff"].tolist())), "samples": samples,
                    "seeds": {b: len(v) for b, v in groups.items()}}}
  h = y.shape[1]
  band_edges = list(range(0, h, bands)) + [h]
  order = np.argsort(meta["origin_date"][keep], kind="stable")
  dates = meta["origin_date"][keep][order]

  def dm(a, b):
    d = (mae[a] - mae[b])[keep][order]
    uniq, inv = np.unique(dates, return_inverse=True)
    by_day = np.bincount(inv, d) / np.bincount(inv)
    return stats.diebold_mariano(by_day, h)

  refs = [r for r in ("mp3", ENSEMBLE) if r in mae]
  for n in methods:
    r = {"mae_window": float(np.mean(mae[n][keep])),
         "mae_pooled": float(np.nansum(err[n][keep]) / m[keep].sum())}
    if n in groups:
      r["seeds"] = [float(np.nanmean(np.nanmean(err[s][keep], 1))) for s in groups[n]]
    rel = boot[n] / boot["last_value"] - 1
    r["vs_last_value"] = [r["mae_window"] / float(np.mean(mae["last_value"][keep])) - 1,
                          *stats.percentile_ci(rel)]
    for ref in refs:
      if ref == n:
        continue
      diff = boot[ref] - boot[n]
      d = dm(ref, n)
      r[f"vs_{ref}"] = {"diff": float(np.mean(mae[ref][keep] - mae[n][keep])),
                        "ci": stats.percentile_ci(diff), "dm_stat": d["stat"], "dm_p": d["p"]}
    if n in pooled["quantiles"] or n in groups and all(s in pooled["quantiles"] for s in groups[n]):
      qs = [pooled["quantiles"][s] for s in groups.get(n, [n])]
      r["coverage"] = float(np.mean([((y >= q[..., 0]) & (y <= q[..., -1]))[m & keep[:, None]]
                                     .mean() for q in qs]))
    preds = [pooled["point"][s] for s in groups.get(n, [n])]
    sel = cens & keep[:, None]
    r["below_floor"] = float(np.mean([(p < floor)[sel].mean() for p in preds])) if sel.any() \
        else float("nan")
    with warnings.catch_warnings():  # a band without an on-chart day in some window
      warnings.simplefilter("ignore", RuntimeWarning)
      r["bands"] = {f"{k + lo + 1}..{k + hi}": float(np.nanmean(np.nanmean(
          err[n][keep, lo:hi], 1))) for lo, hi, k in
          [(band_edges[i], band_edges[i + 1], 7) for i in range(len(band_edges) - 1)]}
    out["methods"][n] = r
  for ref in refs:  # Holm across the rows compared with each reference
    rows = [n for n in methods if f"vs_{ref}" in out["methods"][n]]
    adj = stats.holm([out["methods"][n][f"vs_{ref}"]["dm_p"] for n in rows])
    for n, p in zip(rows, adj):
      out["methods"][n][f"vs_{ref}"]["p_holm"] = float(p)

  for o in sorted(set(meta["origin"].tolist())):
    sel = keep & (meta["origin"] == o)
    out["per_origin"][int(o)] = {"n": int(sel.sum()),
                                 **{n: float(np.mean(mae[n][sel])) for n in methods}}
  for c in out["counts"]["cutoffs"]:
    sel = keep & (meta["cutoff"] == c)
    out["per_cutoff"][c] = {"n": int(sel.sum()),
                            **{n: float(np.mean(mae[n][sel])) for n in methods}}
    for base, members in groups.items():
      out["per_cutoff"][c][base + " (seeds)"] = [float(np.nanmean(np.nanmean(err[s][sel], 1)))
                                                 for s in members]
  for name, sel in segments(meta).items():
    sel = sel & keep
    if not sel.any():
      continue
    seg = {"n_windows": int(sel.sum()), "n_songs": int(len(set(song[sel]))),
           "methods": {n: float(np.mean(mae[n][sel])) for n in methods}}
    if "mp3" in mae and LGBM in mae:
      ws = stats.bootstrap_weights(song[sel], samples, seed)
      d = (ws @ (mae["mp3"][sel] - mae[LGBM][sel])) / ws.sum(1)
      seg["mp3_vs_lightgbm"] = [float(np.mean(mae["mp3"][sel] - mae[LGBM][sel])),
                                *stats.percentile_ci(d)]
    out["segments"][name] = seg
  return out


def segments(meta: dict) -> dict[str, np.ndarray]:
  """Window subsets reported apart: holiday-season debuts (Nov 20 - Jan 6), debut position
  bands, re-entered series vs not, windows with a scrape gap."""
  debut = meta["debut"].astype("datetime64[D]")
  month = (debut.astype("datetime64[M]").astype(int) % 12) + 1
  day = (debut - debut.astype("datetime64[M]")).astype(int) + 1
  (m0, d0), (m1, d1) = HOLIDAY_SEASON
  holiday = ((month == m0) & (day >= d0)) | (month == 12) | ((month == m1) & (day <= d1))
  pos = meta["debut_pos"]
  return {"holiday-season debut": holiday, "other debuts": ~holiday,
          "debut position 1-10": pos <= 10, "debut position 11-40": (pos > 10) & (pos <= 40),
          "debut position 41-50": pos > 40,
          "re-entered before the origin": meta["reentry"].astype(bool),
          "no re-entry": ~meta["reentry"].astype(bool),
          "scrape gap in the window": meta["gap"].astype(bool)}


# ------------------------------------------------------------------------------------------------
# Report: markdown and the horizon figure
# ------------------------------------------------------------------------------------------------


def _mean_sd(r) -> str:
  s = f"{r['mae_window']:.4f}"
  if len(r.get("seeds", [])) > 1:
    s += f" ± {np.std(r['seeds'], ddof=1):.4f}"
  return s


def _method_table(title: str, methods, columns: dict) -> list[str]:
  """Markdown lines: one row per method, one column per {label: {method: value}}."""
  out = ["", f"## {title}", "", "| method | " + " | ".join(columns) + " |",
         "|---" * (len(columns) + 1) + "|"]
  for n in methods:
    out.append(f"| {n} | " + " | ".join(f"{col[n]:.4f}" for col in columns.values()) + " |")
  return out


def markdown(summary: dict, *, command: str, title: str = "Rolling-origin backtest") -> str:
  """The report: the main table (every method, its CIs and DM tests), horizon bands, origins,
  segments, cutoffs."""
  ms, c = summary["methods"], summary["counts"]
  order = sorted(ms, key=lambda n: ms[n]["mae_window"])
  refs = [r for r in ("mp3", ENSEMBLE) if r in ms]
  lines = [f"# {title}", "", f"Command: `{command}`", "",
           f"{c['windows']} scored test windows ({c['series']} series, {c['songs']} songs) over "
           f"cutoffs {', '.join(c['cutoffs'])}; seeds per seeded method: "
           + (", ".join(f"{b} {v}" for b, v in c["seeds"].items()) or "–") + ".",
           "MAE/window: each window's MAE over its on-chart forecast days (log1p daily streams), "
           "averaged over windows (MP3: mean ± sample std over seeds). CIs: 95 % paired "
           f"song-bootstrap ({c['samples']} resamples of songs). DM: Diebold-Mariano test on the "
           "loss differential averaged per forecast day (lags up to the horizon), p Holm-adjusted "
           "over the rows. below floor: share of off-chart known forecast days predicted below "
           "that day's chart floor (higher is better). Coverage: 10-90 % band, calibrated on val.",
           "", "| method | MAE/window | MAE pooled | vs last_value [95 % CI] | "
           + " | ".join(f"{r} − method [95 % CI]; DM p (Holm)" for r in refs)
           + " | coverage | below floor |", "|---" * (6 + len(refs)) + "|"]
  for n in order:
    r = ms[n]
    cells = [f"**{n}**" if n in refs else n, _mean_sd(r), f"{r['mae_pooled']:.4f}",
             _ci_cell(r["vs_last_value"][0], r["vs_last_value"][1:], pct=True)]
    for ref in refs:
      v = r.get(f"vs_{ref}")
      cells.append("–" if v is None else
                   f"{_ci_cell(v['diff'], v['ci'])}; {v.get('p_holm', float('nan')):.3g}")
    cells.append(f"{r['coverage']:.3f}" if "coverage" in r else "–")
    cells.append(f"{r['below_floor']:.3f}" if np.isfinite(r["below_floor"]) else "–")
    lines.append("| " + " | ".join(cells) + " |")
  bands = list(next(iter(ms.values()))["bands"])
  lines += _method_table("MAE/window per horizon band (days of the window, its first prefix "
                         "day = 1)", order, {b: {n: ms[n]["bands"][b] for n in order}
                                             for b in bands})
  po = summary["per_origin"]
  lines += _method_table("MAE/window per origin (days after the debut)", order,
                         {f"{o} (n={po[o]['n']})": po[o] for o in po})
  seg = summary["segments"]
  shown = [n for n in ("mp3", ENSEMBLE, LGBM, "boosted_all_origins", "ridge_all_origins",
                       "sf_autoets", "last_value")
           if n in ms]
  lines += ["", "## Segments (MAE/window)", "",
            "| segment | windows | songs | " + " | ".join(shown) + " | mp3 − lightgbm [95 % CI] |",
            "|---" * (len(shown) + 4) + "|"]
  for name, s in seg.items():
    d = s.get("mp3_vs_lightgbm")
    lines.append(f"| {name} | {s['n_windows']} | {s['n_songs']} | "
                 + " | ".join(f"{s['methods'][n]:.4f}" for n in shown) + " | "
                 + (_ci_cell(d[0], d[1:]) if d else "–") + " |")
  pc = summary["per_cutoff"]
  lines += _method_table("MAE/window per cutoff", order,
                         {f"{c} (n={pc[c]['n']})": pc[c] for c in pc})
  return "\n".join(lines) + "\n"


def horizon_figure(path: str, pooled: dict, *, methods=None, samples: int = 500, seed: int = 0,
                   k: int = 7) -> None:
  """MAE (pooled over the windows on the chart that day) per forecast day, with 95 %
  song-bootstrap bands, one line per method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  y, m = pooled["target"].astype(np.float64), pooled["mask"].astype(bool)
  groups = _seed_groups(pooled["point"])
  err = {n: np.where(m, np.abs(p - y), 0.0) for n, p in pooled["point"].items()}
  for base, members in groups.items():
    err[base] = np.mean([err[n] for n in members], axis=0)
  methods = [n for n in (methods or ("mp3", ENSEMBLE, "ridge_all_origins", LGBM, "sf_autoets",
                                     "last_value")) if n in err]
  w = stats.bootstrap_weights(pooled["meta"]["song"], samples, seed)
  days = np.arange(k + 1, k + 1 + y.shape[1])
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for n in methods:
    num, den = w @ err[n], w @ m
    with np.errstate(invalid="ignore"):
      b = num / den
    mean = err[n].sum(0) / np.maximum(m.sum(0), 1)
    lo, hi = np.nanpercentile(b, [2.5, 97.5], axis=0)
    ax.plot(days, mean, label=n)
    ax.fill_between(days, lo, hi, alpha=0.15)
  ax.set_xlabel("day of the window (its first prefix day = 1)")
  ax.set_ylabel("MAE, log1p daily streams")
  ax.set_title(f"MAE per forecast day, 95 % song-bootstrap bands "
               f"({len(pooled['target'])} windows)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
