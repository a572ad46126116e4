"""mpjax.backtest: the windows MP3 and its peers train and score on, no look-ahead at the origin,
the segments, and the statistics every "A beats B" of the report carries."""
import numpy as np
import pytest

import jax
import ml_collections

from mpjax import backtest
from mpjax import baselines
from mpjax import tasks
from mpjax.analysis import stats


def _rows(n=6, h=40, seed=0):
  rng = np.random.default_rng(seed)
  mask = rng.random((n, h)) < 0.6
  mask[:, 0] = True
  mask[1, 3:] = False  # leaves the chart for good after three days
  known = np.ones((n, h), bool)
  known[:, 30:] = False  # the data end
  series = np.where(mask, rng.normal(10, 1, (n, h)), 0.0)
  floor = np.where(known & ~mask, 9.0, np.nan)
  debut = np.array(["2025-11-28", "2025-11-30", "2025-12-02", "2025-12-02", "2025-10-01",
                    "2025-10-05"][:n], "datetime64[D]")
  return {"series": series, "mask": mask, "known": known, "floor": floor,
          "region_ids": np.arange(n) % 3, "record": np.array([0, 0, 1, 2, 3, 3][:n]),
          "weekday": np.zeros(n, np.int32), "song": np.array(["a", "a", "b", "c", "d", "d"][:n],
                                                             object),
          "debut": debut, "extrinsic": np.zeros((n, 1), np.float32)}


def test_peers_train_on_exactly_the_windows_mp3_samples():
  rows = _rows()
  spec = backtest.Spec(k=3, window=10, origins=(0, 5), max_origin=12)
  want = set(zip(*map(np.ndarray.tolist, backtest.train_pairs(rows, spec))))
  # MP3's sampler (tasks.forecast_window), drawn many times: the same (row, origin) set.
  cfg = ml_collections.ConfigDict({"mp3": {"origins": 12, "prefix_steps": 3}})
  batch = {"series": rows["series"][None].astype(np.float32),
           "series_mask": rows["mask"][None].astype(np.float32),
           "series_known": rows["known"][None].astype(np.float32)}
  draw = jax.jit(lambda key: tasks.forecast_window(batch, cfg, 10, key)["origin"][0])
  seen = set()
  for i in range(400):
    seen |= set(enumerate(np.asarray(draw(jax.random.key(i))).tolist()))
  assert seen == want
  assert (1, 0) in want and not any(r == 1 and o > 2 for r, o in want)  # row 1: early origins


def test_eval_shift_scores_the_later_origin():
  rows = _rows()
  cfg = ml_collections.ConfigDict({"mp3": {"origins": 12, "prefix_steps": 3}})
  batch = {"series": rows["series"][None], "series_mask": rows["mask"][None].astype(np.float32),
           "series_known": rows["known"][None].astype(np.float32)}
  out = tasks.forecast_window(tasks.shift_to_origin(batch, 7), cfg, 10)
  np.testing.assert_array_equal(out["series"][0], rows["series"][:, 7:17])
  assert (np.asarray(out["origin"]) == 7).all()
  late = tasks.shift_to_origin(batch, 35)  # past the stored horizon: unknown, not zeros on chart
  assert not late["series_known"][..., 5:].any() and not late["series_mask"][..., 5:].any()


def test_no_value_after_the_origin_reaches_the_features():
  rows = _rows()
  spec = backtest.Spec(k=3, window=10, origins=(0, 5), max_origin=12)
  pairs = backtest.eval_pairs(rows, spec)
  win = backtest.windows(rows, pairs, spec)
  x, last = backtest.window_features(rows, win, spec, ["id", "ph", "kr"])
  # Rewrite, for every window, all days after its last prefix day (calendar days, in every
  # region of the song): the features must not move.
  for w in range(len(win["row"])):
    cut = win["origin_date"][w]
    bad = {k: v.copy() for k, v in rows.items()}
    for j in range(len(rows["series"])):
      day = rows["debut"][j] + np.arange(rows["series"].shape[1]).astype("timedelta64[D]")
      after = day > cut
      bad["series"][j, after] = 99.0
      bad["mask"][j, after] = ~rows["mask"][j, after]
      bad["known"][j, after] = False
      bad["floor"][j, after] = 50.0
    win2 = backtest.windows(bad, (win["row"][w:w + 1], win["origin"][w:w + 1]), spec)
    x2, last2 = backtest.window_features(bad, win2, spec, ["id", "ph", "kr"])
    np.testing.assert_allclose(x2[0], x[w], err_msg=f"window {w}")
    assert last2[0] == last[w]
  # ... and the check can fail: a prefix day (before the cut) does move them.
  w = int(np.flatnonzero(win["origin"] == 5)[0])
  bad = {k: v.copy() for k, v in rows.items()}
  bad["series"][win["row"][w], 5:8] += 1.0
  win2 = backtest.windows(bad, (win["row"][w:w + 1], win["origin"][w:w + 1]), spec)
  assert not np.allclose(backtest.window_features(bad, win2, spec, ["id", "ph", "kr"])[0][0], x[w])


