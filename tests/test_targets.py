"""data_prep.targets: debut, MP2, MP3 series/mask and extrinsic features on hand-built charts."""
import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from data_prep import kworb_csv, tables, targets

HERE = os.path.dirname(os.path.abspath(__file__))
# Cut from the shared kworb_daily_top50_2025-06_2026-02.csv.gz by fixtures/charts/make_kworb_daily_cut.py.
REAL_CUT = os.path.join(HERE, "fixtures", "charts", "kworb_daily_cut.csv.gz")
L = np.log1p


def chart(rows, period="weekly", region="us"):
  """Rows (dicts) -> a charts table; unspecified columns get neutral defaults."""
  base = {"region": region, "period": period, "track_id": "", "featured": "", "artist_id": "",
          "movement": "", "on_chart": np.nan, "peak": np.nan, "streams": np.nan,
          "source": "synthetic"}
  return tables.coerce(pd.DataFrame([{**base, **r} for r in rows]), "charts")


def week(k):
  """Chart week k: 2024-01-05 + 7k days."""
  return (pd.Timestamp("2024-01-05") + pd.Timedelta(days=7 * k)).strftime("%Y-%m-%d")


def day(k):
  return (pd.Timestamp("2024-03-01") + pd.Timedelta(days=k)).strftime("%Y-%m-%d")


def weekly_charts():
  """Artist A: P (weeks 0-1, id 'aid'), Q (weeks 1-2), X (weeks 2, 3, 5; track id tX);
  Zed: Y (weeks 8-9); a filler track on every week 0..9."""
  rows = [dict(date=week(k), pos=1, artist="Filler", title="Old", streams=9e5) for k in range(10)]
  rows += [dict(date=week(0), pos=2, artist="A", artist_id="aid", title="P", streams=5000),
           dict(date=week(1), pos=2, artist="A", artist_id="aid", title="P", streams=7000),
           dict(date=week(1), pos=3, artist="A", title="Q", streams=300),
           dict(date=week(2), pos=4, artist="A", title="Q", streams=400)]
  rows += [dict(date=week(k), pos=p, artist="A", title="X", track_id="tX", featured="B; C",
                streams=s) for k, p, s in [(2, 3, 1000), (3, 2, 2000), (5, 3, 500)]]
  rows += [dict(date=week(8), pos=2, artist="Zed", title="Y", streams=111),
           dict(date=week(9), pos=2, artist="Zed", title="Y", streams=222)]
  df = chart(rows)
  # A daily row in a region with weekly rows: ignored by period='weekly'.
  noise = chart([dict(date=week(4), pos=1, artist="A", title="X", track_id="tX", streams=1e9)],
                period="daily")
  return pd.concat([df, noise], ignore_index=True)


def by_key(tg):
  return {k: i for i, k in enumerate(tg.table["track_key"])}


def test_weekly_debut_mp2_series_gap_and_reentry():
  tg = targets.build_targets(weekly_charts(), period="weekly", horizon=5, mp2_weeks=3)
  assert tg.table.index.tolist() == [0, 1, 2]
  assert tg.table["track_key"].tolist() == ["a - q", "tX", "zed - y"]  # P, Old: on the first chart
  assert tg.series.shape == (3, 5) and tg.series.dtype == np.float32
  assert tg.series_mask.dtype == np.uint8 and tg.extrinsic.shape == (3, len(tg.feature_names))
  i = by_key(tg)
  x = tg.table.iloc[i["tX"]]
  assert (x["debut"], x["debut_pos"], x["region"], x["track_id"]) == ("2024-01-19", 3, "us", "tX")
  assert x["song_key"] == "a - x" and x["artist_key"] == "aid"
  # Weeks 2, 3 on chart, 4 off (censored), 5 re-entry, 6 off.
  np.testing.assert_allclose(tg.series[i["tX"]], [L(1000), L(2000), 0, L(500), 0], rtol=1e-6)
  assert tg.series_mask[i["tX"]].tolist() == [1, 1, 0, 1, 0]
  assert tg.series_known[i["tX"]].tolist() == [1, 1, 1, 1, 1]
  # The floor = the chart's lowest streams that week (Q's 400 in week 2, Filler alone in 4, 6).
  np.testing.assert_allclose(tg.series_floor[i["tX"]], L([400, 2000, 9e5, 500, 9e5]), rtol=1e-6)
  assert x["mp2_target"] == pytest.approx(L(3000))  # weeks 0..2: 1000 + 2000 + 0 (off chart)
  assert (x["mp2_observed_steps"], x["n_observed"], x["n_known"]) == (2, 3, 5)
  q = tg.table.iloc[i["a - q"]]
  assert (q["debut"], q["debut_pos"], q["mp2_target"]) == ("2024-01-12", 3, pytest.approx(L(700)))
  np.testing.assert_allclose(tg.series[i["a - q"]], [L(300), L(400), 0, 0, 0], rtol=1e-6)
  # Y debuts in week 8 of 0..9: weeks 10.. are beyond the data (unknown): MP2 not computable.
  y = tg.table.iloc[i["zed - y"]]
  assert y["debut"] == "2024-03-01" and np.isnan(y["mp2_target"])
  assert tg.series_mask[i["zed - y"]].tolist() == [1, 1, 0, 0, 0]
  assert tg.series_known[i["zed - y"]].tolist() == [1, 1, 0, 0, 0]
  np.testing.assert_allclose(tg.series_floor[i["zed - y"]], L([111, 222] + [np.nan] * 3),
                             rtol=1e-6)  # no chart after the data end: no floor
  assert tg.series_floor.dtype == np.float32 and "series_floor" in tg.definitions
  assert (y["mp2_observed_steps"], y["n_known"]) == (2, 2)
  assert not np.isnan(tg.series).any() and not np.isnan(tg.extrinsic).any()


