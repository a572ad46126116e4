"""Chart observations -> per-(track, region) debut, MP2 target, MP3 series + mask, extrinsic features.

Input: a charts table (`tables.CHART_COLUMNS`) from any source: kworb weekly per-track histories,
daily/weekly chart snapshots, the shared kworb CSV, or `synthetic`. Output: `Targets` (see
`build_targets`). Every rule below is also returned, in words, in `Targets.definitions` (that
dict goes into manifest.json; the module doc and the dict say the same thing).

Rows used. ``period='daily'``: the daily rows. ``period='weekly'``: per region, the weekly rows if
the region has any; otherwise its daily rows, aggregated into weeks (below). Rows of the other
period are ignored. Each row's entity is ``track_key`` (`tables.track_keys`: the Spotify track id,
else the normalised "artist - title"). When one key has several rows on one (region, date) —
versions of a song whose names normalise alike, e.g. "aespa - Dirty Work" and "aespa - Dirty Work
(w/ Flo Milli)" in the kworb CSV — the row with the most streams (then the best position) stands
for the key on that date.

Debut and left-censoring. ``debut`` = the first date the (track_key, region) is on the chart in
the rows used. Before the data start a region's chart is unknown, so a first observation there is
no debut; a pair is excluded (left-censored) when
  (a) its first date is less than ``max(min_history_days, 1)`` days after the region's first chart
      date in the data (a track on the very first chart is always excluded), or
  (b) the source says the track was on this chart before: movement 'RE' at the first observation,
      or ``on_chart - 1`` (days or weeks on the source's chart so far) larger than the number of
      chart periods since the region's first chart date (its true debut precedes the data).
Only debuts within ``window = (start, end)`` (inclusive ISO dates; None / '' = open) are kept;
all rows, also outside the window, still count as history. The kworb CSV holds the top 50 of a
longer chart: there a song entering the top 50 from below is kept with its first top-50 date as
debut and ``debut_is_new`` = 0 (``new_only=True`` keeps only first-ever chart days).

Steps. ``period='weekly'``: step k = the chart week starting 7k days after debut (step 0 = the
debut week). Native weekly rows are placed at ``(date - debut) // 7``. Daily rows are aggregated
into 7-day blocks anchored at the debut: block k = days [debut + 7k, debut + 7k + 6]; the block is
*known* when it ends no later than the region's last chart date and the region has a chart on at
least 4 of its 7 days (missing chart dates are missing data, not "off chart"); it is *observed*
when known and the track is on the chart with known streams on every day the region has a chart;
its value is the sum of those streams scaled by 7 / (chart days in the block). ``period='daily'``:
step k = debut + k days; known when the region has a chart that day, observed when the track is
on it with known streams.

Targets.
- ``series[i, k]`` = log1p(streams of step k) where observed, else 0; ``series_mask[i, k]`` = 1
  where observed. Off-chart steps (censored: below the chart floor, streams unknown) and re-entries
  are part of the series as they fall. ``series_known[i, k]`` = 1 where the region's chart for
  step k exists in the data (observed, or censored below the floor), 0 where the data has no chart
  (after the region's last chart date, or a missing chart date). ``series_floor[i, k]`` =
  log1p(the chart's floor at step k), the floor as in ``longevity_target`` below (the lowest
  streams on the region's chart that step, i.e. its last position's, in the series' unit): an
  off-chart known step is below it. NaN where step k is not known (or its chart has no streams).
- ``mp2_target`` = log1p(sum of streams over weeks 0 .. mp2_weeks-1), weeks as above (for daily
  data, weekly aggregation even when ``period='daily'``). Censored weeks contribute what was
  observed of them (for a partly-charted week, the streams of its on-chart days; for an off-chart
  week, 0), so the target is a lower bound of the true total unless
  ``mp2_observed_steps == mp2_weeks``. NaN when any of the N weeks is not known (the data end comes
  first, or a week with fewer than 4 chart days).

- ``longevity_target`` = how slowly the song's streams decay after its debut: the slope b, per
  step, of the line a + b k fitted to log1p(streams) over the T series steps by censored-normal
  maximum likelihood (a Tobit fit, sd ``LONGEVITY_SIGMA``, a N(0, ``LONGEVITY_SLOPE_PRIOR_SD``²)
  prior on b): an observed step counts with its value; a known step off the chart counts as
  *below that chart's floor* (the lowest streams on the region's chart that step, in the series'
  unit), not as missing and not as 0; an unknown step does not count. Leaving the chart is
  therefore evidence of decay, and the debut level a is fitted away, so the target is the
  curve's shape, not its height (hypothesis H: debut extrinsic, longevity audio). NaN when the
  region's data ends before step T-1 starts. Higher = longer-lived; 0 = flat; -0.25 per week =
  streams falling by 22 % a week.

Extrinsic features (``Targets.extrinsic``, known at debut, per (track, region), never NaN). The
artist is the lead artist: ``artist_id`` when known (also taken from another row whose normalised
name maps to exactly one id), else `tables.normalise`(artist). History = the rows used, of other
tracks of that artist in that region, strictly before the debut date, from the region's data
start on (use ``min_history_days`` to guarantee every debut that much history).
- ``debut_pos``: chart position at debut.
- ``artist_prior_tracks``: number of other track_keys of the artist first on this chart before
  the debut date.
- ``artist_prior_peak_log_streams``: log1p(max streams of one chart observation of the artist
  before debut), in the series' unit (weekly: daily streams x 7); 0 when none.
- ``weeks_since_artist_last_on_chart``: (debut - last date before debut with the artist on the
  chart) / 7 days, capped at 52; 52 when never.
- ``artist_never_charted``: 1 when the artist has no chart row before debut (then the three
  features above are 0, 0, 52), else 0.
- ``n_featured``: number of featured artists on the debut row.
- ``artist_on_chart_at_debut``: 1 when another track of the same lead artist is on the same chart
  (region, date) as the debut, else 0; ``artist_tracks_on_chart_at_debut``: how many.
- ``song_regions_charted_before``: other regions where the same track_key was on the chart
  strictly before this debut; ``song_days_charted_elsewhere``: days from its first chart date
  there to this debut (0 when none); ``song_peak_log_streams_elsewhere``: log1p(max streams of
  one of those chart observations), in the series' unit (0 when none). A song spreading from
  region to region is known to do so at its debut in the next one.

The work is vectorised (numpy / pandas; Python loops only over unique names): 1M daily chart rows
with 56k distinct titles take about 7-10 s on 2 busy CPU cores, mostly `tables.song_key`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import special

from data_prep import tables

FEATURE_NAMES = [
    "debut_pos",
    "artist_prior_tracks",
    "artist_prior_peak_log_streams",
    "weeks_since_artist_last_on_chart",
    "artist_never_charted",
    "n_featured",
    "artist_on_chart_at_debut",
    "artist_tracks_on_chart_at_debut",
    "debut_periods_on_source_chart",
    "debut_prior_log_streams",
    "song_regions_charted_before",
    "song_days_charted_elsewhere",
    "song_peak_log_streams_elsewhere",
]
WEEKS_CAP = 52.0
MIN_CHART_DAYS_PER_WEEK = 4
# The longevity fit: residual sd of log1p streams about the line, and the prior sd of the slope
# per step (weak: it only settles series the data cannot, e.g. one observed step, none censored).
LONGEVITY_SIGMA = 0.3
LONGEVITY_SLOPE_PRIOR_SD = 1.0
_BIG = np.int64(1) << 24  # > any day offset in the data (46,000 years)


@dataclasses.dataclass
class Targets:
  """Targets of every (track_key, region) pair with a debut in the window; row i of every array
  belongs to row i of `table` (index 0..n-1). See the module doc / `definitions`.

  table: one row per pair: track_key, song_key, region, debut (YYYY-MM-DD), debut_pos,
    mp2_target (NaN when not computable), mp2_observed_steps, longevity_target (NaN when not
    computable), n_observed, n_known, track_id,
    artist, title, featured, artist_key, debut_movement, debut_on_chart, debut_is_new, source.
  series: [n, T] float32 log1p(streams) per step after debut (0 where unobserved).
  series_mask: [n, T] uint8, 1 = observed on chart.
  extrinsic: [n, F] float32 features known at debut.
  feature_names: the F names, in order.
  definitions: every target/feature/column definition in words (for manifest.json).
  series_known: [n, T] uint8, 1 = the region's chart for that step is in the data (observed or
    censored below the floor), 0 = no data (after the data end, or a missing chart date).
  series_floor: [n, T] float32 log1p(the chart's floor that step: its lowest streams), in the
    series' unit; NaN where the step is not known (or its chart has no streams).
  """
  table: pd.DataFrame
  series: np.ndarray
  series_mask: np.ndarray
  extrinsic: np.ndarray
  feature_names: list
  definitions: dict
  series_known: np.ndarray | None = None
  series_floor: np.ndarray | None = None

  def subset(self, rows) -> "Targets":
    """The pairs selected by a boolean mask or index array, table re-indexed 0..m-1."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
      rows = np.flatnonzero(rows)
    known = None if self.series_known is None else self.series_known[rows]
    floor = None if self.series_floor is None else self.series_floor[rows]
    return Targets(self.table.iloc[rows].reset_index(drop=True), self.series[rows],
                   self.series_mask[rows], self.extrinsic[rows], list(self.feature_names),
                   dict(self.definitions), known, floor)


def concat(parts: list["Targets"]) -> "Targets":
  """The pairs of several `build_targets` results (same period, horizon and features) as one,
  table re-indexed 0..n-1; the definitions of the first."""
  parts = [p for p in parts if len(p.table)] or parts[:1]
  known = [p.series_known if p.series_known is not None else p.series_mask for p in parts]
  floor = [p.series_floor if p.series_floor is not None
           else np.full(p.series.shape, np.nan, np.float32) for p in parts]
  return Targets(pd.concat([p.table for p in parts], ignore_index=True),
                 np.concatenate([p.series for p in parts]),
                 np.concatenate([p.series_mask for p in parts]),
                 np.concatenate([p.extrinsic for p in parts]), list(parts[0].feature_names),
                 dict(parts[0].definitions), np.concatenate(known), np.concatenate(floor))


def definitions(period: str, horizon: int, mp2_weeks: int, window, min_history_days: int,
                new_only: bool) -> dict:
  step = ("chart week k after debut: the 7 days starting debut + 7k (step 0 = the debut week)"
          if period == "weekly" else "day k after debut (step 0 = the debut day)")
  return {
      "period": period,
      "horizon": f"T = {horizon} steps",
      "step": step,
      "rows_used": ("the daily rows; weekly rows are ignored" if period == "daily" else
                    "per region its weekly rows if it has any, else its daily rows aggregated "
                    "into 7-day blocks from the debut (weekly_from_daily); other rows ignored"),
      "track_key": "Spotify track id when known, else normalised 'artist - title' "
                   "(tables.song_key); per (track_key, region, date) the row with most streams "
                   "(then best position) is kept",
      "song_key": "tables.song_key(artist, title) of the debut row (group key for splits)",
      "debut": "first date the (track_key, region) is on the chart in the rows used",
      "left_censoring": f"excluded: first date < max(min_history_days={min_history_days}, 1) days "
                        "after the region's first chart date; or movement 'RE' at the first "
                        "observation; or on_chart - 1 at the first observation > chart periods "
                        "since the region's first chart date",
      "window": f"debut within {list(window) if window else 'any date'} (inclusive; None or '' = "
                "open); "
                "rows outside the window still count as history",
      "new_only": f"{new_only}: when True only pairs with debut_is_new != 0 are kept",
      "weekly_from_daily": "7-day block from debut + 7k; known if it ends by the region's last "
                           f"chart date and the region has a chart on >= {MIN_CHART_DAYS_PER_WEEK} "
                           "of its days; observed if known and the track is on every chart of the "
                           "block with known streams; value = sum of streams x 7 / chart days",
      "series": "log1p(streams) at each step where observed, else 0",
      "series_mask": "1 = observed on the chart (streams known), 0 = off the chart (censored "
                     "below the floor) or no data",
      "series_known": "1 = the region's chart for the step is in the data (observed or censored), "
                      "0 = no data (after the region's last chart date, missing chart date)",
      "series_floor": "log1p(the chart's floor at the step: the lowest streams on the region's "
                      "chart that step, i.e. its last position's, in the series' unit, as in "
                      "longevity_target); an off-chart known step is below it; NaN where the "
                      "step is not known (or its chart has no streams)",
      "mp2_target": f"log1p(sum of streams over weeks 0..{mp2_weeks - 1} after debut; weekly rows "
                    "as they are, daily rows as in weekly_from_daily, also for period 'daily'); "
                    "weeks not "
                    "observed contribute what is observed of them (partial weeks: their on-chart "
                    "days; off-chart: 0), so it is a lower bound unless mp2_observed_steps = "
                    f"{mp2_weeks}; NaN when any of these weeks is not known",
      "mp2_observed_steps": f"number of observed weeks among weeks 0..{mp2_weeks - 1}",
      "longevity_target": f"slope b per step of a + b k fitted to log1p(streams) over steps "
                          f"0..{horizon - 1} by censored-normal maximum likelihood (sd "
                          f"{LONGEVITY_SIGMA}, prior b ~ N(0, {LONGEVITY_SLOPE_PRIOR_SD}^2)): "
                          "observed steps count with their value, known off-chart steps as "
                          "below that chart's floor (its lowest streams, in the series' unit), "
                          "unknown steps not at all; NaN when the region's data ends before step "
                          f"{horizon - 1} starts; higher = slower decay",
      "n_observed": "number of observed steps among the T series steps (= series_mask.sum(1))",
      "n_known": "number of known steps among the T series steps (= series_known.sum(1))",
      "debut_movement": "the source's movement at debut ('NEW', 'RE', '+N', ...; '' unknown)",
      "debut_on_chart": "days/weeks on the source's chart at debut (NaN unknown); > 1 means it "
                        "was on the source's (possibly longer) chart before entering this one",
      "debut_is_new": "1 when the debut is the track's first day/week on the source's chart "
                      "(movement 'NEW' or on_chart 1), 0 when the source says otherwise, NaN "
                      "unknown",
      "artist_key": "lead artist_id when known (or borrowed from rows with the same normalised "
                    "name and one id), else tables.normalise(artist)",
      "debut_pos": "chart position at debut",
      "artist_prior_tracks": "number of other track_keys of the lead artist first on this "
                             "region's chart before the debut date",
      "artist_prior_peak_log_streams": "log1p(max streams of one chart observation of the lead "
                                       "artist in this region before the debut date), in the "
                                       "series' unit (weekly streams; daily streams, x 7 "
                                       "when period is 'weekly'); 0 when none",
      "weeks_since_artist_last_on_chart": "(debut - last date before debut with the lead artist "
                                          f"on this region's chart) / 7, capped at {WEEKS_CAP:g}; "
                                          f"{WEEKS_CAP:g} when never",
      "artist_never_charted": "1 when the lead artist has no chart row in this region before the "
                              "debut date (indicator for the three artist_prior/weeks_since "
                              "features), else 0",
      "n_featured": "number of featured artists on the debut row",
      "artist_on_chart_at_debut": "1 when another track of the same lead artist is on the same "
                                  "chart (region, date) as the debut, else 0",
      "artist_tracks_on_chart_at_debut": "number of other tracks of the lead artist on the debut "
                                         "chart (region, date)",
      "debut_periods_on_source_chart": "on_chart - 1 at the debut row: days/weeks the source's "
                                       "(possibly longer) chart had the track before this debut "
                                       "(0 when unknown)",
      "debut_prior_log_streams": "log1p(total - streams) at the debut row: streams the source "
                                 "counted for the track before the debut day, when it gives a "
                                 "cumulative total (the kworb CSV); 0 otherwise",
      "song_regions_charted_before": "number of other regions where the same track_key was on "
                                     "the chart strictly before this debut",
      "song_days_charted_elsewhere": "days from the track_key's first chart date in another "
                                     "region to this debut; 0 when it charted nowhere before",
      "song_peak_log_streams_elsewhere": "log1p(max streams of one chart observation of the "
                                         "track_key in another region before this debut), in "
                                         "the series' unit; 0 when none",
      "history": "artist history = rows of this region from its first chart date in the data, "
                 "strictly before the debut date",
  }


def _day_numbers(dates: pd.Series) -> np.ndarray:
  """'YYYY-MM-DD' strings -> int64 days since 1970-01-01; ValueError naming a bad date."""
  codes, uniq = pd.factorize(dates)
  parsed = pd.to_datetime(pd.Series(uniq), format="%Y-%m-%d", errors="coerce")
  if parsed.isna().any():
    raise ValueError(f"charts: unparsable date {uniq[int(parsed.isna().to_numpy().argmax())]!r}")
  days = (parsed.to_numpy().astype("datetime64[D]") - np.datetime64("1970-01-01", "D"))
  return days.astype(np.int64)[codes]


def _iso(days: np.ndarray) -> np.ndarray:
  return np.datetime_as_string(np.datetime64("1970-01-01", "D") + days.astype("timedelta64[D]"),
                               unit="D")


def _keys(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """track_key (as tables.track_keys), song_key and artist_key per row, computed on unique names."""
  codes, uniq = pd.factorize(df["artist"] + "\x1f" + df["title"])
  sk = np.array([tables.song_key(*u.split("\x1f", 1)) for u in uniq], dtype=object)[codes]
  tk = df["track_id"].to_numpy(dtype=object).copy()
  no_id = tk == ""
  tk[no_id] = sk[no_id]
  acodes, auniq = pd.factorize(df["artist"])
  norm = np.array([tables.normalise(a) for a in auniq], dtype=object)[acodes]
  aid = df["artist_id"].to_numpy(dtype=object)
  has = aid != ""
  # Borrow an id for rows without one when their normalised name maps to exactly one id.
  m = pd.DataFrame({"n": norm[has], "a": aid[has]}).drop_duplicates()
  m = m[~m["n"].duplicated(keep=False)].set_index("n")["a"]
  borrowed = pd.Series(norm[~has]).map(m).to_numpy(dtype=object)
  ak = aid.copy()
  ak[~has] = np.where(pd.isna(borrowed), norm[~has], borrowed)
  return tk, sk, ak


def longevity_slopes(series, observed, known, floor_log, *, sigma: float = LONGEVITY_SIGMA,
                     prior_sd: float = LONGEVITY_SLOPE_PRIOR_SD, iters: int = 100) -> np.ndarray:
  """The slope b of a + b k per series by censored-normal maximum likelihood (module doc).

  series [n, T] log1p streams (read where observed); observed, known [n, T] booleans; floor_log
  [n, T] log1p of the chart floor at each step (read where known and not observed; NaN = no
  floor, the step does not count). The log-likelihood is concave in (a, b), so Newton's method
  (steps capped while far from the optimum) finds the one maximum. NaN for a series with no
  observed step.
  """
  y = np.asarray(series, np.float64)
  obs = np.asarray(observed, bool)
  cens = np.asarray(known, bool) & ~obs & np.isfinite(floor_log)
  f = np.where(cens, floor_log, 0.0)
  n, T = y.shape
  k = np.arange(T, dtype=np.float64)
  n_obs = obs.sum(1)
  a = np.where(n_obs > 0, np.where(obs, y, 0.0).sum(1) / np.maximum(n_obs, 1), 0.0)
  b = np.zeros(n)
  inv_var, inv_prior = 1.0 / sigma ** 2, 1.0 / prior_sd ** 2
  for _ in range(iters):
    mu = a[:, None] + b[:, None] * k
    z = (f - mu) / sigma
    lam = np.exp(-0.5 * z * z - 0.5 * np.log(2 * np.pi) - special.log_ndtr(z))  # phi / Phi
    g = np.where(obs, (y - mu) * inv_var, np.where(cens, -lam / sigma, 0.0))
    h = np.where(obs, -inv_var, np.where(cens, -lam * (z + lam) * inv_var, 0.0))
    ga, gb = g.sum(1), (g * k).sum(1) - b * inv_prior
    haa, hab, hbb = h.sum(1), (h * k).sum(1), (h * k * k).sum(1) - inv_prior
    det = haa * hbb - hab * hab
    det = np.where(n_obs > 0, det, 1.0)  # nothing observed: no fit (NaN below)
    da = np.clip(-(hbb * ga - hab * gb) / det, -5.0, 5.0)
    db = np.clip(-(haa * gb - hab * ga) / det, -0.5, 0.5)
    a, b = a + da, b + db
    if np.all(np.abs(db) < 1e-9) and np.all(np.abs(da) < 1e-9):
      break
  return np.where(n_obs > 0, b, np.nan)


def _step_floors(period, T, sel_first, sel_region, sel_weekly, floor_day, has_chart, day0):
  """[n, T] the chart floor (lowest streams on the region's chart) at each series step, in the
  series' unit; NaN where the step has no chart."""
  R, ncol = floor_day.shape
  rr = sel_region[:, None]
  if period == "daily":
    col = sel_first[:, None] + np.arange(T)[None, :] - day0
    inside = (col >= 0) & (col < ncol)
    return np.where(inside, floor_day[rr, np.clip(col, 0, ncol - 1)], np.nan)
  start = sel_first[:, None] + 7 * np.arange(T)[None, :] - day0
  weekly = floor_day[rr, np.clip(start, 0, ncol - 1)]
  weekly = np.where(start < ncol, weekly, np.nan)
  # Daily regions aggregated into weeks: 7 x the mean daily floor over the block's chart days.
  cum_f = np.concatenate([np.zeros((R, 1)), np.cumsum(np.nan_to_num(floor_day), axis=1)], axis=1)
  cum_n = np.concatenate([np.zeros((R, 1), np.int64), np.cumsum(has_chart, axis=1)], axis=1)
  lo, hi = np.clip(start, 0, ncol), np.clip(start + 7, 0, ncol)
  days = cum_n[rr, hi] - cum_n[rr, lo]
  daily = np.where(days > 0, 7.0 * (cum_f[rr, hi] - cum_f[rr, lo]) / np.maximum(days, 1), np.nan)
  return np.where(sel_weekly[:, None], weekly, daily)


def _weeks(K, sel_first, sel_region, sel_weekly, r_pair, off, streams, has_chart, cum, day0,
           last_day):
  """Weekly aggregation for the selected pairs (see the module doc).

  Rows: r_pair (selected-pair index), off (days since that pair's debut). Returns value [n, K]
  (scaled sum for observed weeks, partial on-chart sum otherwise), observed [n, K] and known
  [n, K] booleans.
  """
  n = len(sel_first)
  value = np.zeros((n, K), np.float64)
  n_val = np.zeros((n, K), np.int64)
  keep = off < 7 * K
  e, o, s = r_pair[keep], off[keep], streams[keep]
  k = o // 7
  ok = ~np.isnan(s)
  np.add.at(value, (e[ok], k[ok]), s[ok])
  np.add.at(n_val, (e[ok], k[ok]), 1)
  start = sel_first[:, None] + 7 * np.arange(K)[None, :] - day0  # block start, column index
  ncol = has_chart.shape[1]
  # Daily regions: chart days in the block, and the block must end by the data end.
  lo = np.clip(start, 0, ncol)
  hi = np.clip(start + 7, 0, ncol)
  rr = sel_region[:, None]
  n_avail = cum[rr, hi] - cum[rr, lo]
  known_d = (start + 6 + day0 <= last_day[sel_region][:, None]) & (n_avail >= MIN_CHART_DAYS_PER_WEEK)
  obs_d = known_d & (n_val == n_avail)
  # Weekly regions: one chart per week, dated debut + 7k.
  inside = start < ncol
  known_w = inside & has_chart[rr, np.clip(start, 0, ncol - 1)]
  obs_w = known_w & (n_val >= 1)
  weekly = sel_weekly[:, None]
  known = np.where(weekly, known_w, known_d)
  observed = np.where(weekly, obs_w, obs_d)
  scale = np.where(observed & ~weekly, 7.0 / np.maximum(n_avail, 1), 1.0)
  return value * scale, observed, known


def build_targets(charts: pd.DataFrame, *, period: str = "weekly", horizon: int = 26,
                  mp2_weeks: int = 6, window: tuple[str, str] | None = None,
                  min_history_days: int = 0, new_only: bool = False) -> Targets:
  """Debut, MP2 target, MP3 series + masks and extrinsic features per (track_key, region).

  Args:
    charts: chart observations (tables.CHART_COLUMNS; extra columns ignored).
    period: 'weekly' or 'daily': the step of the MP3 series (see the module doc).
    horizon: T, the number of series steps.
    mp2_weeks: N, the weeks summed for MP2.
    window: (start, end) ISO dates, inclusive, for the debut; None or '' = open.
    min_history_days: a debut must be at least this many days (and at least 1) after the region's
      first chart date.
    new_only: keep only debuts that are the track's first day/week on the source's chart (or
      unknown).
  Returns:
    Targets, table sorted by (track_key, region), index 0..n-1.
  """
  if period not in ("weekly", "daily"):
    raise ValueError(f"period must be 'weekly' or 'daily', not {period!r}")
  if horizon < 1 or mp2_weeks < 1:
    raise ValueError(f"horizon and mp2_weeks must be >= 1 (got {horizon}, {mp2_weeks})")
  T, N = int(horizon), int(mp2_weeks)
  defs = definitions(period, T, N, window, min_history_days, new_only)
  F = len(FEATURE_NAMES)

  df = tables.coerce(charts, "charts")
  per = df["period"]
  bad = ~per.isin(["daily", "weekly"])
  if bad.any():
    raise ValueError(f"charts: period must be 'daily' or 'weekly', got {per[bad].iloc[0]!r}")
  if period == "daily":
    use = per == "daily"
  else:
    weekly_regions = df.loc[per == "weekly", "region"].unique()
    use = (per == "weekly") | ((per == "daily") & ~df["region"].isin(weekly_regions))
  df = df[use.to_numpy()].reset_index(drop=True)

  cols = ["track_key", "song_key", "region", "debut", "debut_pos", "mp2_target",
          "mp2_observed_steps", "longevity_target", "n_observed", "n_known", "track_id", "artist", "title", "featured",
          "artist_key", "debut_movement", "debut_on_chart", "debut_is_new", "source"]
  if df.empty:
    table = pd.DataFrame({c: [] for c in cols})
    return Targets(table, np.zeros((0, T), np.float32), np.zeros((0, T), np.uint8),
                   np.zeros((0, F), np.float32), list(FEATURE_NAMES), defs,
                   np.zeros((0, T), np.uint8), np.zeros((0, T), np.float32))

  # -- Row arrays, deduplicated per (track_key, region, day) -------------------------------------
  day = _day_numbers(df["date"])
  tk_str, sk_str, ak_str = _keys(df)
  tk, tk_uniq = pd.factorize(tk_str, sort=True)
  regions = np.array(sorted(df["region"].unique()))
  r = np.searchsorted(regions, df["region"].to_numpy())
  R = len(regions)
  streams = df["streams"].to_numpy(np.float64)
  pos = df["pos"].to_numpy(np.int64)
  order = np.lexsort((pos, -np.nan_to_num(streams, nan=-1.0), day, r, tk))
  first_of = np.r_[True, (np.diff(tk[order]) != 0) | (np.diff(r[order]) != 0)
                   | (np.diff(day[order]) != 0)]
  order = order[first_of]
  tk, r, day, streams, pos = tk[order], r[order], day[order], streams[order], pos[order]
  ak, ak_uniq = pd.factorize(ak_str[order])
  sk_str = sk_str[order]
  src = df.iloc[order].reset_index(drop=True)

  region_weekly = np.zeros(R, bool)
  if period == "weekly":
    region_weekly[np.unique(r[(src["period"] == "weekly").to_numpy()])] = True
  unit = np.where(region_weekly, 7, 1)  # days per source period, per region

  # -- Region calendars ----------------------------------------------------------------------
  day0 = int(day.min())
  ncol = int(day.max()) - day0 + 1
  has_chart = np.zeros((R, ncol), bool)
  has_chart[r, day - day0] = True
  cum = np.concatenate([np.zeros((R, 1), np.int64), np.cumsum(has_chart, axis=1)], axis=1)
  first_day = np.full(R, np.iinfo(np.int64).max)
  np.minimum.at(first_day, r, day)
  last_day = np.full(R, np.iinfo(np.int64).min)
  np.maximum.at(last_day, r, day)

  # -- Pairs (all, incl. left-censored: they are history) --------------------------------------
  starts = np.flatnonzero(np.r_[True, (np.diff(tk) != 0) | (np.diff(r) != 0)])
  pair_of_row = np.cumsum(np.r_[True, (np.diff(tk) != 0) | (np.diff(r) != 0)]) - 1
  p_tk, p_r, p_day, p_ak = tk[starts], r[starts], day[starts], ak[starts]
  movement = src["movement"].to_numpy(dtype=object)[starts]
  on_chart = src["on_chart"].to_numpy(np.float64)[starts]
  elapsed = p_day - first_day[p_r]
  eligible = elapsed >= max(int(min_history_days), 1)
  eligible &= movement != "RE"
  eligible &= ~(on_chart - 1 > elapsed / unit[p_r])
  is_new = np.where((movement == "NEW") | (on_chart == 1), 1.0,
                    np.where((movement != "") | (on_chart > 1), 0.0, np.nan))
  if new_only:
    eligible &= is_new != 0
  if window:
    lo, hi = window
    if lo:
      eligible &= p_day >= _day_numbers(pd.Series([lo]))[0]
    if hi:
      eligible &= p_day <= _day_numbers(pd.Series([hi]))[0]
  sel = np.flatnonzero(eligible)
  n = len(sel)

  # -- Rows of the selected pairs --------------------------------------------------------------
  sel_index = np.full(len(starts), -1)
  sel_index[sel] = np.arange(n)
  row_sel = sel_index[pair_of_row]
  rows = np.flatnonzero(row_sel >= 0)
  e = row_sel[rows]
  off = day[rows] - p_day[sel][e]
  s_rows = streams[rows]
  sel_first, sel_region = p_day[sel], p_r[sel]
  sel_weekly = region_weekly[sel_region]

  K = max(T, N) if period == "weekly" else N
  wval, wobs, wknown = _weeks(K, sel_first, sel_region, sel_weekly, e, off, s_rows, has_chart, cum,
                              day0, last_day)
  mp2_sum = wval[:, :N].sum(1)
  floor_day = np.full((R, ncol), np.nan)
  np.fmin.at(floor_day, (r, day - day0), streams)  # fmin skips NaN streams
  mp2 = np.where(wknown[:, :N].all(1), np.log1p(mp2_sum), np.nan)
  mp2_obs = wobs[:, :N].sum(1)

  if period == "weekly":
    mask = wobs[:, :T]
    series = np.where(mask, np.log1p(wval[:, :T]), 0.0)
    known = wknown[:, :T]
  else:
    series = np.zeros((n, T), np.float64)
    mask = np.zeros((n, T), bool)
    ok = (off < T) & ~np.isnan(s_rows)
    series[e[ok], off[ok]] = np.log1p(s_rows[ok])
    mask[e[ok], off[ok]] = True
    col = sel_first[:, None] + np.arange(T)[None, :] - day0
    known = (col < ncol) & has_chart[sel_region[:, None], np.clip(col, 0, ncol - 1)]

  floors = _step_floors(period, T, sel_first, sel_region, sel_weekly, floor_day, has_chart, day0)
  floor_log = np.log1p(floors)
  last_step = sel_first + (7 * (T - 1) if period == "weekly" else T - 1)
  longevity = np.where(last_step <= last_day[sel_region],
                       longevity_slopes(series, mask, known, floor_log), np.nan)
  # Only a known step has a floor (a daily block of < 4 chart days has one but is not known).
  series_floor = np.where(known, floor_log, np.nan)

  # -- Extrinsic features ----------------------------------------------------------------------
  # Artist-region group per row; peak streams in the series' unit.
  g_row = ak.astype(np.int64) * R + r
  scale = np.where(region_weekly[r] | (period == "daily"), 1.0, 7.0)
  a = pd.DataFrame({"k": g_row * _BIG + (day - day0), "s": streams * scale})
  by_day = a.groupby("k", sort=True)["s"].agg(["max", "size"])
  akeys = by_day.index.to_numpy(np.int64)
  a_count = by_day["size"].to_numpy()
  a_g = akeys // _BIG
  a_cummax = by_day["max"].groupby(a_g).cummax().to_numpy()
  a_day = akeys % _BIG + day0

  p_g = p_ak.astype(np.int64) * R + p_r
  tkeys = np.sort(p_g * _BIG + (p_day - day0))
  g = p_g[sel]
  q = g * _BIG + (sel_first - day0)
  prior_tracks = np.searchsorted(tkeys, q, "left") - np.searchsorted(tkeys, g * _BIG, "left")
  ai = np.searchsorted(akeys, q, "left")
  has_prior = ai > np.searchsorted(akeys, g * _BIG, "left")
  prev = np.maximum(ai - 1, 0)
  weeks_since = np.where(has_prior, np.minimum((sel_first - a_day[prev]) / 7.0, WEEKS_CAP),
                         WEEKS_CAP)
  peak = np.where(has_prior, np.log1p(np.nan_to_num(a_cummax[prev], nan=0.0)), 0.0)
  at_debut = a_count[np.minimum(ai, len(akeys) - 1)] - 1  # akeys[ai] == q: the track itself is there
  featured = src["featured"].to_numpy(dtype=object)[starts[sel]]
  # The source's own history of the track before this debut: periods on its (possibly longer)
  # chart, and the streams it counted there (the kworb CSV's cumulative `total`).
  on_chart0 = pd.to_numeric(src["on_chart"], errors="coerce").to_numpy(np.float64)[starts[sel]]
  streams0 = pd.to_numeric(src["streams"], errors="coerce").to_numpy(np.float64)[starts[sel]]
  total0 = (pd.to_numeric(src["total"], errors="coerce").to_numpy(np.float64)[starts[sel]]
            if "total" in src.columns else np.full(len(streams0), np.nan))
  n_feat = np.array([len([x for x in f.split(";") if x.strip()]) for f in featured], np.float64)
  # The same track in the other regions before this debut (its own region has no earlier row:
  # a pair starts at its first row there).
  song_pairs = np.sort(p_tk.astype(np.int64) * _BIG + (p_day - day0))
  t_sel = p_tk[sel].astype(np.int64) * _BIG
  t_lo = np.searchsorted(song_pairs, t_sel, "left")
  regions_before = np.searchsorted(song_pairs, t_sel + (sel_first - day0), "left") - t_lo
  song_first = np.where(regions_before > 0, song_pairs[np.minimum(t_lo, len(song_pairs) - 1)]
                        % _BIG + day0, sel_first)
  s_by_day = pd.DataFrame({"k": tk.astype(np.int64) * _BIG + (day - day0), "s": streams * scale}
                          ).groupby("k", sort=True)["s"].max()
  s_keys = s_by_day.index.to_numpy(np.int64)
  s_cummax = s_by_day.groupby(s_keys // _BIG).cummax().to_numpy()
  si = np.searchsorted(s_keys, t_sel + (sel_first - day0), "left")
  s_prior = si > np.searchsorted(s_keys, t_sel, "left")
  song_peak = np.where(s_prior, np.log1p(np.nan_to_num(s_cummax[np.maximum(si - 1, 0)], nan=0.0)),
                       0.0)
  extrinsic = np.stack([
      pos[starts[sel]].astype(np.float64),
      np.where(has_prior, prior_tracks, 0),
      peak,
      weeks_since,
      (~has_prior).astype(np.float64),
      n_feat,
      (at_debut > 0).astype(np.float64),
      at_debut.astype(np.float64),
      np.maximum(np.nan_to_num(on_chart0 - 1.0, nan=0.0), 0.0),
      np.log1p(np.maximum(np.nan_to_num(total0 - streams0, nan=0.0), 0.0)),
      regions_before.astype(np.float64),
      (sel_first - song_first).astype(np.float64),
      song_peak,
  ], axis=1) if n else np.zeros((0, F))

  # -- Table -----------------------------------------------------------------------------------
  d = src.iloc[starts[sel]].reset_index(drop=True)
  table = pd.DataFrame({
      "track_key": tk_uniq[p_tk[sel]],
      "song_key": sk_str[starts[sel]],
      "region": regions[sel_region],
      "debut": _iso(sel_first),
      "debut_pos": pos[starts[sel]],
      "mp2_target": mp2,
      "mp2_observed_steps": mp2_obs.astype(np.int64),
      "longevity_target": longevity,
      "n_observed": mask.sum(1).astype(np.int64),
      "n_known": known.sum(1).astype(np.int64),
      "track_id": d["track_id"],
      "artist": d["artist"],
      "title": d["title"],
      "featured": d["featured"],
      "artist_key": ak_uniq[p_ak[sel]],
      "debut_movement": d["movement"],
      "debut_on_chart": d["on_chart"],
      "debut_is_new": is_new[sel],
      "source": d["source"],
  })
  return Targets(table, series.astype(np.float32), mask.astype(np.uint8),
                 extrinsic.astype(np.float32), list(FEATURE_NAMES), defs, known.astype(np.uint8),
                 series_floor.astype(np.float32))