def test_other_regions_read_the_same_calendar_days():
  rows = _rows()
  spec = backtest.Spec(k=3, window=10, origins=(0,), max_origin=0)
  rows["mask"][0] = False
  rows["mask"][0, :3] = True  # region of row 0 (debut Nov 28): on the chart Nov 28..30
  rows["series"][0, :3] = [5.0, 6.0, 7.0]
  win = backtest.windows(rows, (np.array([1]), np.array([0])), spec)  # row 1: debut Nov 30
  feats = backtest.other_regions(rows, win, 3)
  # Prefix of row 1 = Nov 30..Dec 2; row 0 charts on Nov 30 only (its step 2, value 7).
  np.testing.assert_allclose(feats[0], [0.0, 1.0, 7.0])


def test_reentry_and_scrape_gap_segments():
  rows = _rows(n=3)
  rows["mask"][:] = False
  rows["known"][:] = True
  rows["mask"][0, [0, 1, 2, 5, 6]] = True  # off on 3-4, back on 5: re-entered by day 6
  rows["mask"][1, :10] = True
  rows["mask"][2, :10] = True
  rows["known"][2, 12] = False  # a missing chart day inside the window
  got = backtest.reentered(rows, np.array([0, 0, 1]), np.array([0, 4, 0]), 3)
  np.testing.assert_array_equal(got, [False, True, False])
  spec = backtest.Spec(k=3, window=20, origins=(0,), max_origin=0)
  win = backtest.windows(rows, (np.array([1, 2]), np.array([0, 0])), spec)
  np.testing.assert_array_equal(backtest.scrape_gap(win, 3), [False, True])


def test_window_mae_scores_on_chart_days_only():
  pred = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  y = np.array([[2.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
  m = np.array([[True, True, False], [False, False, False]])
  got = backtest.window_mae(pred, y, m)
  assert got[0] == 0.5 and np.isnan(got[1])


def test_song_bootstrap_ci_covers_a_planted_difference_at_its_nominal_rate():
  rng = np.random.default_rng(0)
  hits, reps = 0, 200
  for r in range(reps):
    songs = np.repeat(np.arange(60), 4)  # 4 windows per song, correlated within a song
    effect = rng.normal(0, 0.3, 60)[songs]
    d = 0.1 + effect + rng.normal(0, 0.2, len(songs))  # planted mean difference 0.1
    w = stats.bootstrap_weights(songs, 400, r)
    lo, hi = stats.percentile_ci((w @ d) / w.sum(1))
    hits += lo <= 0.1 <= hi
  assert 0.9 <= hits / reps <= 0.99, hits / reps


def test_diebold_mariano_size_and_power():
  rng = np.random.default_rng(1)
  null = [stats.diebold_mariano(rng.normal(0, 1, 150), 5)["p"] for _ in range(300)]
  assert 0.02 <= np.mean(np.array(null) < 0.05) <= 0.1
  alt = stats.diebold_mariano(rng.normal(0.4, 1, 150), 5)
  assert alt["p"] < 0.01 and alt["stat"] > 0
  assert np.isnan(stats.diebold_mariano([1.0, 2.0], 5)["p"])


def test_summarise_pairs_methods_on_the_same_windows():
  rng = np.random.default_rng(2)
  m, h = 80, 14
  y = rng.normal(10, 1, (m, h))
  mask = np.ones((m, h), bool)
  point = {"last_value": y + rng.normal(0, 1.0, (m, h)),
           "lightgbm": y + rng.normal(0, 0.5, (m, h)),
           "mp3/s0": y + rng.normal(0, 0.3, (m, h)), "mp3/s1": y + rng.normal(0, 0.3, (m, h))}
  meta = {"song": np.repeat(np.arange(40), 2).astype(str), "region": np.zeros(m, int),
          "record": np.repeat(np.arange(40), 2), "origin": np.tile([0, 7], 40),
          "origin_date": np.datetime64("2025-10-01") + np.arange(m).astype("timedelta64[D]"),
          "debut": np.full(m, np.datetime64("2025-12-05")), "debut_pos": np.full(m, 45.0),
          "reentry": np.zeros(m, bool), "gap": np.zeros(m, bool), "cutoff": np.full(m, "c1")}
  pooled = {"meta": meta, "point": point, "quantiles": {}, "target": y, "mask": mask,
            "known": mask, "floor": np.full((m, h), np.nan)}
  s = backtest.summarise(pooled, samples=200)
  r = s["methods"]["lightgbm"]["vs_mp3"]
  assert r["diff"] < 0 and r["ci"][1] < 0 and r["dm_p"] < 0.05  # MP3 better, and it shows
  assert s["methods"]["mp3"]["vs_last_value"][0] < -0.5
  assert len(s["methods"]["mp3"]["seeds"]) == 2
  assert s["segments"]["holiday-season debut"]["n_windows"] == m
  assert "debut position 1-10" not in s["segments"]  # empty segments are left out
  md = backtest.markdown(s, command="cmd")
  assert "| **mp3** |" in md and "Segments" in md