def test_extrinsic_features_from_artist_history():
  tg = targets.build_targets(weekly_charts(), period="weekly", horizon=5, mp2_weeks=3)
  assert tg.feature_names == [
      "debut_pos", "artist_prior_tracks", "artist_prior_peak_log_streams",
      "weeks_since_artist_last_on_chart", "artist_never_charted", "n_featured",
      "artist_on_chart_at_debut", "artist_tracks_on_chart_at_debut",
      "debut_periods_on_source_chart", "debut_prior_log_streams",
      "song_regions_charted_before", "song_days_charted_elsewhere",
      "song_peak_log_streams_elsewhere"]
  i = by_key(tg)
  # X (week 2): prior tracks P (week 0), Q (week 1); peak 7000 (P, week 1); last on chart week 1;
  # featured B, C; Q is on the debut chart. Artist 'A' rows without id borrow P's id 'aid'.
  np.testing.assert_allclose(tg.extrinsic[i["tX"]], [3, 2, L(7000), 1, 0, 2, 1, 1, 0, 0, 0, 0, 0], rtol=1e-6)
  # Q (week 1): prior P only, its peak before week 1 is 5000; P is on the debut chart.
  np.testing.assert_allclose(tg.extrinsic[i["a - q"]], [3, 1, L(5000), 1, 0, 0, 1, 1, 0, 0, 0, 0, 0], rtol=1e-6)
  # Y: a new artist.
  np.testing.assert_allclose(tg.extrinsic[i["zed - y"]], [2, 0, 0, 52, 1, 0, 0, 0, 0, 0, 0, 0, 0])
  for name in tg.feature_names + ["mp2_target", "series", "series_mask", "step", "debut",
                                  "left_censoring", "weekly_from_daily"]:
    assert name in tg.definitions and tg.definitions[name]


def test_weeks_since_cap_and_artist_gap():
  rows = [dict(date=week(k), pos=1, artist="Filler", title="Old", streams=9e5) for k in range(70)]
  rows += [dict(date=week(1), pos=2, artist="A", title="First", streams=10),
           dict(date=week(5), pos=2, artist="A", title="Second", streams=20),
           dict(date=week(65), pos=2, artist="A", title="Third", streams=30)]
  tg = targets.build_targets(chart(rows), horizon=2, mp2_weeks=1)
  i = by_key(tg)
  assert tg.extrinsic[i["a - second"], 1:5].tolist() == [1, pytest.approx(L(10)), 4, 0]
  # 60 weeks since Second: capped at 52, but the artist did chart (indicator 0).
  assert tg.extrinsic[i["a - third"], 1:5].tolist() == [2, pytest.approx(L(20)), 52, 0]


def test_left_censoring_window_and_new_only():
  extra = chart([
      dict(date=week(4), pos=5, artist="Rex", title="Back", movement="RE", on_chart=3),
      dict(date=week(5), pos=6, artist="Sam", title="Old Hit", movement="+1", on_chart=10),
      dict(date=week(5), pos=7, artist="Uma", title="Climber", movement="+4", on_chart=3),
      dict(date=week(5), pos=8, artist="Vee", title="Fresh", movement="NEW", on_chart=1)])
  charts = pd.concat([weekly_charts(), extra], ignore_index=True)
  tg = targets.build_targets(charts, horizon=3, mp2_weeks=1)
  # RE: charted before; Old Hit: 10 weeks on chart but the data has only 5 weeks before it.
  assert tg.table["track_key"].tolist() == ["a - q", "tX", "uma - climber", "vee - fresh",
                                            "zed - y"]
  assert tg.table["debut_is_new"].fillna(-1).tolist() == [-1, -1, 0, 1, -1]
  assert tg.table["debut_movement"].tolist() == ["", "", "+4", "NEW", ""]
  keys = lambda **kw: targets.build_targets(charts, horizon=3, mp2_weeks=1, **kw).table[
      "track_key"].tolist()
  assert keys(new_only=True) == ["a - q", "tX", "vee - fresh", "zed - y"]
  assert keys(min_history_days=14) == ["tX", "uma - climber", "vee - fresh", "zed - y"]
  assert keys(window=("2024-01-19", "2024-02-09")) == ["tX", "uma - climber", "vee - fresh"]
  assert keys(window=("", "2024-01-12")) == ["a - q"]
  # Left-censored tracks still count as artist history (P above); subset keeps rows aligned.
  sub = tg.subset(tg.table["region"].eq("us") & tg.table["track_key"].str.startswith("v"))
  assert sub.table["track_key"].tolist() == ["vee - fresh"] and sub.series.shape == (1, 3)
  np.testing.assert_array_equal(sub.extrinsic[0], tg.extrinsic[3])
  np.testing.assert_array_equal(sub.series_floor[0], tg.series_floor[3])
  # concat keeps each part's floors; a part without them (older code) gets NaN rows.
  old = dataclasses.replace(sub, series_floor=None)
  both = targets.concat([sub, old])
  np.testing.assert_array_equal(both.series_floor[0], sub.series_floor[0])
  assert both.series_floor.shape == (2, 3) and np.isnan(both.series_floor[1]).all()


def daily_charts(missing=(10,), region="xx"):
  """Daily region, days 0..30 (2024-03-01..31) except `missing` (no chart at all).

  Tee - Tune: days 2-8 at 100, days 9 and 11-15 at 200, days 16-17 at 300, then off.
  Tee - Before: day 0 only (50 streams)."""
  rows = [dict(date=day(k), pos=1, artist="Fill", title="Fill", streams=1e6)
          for k in range(31) if k not in missing]
  rows += [dict(date=day(0), pos=3, artist="Tee", title="Before", streams=50)]
  tune = {**{k: 100 for k in range(2, 9)}, **{k: 200 for k in [9, 11, 12, 13, 14, 15]},
          16: 300, 17: 300}
  rows += [dict(date=day(k), pos=2, artist="Tee", title="Tune", streams=s)
           for k, s in tune.items() if k not in missing]
  return chart(rows, period="daily", region=region)


def test_daily_to_weekly_aggregation():
  tg = targets.build_targets(daily_charts(), period="weekly", horizon=5, mp2_weeks=3)
  assert tg.table["track_key"].tolist() == ["tee - tune"]
  t = tg.table.iloc[0]
  assert (t["debut"], t["debut_pos"]) == ("2024-03-03", 2)
  # Week 0 = days 2-8: 7 x 100. Week 1 = days 9-15, chart missing on day 10: 6 x 200 scaled by
  # 7/6. Week 2: on chart 2 of 7 days (partial: censored, 600 still counts for MP2). Week 3: off.
  # Week 4 = days 30-36 ends after the data (day 30): unknown.
  np.testing.assert_allclose(tg.series[0], [L(700), L(1400), 0, 0, 0], rtol=1e-6)
  assert tg.series_mask[0].tolist() == [1, 1, 0, 0, 0]
  assert tg.series_known[0].tolist() == [1, 1, 1, 1, 0]
  # Weekly floor = 7 x the mean daily floor over the block's chart days: Tune's 100 is the lowest
  # on days 2-8; 200 on days 9, 11-15 (day 10 missing); week 2: 300 on days 16-17, then Fill's
  # 1e6 alone on days 18-22; week 3: Fill alone; week 4: unknown.
  np.testing.assert_allclose(tg.series_floor[0], L([700, 1400, 600 + 5e6, 7e6, np.nan]),
                             rtol=1e-6)
  assert t["mp2_target"] == pytest.approx(L(700 + 1400 + 600))
  assert t["mp2_observed_steps"] == 2
  # Weekly unit: the artist's prior daily peak (50) counts as 7 x 50.
  np.testing.assert_allclose(tg.extrinsic[0], [2, 1, L(350), 2 / 7] + [0] * 9, rtol=1e-6)
  assert np.isnan(targets.build_targets(daily_charts(), horizon=5, mp2_weeks=5)
                  .table["mp2_target"][0])
  # Days 9-12 missing: week 1 has 3 chart days (< 4): unknown, so MP2 is not computable.
  tg = targets.build_targets(daily_charts(missing=(9, 10, 11, 12)), horizon=5, mp2_weeks=3)
  assert tg.series_known[0].tolist() == [1, 0, 1, 1, 0]
  # Week 1 has a floor on its 3 chart days but is not known: no floor.
  assert np.isnan(tg.series_floor[0]).tolist() == [False, True, False, False, True]
  assert tg.series_mask[0].tolist() == [1, 0, 0, 0, 0]
  assert np.isnan(tg.table["mp2_target"][0])
  assert tg.table["mp2_observed_steps"][0] == 1


def test_daily_period():
  tg = targets.build_targets(daily_charts(), period="daily", horizon=10, mp2_weeks=3)
  np.testing.assert_allclose(tg.series[0], [L(100)] * 7 + [L(200), 0, L(200)], rtol=1e-6)
  assert tg.series_mask[0].tolist() == [1] * 7 + [1, 0, 1]
  assert tg.series_known[0].tolist() == [1] * 8 + [0, 1]  # day 10: no chart in the data
  assert tg.table["mp2_target"][0] == pytest.approx(L(2700))
  assert (tg.table["n_observed"][0], tg.table["n_known"][0]) == (9, 9)
  np.testing.assert_allclose(tg.extrinsic[0], [2, 1, L(50), 2 / 7] + [0] * 9, rtol=1e-6)
  # period='daily' ignores weekly rows; a weekly-only table gives no pairs.
  empty = targets.build_targets(weekly_charts(), period="daily", horizon=4)
  assert len(empty.table) == 0 and empty.series.shape == (0, 4)


def test_series_floor_is_the_last_position_on_each_days_chart():
  """A 3-position daily chart, days 0-6, whose last position has 30 + k streams on day k; no
  chart on day 5. A song debuting on day 2 at position 2 leaves after day 3."""
  rows = []
  for k in [0, 1, 2, 3, 4, 6]:
    rows += [dict(date=day(k), pos=1, artist="Top", title="Top", streams=1e6),
             dict(date=day(k), pos=3, artist="Last", title="Last", streams=30.0 + k)]
  rows += [dict(date=day(k), pos=2, artist="Song", title="New", streams=500.0) for k in (2, 3)]
  tg = targets.build_targets(chart(rows, period="daily"), period="daily", horizon=6)
  assert tg.table["track_key"].tolist() == ["song - new"]  # Top, Last: on the first chart
  assert tg.series_mask[0].tolist() == [1, 1, 0, 0, 0, 0]
  assert tg.series_known[0].tolist() == [1, 1, 1, 0, 1, 0]  # day 5 missing, day 7 past the end
  # Days 2..7: the last position's streams, NaN on the missing day and after the data end.
  np.testing.assert_allclose(tg.series_floor[0], L([32, 33, 34, np.nan, 36, np.nan]), rtol=1e-6)


def test_versions_on_one_day_collapse_to_the_strongest():
  rows = [dict(date=day(k), pos=1, artist="Fill", title="Fill", streams=1e6) for k in range(5)]
  rows += [dict(date=day(1), pos=9, artist="aespa", title="Dirty Work", featured="Flo Milli",
                streams=50),
           dict(date=day(1), pos=5, artist="aespa", title="Dirty Work", streams=100),
           dict(date=day(2), pos=7, artist="AESPA", title="Dirty Work!", streams=80)]
  tg = targets.build_targets(chart(rows, period="daily"), period="daily", horizon=3, mp2_weeks=1)
  assert tg.table["track_key"].tolist() == ["aespa - dirty work"]
  assert (tg.table["debut_pos"][0], tg.extrinsic[0, 5]) == (5, 0)  # the 100-stream row, no feat.
  np.testing.assert_allclose(tg.series[0], [L(100), L(80), 0], rtol=1e-6)
  assert tg.extrinsic[0, 7] == 0  # its other version is the same key, not another track


def test_bad_arguments():
  with pytest.raises(ValueError, match="period"):
    targets.build_targets(weekly_charts(), period="monthly")
  bad = weekly_charts()
  bad.loc[0, "date"] = "2024-13-01"
  with pytest.raises(ValueError, match="2024-13-01"):
    targets.build_targets(bad)


def test_real_csv_cut_daily():
  """Daily targets on the real kworb CSV cut to 'my' and 'sg' (tests/fixtures/charts).

  Golden counts: tests/fixtures/charts/make_kworb_daily_cut.py derives them from the fixture with
  pandas (stale pages dropped, chart date = scrape - 2 days, one row per (song, region, date), the
  left-censoring rules of the module doc, 28 consecutive on-chart days, 6 known weeks), using
  only tables.song_key from the project, not kworb_csv or targets. On the whole shared file the
  same derivation gives this test's former counts (763 pairs, 92 full, 597 MP2, 230 new).
  """
  charts = kworb_csv.load_daily_csv(REAL_CUT)
  tg = targets.build_targets(charts, period="daily", horizon=28)
  n = len(tg.table)
  assert n == 56 and tg.series.shape == (56, 28) and tg.extrinsic.shape == (56, len(targets.FEATURE_NAMES))
  assert int((tg.series_mask.sum(1) == 28).sum()) == 12
  assert int(tg.table["mp2_target"].notna().sum()) == 10
  assert int((tg.table["debut_is_new"] == 1).sum()) == 34
  assert not np.isnan(tg.series).any() and np.isfinite(tg.extrinsic).all()
  assert ((tg.series > 0) == (tg.series_mask == 1)).all()
  assert (tg.series_mask <= tg.series_known).all()
  assert (tg.series_mask[:, 0] == 1).all()  # on the chart at debut
  # Every pair debuts after its region's first chart date; streams at debut match the chart.
  first = charts.groupby("region")["date"].min()
  assert (tg.table["debut"] > tg.table["region"].map(first)).all()
  assert (tg.table["debut_pos"].between(1, 50)).all()
  # The masks equal an independent reconstruction from the chart rows.
  c = charts.assign(track_key=tables.track_keys(charts))
  c = c.merge(tg.table.reset_index()[["index", "track_key", "region", "debut"]],
              on=["track_key", "region"])
  c["step"] = (pd.to_datetime(c["date"]) - pd.to_datetime(c["debut"])).dt.days
  c = c[(c["step"] >= 0) & (c["step"] < 28)]
  expect = np.zeros_like(tg.series_mask)
  expect[c["index"], c["step"]] = 1
  np.testing.assert_array_equal(tg.series_mask, expect)
  best = c.groupby(["index", "step"])["streams"].max()
  np.testing.assert_allclose(tg.series[best.index.get_level_values(0),
                                       best.index.get_level_values(1)], np.log1p(best), rtol=1e-6)
  # Taylor Swift's album day (Friday 2025-10-03) in Malaysia: 11 other album tracks on the chart.
  ts = tg.table[(tg.table["title"] == "Actually Romantic") & (tg.table["region"] == "my")]
  assert ts["debut"].tolist() == ["2025-10-03"]
  feats = dict(zip(tg.feature_names, tg.extrinsic[ts.index[0]]))
  # Her earlier rows in 'my' (scraped up to 2025-08-31) are before the cut starts (scrapes from
  # 2025-09-05; pandas: her first 'my' row in the fixture is scraped 2025-10-05), so in the cut
  # she has no history: never charted (on the whole shared file this feature is 0).
  assert feats["artist_tracks_on_chart_at_debut"] == 11 and feats["artist_never_charted"] == 1
  assert feats["weeks_since_artist_last_on_chart"] == 52 and feats["artist_prior_tracks"] == 0
  weekly = targets.build_targets(charts, period="weekly", horizon=8)
  assert weekly.table["track_key"].tolist() == tg.table["track_key"].tolist()
  np.testing.assert_allclose(weekly.table["mp2_target"], tg.table["mp2_target"])


def test_song_key_keeps_thai_and_hangul_letters():
  from data_prep import tables
  assert tables.song_key("x", "เดินมาส่ง") == "x - เดินมาส่ง"
  assert tables.song_key("Muộii", "뛰어 (JUMP)") == "muoii - 뛰어 jump"
  assert tables.song_key("Beyoncé", "Halo (feat. Someone) - Remastered 2011") == "beyonce - halo"


def test_source_history_features_from_on_chart_and_total():
  """A song entering the top 50 after 4 days on the source's longer chart, with 9,000 streams
  counted before (the kworb CSV's cumulative total), against one new on the chart."""
  rows = []
  for d in range(12):
    date = f"2025-01-{d + 1:02d}"
    rows.append(dict(region="kr", period="daily", date=date, pos=1, track_id="", artist="a",
                     title="old", featured="", artist_id="", streams=100.0, movement="",
                     on_chart=float(d + 1), peak=1.0, source="kworb_csv", total=100.0 * (d + 1)))
    if d >= 5:
      rows.append(dict(region="kr", period="daily", date=date, pos=2, track_id="", artist="b",
                       title="climber", featured="", artist_id="", streams=50.0, movement="",
                       on_chart=float(d + 5 - 5), peak=2.0, source="kworb_csv",
                       total=9000.0 + 50.0 * (d - 4)))
    if d >= 7:
      rows.append(dict(region="kr", period="daily", date=date, pos=3, track_id="", artist="c",
                       title="fresh", featured="", artist_id="", streams=40.0, movement="NEW",
                       on_chart=float(d - 6), peak=3.0, source="kworb_csv", total=np.nan))
  tg = targets.build_targets(pd.DataFrame(rows), period="daily", horizon=3, mp2_weeks=1)
  i = by_key(tg)
  f = {n: j for j, n in enumerate(tg.feature_names)}
  climber, fresh = tg.extrinsic[i["b - climber"]], tg.extrinsic[i["c - fresh"]]
  assert climber[f["debut_periods_on_source_chart"]] == 4  # on_chart 5 at its first top row
  assert climber[f["debut_prior_log_streams"]] == pytest.approx(L(9000.0))
  assert fresh[f["debut_periods_on_source_chart"]] == 0
  assert fresh[f["debut_prior_log_streams"]] == 0  # no total given: 0, never NaN


def test_song_history_in_other_regions_before_the_debut():
  """A song charting in 'us' from day 0 (peak 900 on day 2), then in 'gb' from day 5 and 'de'
  from day 8; another song charting in 'gb' only. Features count only earlier regions' rows."""
  rows = []
  for region in ("us", "gb", "de"):
    rows += [dict(date=day(k), pos=1, artist="Filler", title="Old", streams=5e4, region=region)
             for k in range(14)]
  rows += [dict(date=day(k), pos=2, artist="S", title="Spread", streams=s, region="us")
           for k, s in [(3, 500.0), (4, 900.0), (5, 700.0), (9, 2000.0)]]
  rows += [dict(date=day(k), pos=3, artist="S", title="Spread", streams=300.0, region="gb")
           for k in (8, 9, 10)]
  rows += [dict(date=day(k), pos=4, artist="S", title="Spread", streams=100.0, region="de")
           for k in (11, 12)]
  rows += [dict(date=day(k), pos=5, artist="L", title="Local", streams=80.0, region="gb")
           for k in (6, 7)]
  df = pd.concat([chart([r], period="daily", region=r.pop("region")) for r in rows],
                 ignore_index=True)
  tg = targets.build_targets(df, period="daily", horizon=3, mp2_weeks=1)
  f = {n: j for j, n in enumerate(tg.feature_names)}
  got = {(k, reg): tg.extrinsic[i] for i, (k, reg) in
         enumerate(zip(tg.table["track_key"], tg.table["region"]))}
  names = ["song_regions_charted_before", "song_days_charted_elsewhere",
           "song_peak_log_streams_elsewhere"]
  cols = [f[n] for n in names]
  np.testing.assert_allclose(got[("s - spread", "us")][cols], [0, 0, 0])
  # gb on day 8: us since day 3, peak 900 (day 9's 2000 is later).
  np.testing.assert_allclose(got[("s - spread", "gb")][cols], [1, 5, L(900.0)], rtol=1e-6)
  # de on day 11: us and gb before it; us's day-9 2000 is now history.
  np.testing.assert_allclose(got[("s - spread", "de")][cols], [2, 8, L(2000.0)], rtol=1e-6)
  np.testing.assert_allclose(got[("l - local", "gb")][cols], [0, 0, 0])


# ------------------------------------------------------------------------------- longevity


def test_longevity_slope_of_an_uncensored_line_is_its_slope():
  k = np.arange(26)
  y = np.stack([12 - 0.3 * k, 11 + 0.05 * k, np.full(26, 10.0)])
  ones = np.ones_like(y, bool)
  b = targets.longevity_slopes(y, ones, ones, np.full(y.shape, np.nan))
  np.testing.assert_allclose(b, [-0.3, 0.05, 0.0], atol=1e-4)  # the weak prior moves it < 1e-4


def test_longevity_leaving_the_chart_is_decay_not_missing():
  """Three series alike for steps 0..2: one stays flat on the chart, one leaves it (known steps
  below the floor), one's data ends (unknown steps). Off-chart is evidence of decay; the end of
  the data is not."""
  T, floor = 12, np.log1p(2e4)
  k = np.arange(T)
  y = np.full((3, T), np.log1p(1e5))
  y[:, :3] = np.log1p([1e5, 8e4, 6e4])
  obs = np.ones((3, T), bool)
  known = np.ones((3, T), bool)
  obs[1, 3:] = False  # left the chart: below the floor from step 3 on
  obs[2, 3:] = known[2, 3:] = False  # the data ends after step 2
  floors = np.full((3, T), floor)
  b = targets.longevity_slopes(y, obs, known, floors)
  b_first3 = np.polyfit(k[:3], y[0, :3], 1)[0]
  assert b[1] < b_first3 - 0.05, b  # censoring pulls the slope down: the curve fell below 2e4
  only3 = targets.longevity_slopes(y[2:, :3], obs[2:, :3], known[2:, :3], floors[2:, :3])
  np.testing.assert_allclose(b[2], only3[0], atol=1e-9)  # unknown steps count for nothing
  assert b[0] > b[2]
  # A song that leaves earlier decays faster; one never observed gets NaN.
  obs2 = np.ones((2, T), bool)
  obs2[0, 2:] = False
  obs2[1, 6:] = False
  y2 = np.tile(12 - 0.2 * k, (2, 1))
  b2 = targets.longevity_slopes(y2, obs2, np.ones_like(obs2), np.full((2, T), 11.0))
  assert b2[0] < b2[1] < 0
  assert np.isnan(targets.longevity_slopes(y2[:1], np.zeros((1, T), bool), np.ones((1, T), bool),
                                           np.full((1, T), 11.0)))[0]


def test_longevity_target_in_build_targets():
  """A weekly chart whose #2 spot falls from 1000 streams; the floor = the chart's lowest
  streams that week. Song D decays and leaves; song S stays; song E debuts too late for the
  horizon (NaN)."""
  rows = [dict(date=week(k), pos=1, artist="Filler", title="Old", streams=9e5) for k in range(14)]
  rows += [dict(date=week(k), pos=9, artist="Low", title="Floor", streams=100) for k in range(14)]
  rows += [dict(date=week(1 + k), pos=2, artist="D", title="Decays", streams=1000 * 0.6 ** k)
           for k in range(4)]  # 1000, 600, 360, 216, then off the chart (below 100? no: leaves)
  rows += [dict(date=week(1 + k), pos=3, artist="S", title="Stays", streams=800) for k in range(12)]
  rows += [dict(date=week(10), pos=4, artist="E", title="Late", streams=500)]
  tg = targets.build_targets(chart(rows), period="weekly", horizon=8, mp2_weeks=2)
  t = tg.table.set_index("track_key")
  lon = t["longevity_target"]
  assert lon["s - stays"] == pytest.approx(0.0, abs=1e-3)
  assert lon["d - decays"] < np.log(0.6) + 0.01  # at least the observed decay: it then left
  assert np.isnan(lon["e - late"])  # the data ends before its step 7
  assert "longevity_target" in tg.definitions and "floor" in tg.definitions["longevity_target"]
