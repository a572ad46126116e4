"""Research question T: shape statistics on hand-made curves, the planted TikTok wave found (and
not found under shuffled labels), label CSVs, the report files and the model-error comparison;
censored durations, Kaplan-Meier against hand values, the Cox hazard ratio recovered on a
planted sample, Holm, and T with a label CSV on a chart-only dataset built from real kworb data."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mpjax.analysis import rows, tiktok

LN2, LN15 = math.log(2.0), math.log(1.5)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  from data_prep import build, synthetic

  base = tmp_path_factory.mktemp("tiktok")
  raw, data = str(base / "raw"), str(base / "data")
  synthetic.generate(raw, seed=5, n_songs=400, n_artists=100, clip_seconds=5.5, fit_chart_oracle=False)
  build.build(build.BuildConfig(raw=raw, out=data, progress=False))
  return rows.load(data, "train,val,test", with_audio=False)


def _stats(curves, known=None):
  x = np.array(curves, np.float64)
  mask = np.isfinite(x)
  known = np.ones_like(mask) if known is None else np.array(known, bool)
  return tiktok.shape_stats(x, mask, known)


def test_shape_stats_hand_made_curves():
  nan = np.nan
  s = _stats([
      [10.0, 9.8, 9.5, 9.2, 9.0, 8.8],                 # monotone decay
      [10.0, 9.6, 9.4, 9.4 + LN2, 9.9, nan],           # dip to 9.4, then +ln 2
      [10.0, 9.9, nan, nan, 9.7, 9.5],                 # on, off (known), on again
      [10.0, 10.3, 10.2, 10.1, 10.0, 9.9],             # never halves: censored
      [10.0, 10.2, 10.5, 10.4, 10.6, 10.3],            # climbs after the debut
  ])
  # Monotone decay: peak at the debut, halves (ln 2 below 10 = 9.31) at step 3.
  assert s["weeks_to_peak"][0] == 0 and s["peak_over_debut"][0] == 0
  assert s["half_life"][0] == 3 and s["longevity"][0] == 6
  assert s["rebound"][0] == 0 and s["reentry"][0] == 0 and s["second_rise"][0] == 0
  # Dip then a rise of ln 2 from the trough: peak (10.09) at step 3; off the chart at step 5.
  assert s["rebound"][1] == pytest.approx(LN2)
  assert s["second_rise"][1] == 1 and s["reentry"][1] == 0
  assert s["weeks_to_peak"][1] == 3
  assert s["peak_over_debut"][1] == pytest.approx(9.4 + LN2 - 10.0)
  assert s["half_life"][1] == 2 and s["longevity"][1] == 5
  # Re-entry: off the chart at known steps 2-3, back at 4. Half life ends at the first off step.
  assert s["reentry"][2] == 1 and s["second_rise"][2] == 1 and s["rebound"][2] == 0
  assert s["half_life"][2] == 2 and s["longevity"][2] == 4
  # Censored: on the chart to the end, never ln 2 below the peak.
  assert math.isnan(s["half_life"][3]) and s["weeks_to_peak"][3] == 1
  assert s["rebound"][3] == 0 and s["second_rise"][3] == 0
  # Climbing after the debut is a late peak, not a rebound; the dip 10.5 -> 10.4 -> 10.6 is.
  assert s["rebound"][4] == pytest.approx(0.2) and s["second_rise"][4] == 0
  assert s["weeks_to_peak"][4] == 4 and s["peak_over_debut"][4] == pytest.approx(0.6)


def test_shape_stats_unknown_steps_are_not_off_chart():
  nan = np.nan
  x = [[10.0, 9.9, nan, nan, 9.7, nan, nan]]
  # Unknown gap: no re-entry; unknown tail: half life censored.
  s = _stats(x, known=[[1, 1, 0, 0, 1, 0, 0]])
  assert s["reentry"][0] == 0 and math.isnan(s["half_life"][0])
  # The same gap known: a re-entry and a half life of 2 (off the chart at step 2).
  s = _stats(x, known=[[1, 1, 1, 0, 1, 1, 0]])
  assert s["reentry"][0] == 1 and s["half_life"][0] == 2
  with pytest.raises(ValueError, match="one shape"):
    tiktok.shape_stats(np.zeros((2, 3)), np.ones((2, 4), bool), np.ones((2, 3), bool))


def test_planted_wave_found_and_shuffled_labels_null(pairs):
  labels = tiktok.labels_from_dataset(pairs)
  res = tiktok.compare(pairs, labels, permutations=1000, seed=0)
  s = res["stats"]
  floor = 1 / 1001
  for name in ("second_rise", "rebound", "weeks_to_peak", "reentry"):
    assert s[name]["difference"] > 0 and s[name]["p"] < 0.01, name
  assert s["second_rise"]["p"] == pytest.approx(floor)
  assert s["second_rise"]["TikTok"]["mean"] > 0.5 > 0.15 > s["second_rise"]["rest"]["mean"]
  assert s["second_rise"]["proportions"]["TikTok"] == s["second_rise"]["TikTok"]["mean"]
  assert s["rebound"]["cohens_d"] > 1.5
  # 15 % of 400 songs planted; the groups count songs, not rows.
  assert res["n_songs"]["TikTok"] + res["n_songs"]["rest"] == len(set(pairs["song"]))
  assert 0.1 < res["n_songs"]["TikTok"] / len(set(pairs["song"])) < 0.2
  assert res["n_rows"]["TikTok"] > res["n_songs"]["TikTok"]
  # Curves: the TikTok mean climbs back towards its debut level mid-horizon; the rest do not.
  c = res["curves"]
  assert c["TikTok"]["mean"][0] == 0 and c["TikTok"]["mean"][4:8].max() > -0.15
  assert c["rest"]["mean"][4:8].max() < -0.4
  assert (c["rest"]["lo"] <= c["rest"]["mean"] + 1e-12).all()
  assert c["rest"]["n_rows"][0] == res["n_rows"]["rest"]

  shuffled = tiktok.shuffle_labels(pairs, labels, seed=3)
  # Song-level permutation: the counts stay, each song keeps one label, assignments change.
  groups = rows.song_groups(pairs["song"])
  for g in np.unique(groups):
    assert len(set(shuffled[groups == g])) == 1
  assert (shuffled == 1).sum() != 0 and (shuffled != labels).any()
  null = tiktok.compare(pairs, shuffled, permutations=1000, seed=0)["stats"]
  assert null["second_rise"]["p"] > 0.05 and null["rebound"]["p"] > 0.05
  assert abs(null["second_rise"]["difference"]) < 0.1


def test_compare_needs_two_songs_per_group(pairs):
  labels = np.zeros(len(pairs["song"]), np.int64)
  labels[pairs["song"] == pairs["song"][0]] = 1
  with pytest.raises(ValueError, match="at least 2 songs"):
    tiktok.compare(pairs, labels, permutations=10)


def test_labels_from_csv(pairs, tmp_path):
  track, song = pairs["track"][0], pairs["song"][-1]
  path = tmp_path / "labels.csv"
  # Keys are matched whatever their case and surrounding whitespace.
  path.write_text(f"key,label\n  {track.upper()} ,1\n{song.lower()},0\nnot-a-song,1\n")
  lab = tiktok.labels_from_csv(pairs, str(path))
  assert (lab[pairs["track"] == track] == 1).all()
  assert (lab[pairs["song"] == song] == 0).all()
  listed = (pairs["track"] == track) | (pairs["song"] == song)
  assert (lab[~listed] == -1).all() and listed.sum() >= 2

  nothing = tmp_path / "nothing.csv"
  nothing.write_text("key,label\nsomeone - something,1\n")
  with pytest.raises(ValueError, match="nothing.csv"):
    tiktok.labels_from_csv(pairs, str(nothing))
  # track,label and song,label name the key column too.
  for col in ("track", "song"):
    other = tmp_path / f"{col}.csv"
    other.write_text(f"{col},label\n{track},1\n")
    assert (tiktok.labels_from_csv(pairs, str(other)) == np.where(pairs["track"] == track, 1, -1)
            ).all()
  wrong = tmp_path / "wrong.csv"
  wrong.write_text(f"track,tiktok\n{track},1\n")
  with pytest.raises(ValueError, match="wrong.csv.*track,label or key,label"):
    tiktok.labels_from_csv(pairs, str(wrong))
  odd = tmp_path / "odd.csv"
  odd.write_text(f"key,label\n{track},yes\n")
  with pytest.raises(ValueError, match="odd.csv.*0 or 1"):
    tiktok.labels_from_csv(pairs, str(odd))


def _fake_predictions(pairs, labels, path, *, k=4, gap=1.0):
  """predictions.npz for the test rows: the truth plus noise, `gap` more error on label 1."""
  test = np.flatnonzero(pairs["split"] == "test")
  series = np.nan_to_num(pairs["series"][test])
  mask = pairs["mask"][test]
  rng = np.random.default_rng(0)
  h = series.shape[1]
  noise = np.abs(rng.normal(0.0, 0.3, (len(test), h - k)))
  err = noise + gap * (labels[test] == 1)[:, None]
  med = series[:, k:] + err * rng.choice([-1.0, 1.0], size=err.shape)
  pred = np.stack([med - 0.5, med, med + 0.5], -1)  # 3 quantiles, the median in the middle
  np.savez(path, pred=pred, series=series, mask=mask, region_ids=pairs["region"][test],
           record=pairs["record"][test], baseline_train_drift=series[:, k:] + 0.5)
  return test


def test_model_error_detects_larger_error(pairs, tmp_path):
  labels = tiktok.labels_from_dataset(pairs)
  path = str(tmp_path / "predictions.npz")
  _fake_predictions(pairs, labels, path)
  me = tiktok.model_error(pairs, labels, path, permutations=1000, seed=0)
  assert me["available"] and me["k"] == 4 and me["rows_unmatched"] == 0
  m = me["stats"]["model"]
  assert m["difference"] == pytest.approx(1.0, abs=0.1) and m["p"] < 0.01
  drift = me["stats"]["train_drift"]
  assert drift["TikTok"]["mean"] == pytest.approx(0.5)
  assert drift["rest"]["mean"] == pytest.approx(0.5)
  assert drift["p"] > 0.5
  assert me["stats"]["model_minus_train_drift"]["difference"] == pytest.approx(m["difference"])

  # Shuffled labels: the same predictions show no difference.
  null = tiktok.model_error(pairs, tiktok.shuffle_labels(pairs, labels, seed=3), path,
                            permutations=1000, seed=0)
  assert null["stats"]["model"]["p"] > 0.05
  # No known label among the test rows: said, not raised.
  unknown = np.where(pairs["split"] == "test", -1, labels)
  none = tiktok.model_error(pairs, unknown, path, permutations=10)
  assert none["available"] is False and "no test row" in none["reason"]
  # Predictions of another dataset.
  other = str(tmp_path / "other.npz")
  data = dict(np.load(path))
  data["record"] = data["record"] + 10_000
  np.savez(other, **data)
  with pytest.raises(ValueError, match="other.npz"):
    tiktok.model_error(pairs, labels, other)


def test_run_writes_report(pairs, tmp_path):
  labels = tiktok.labels_from_dataset(pairs)
  preds = str(tmp_path / "predictions.npz")
  _fake_predictions(pairs, labels, preds)
  out = str(tmp_path / "out")
  printed = []
  res = tiktok.run(pairs, labels, out, label_source="dataset label 'tiktok'", predictions=preds,
                   permutations=500, seed=1, bootstrap=100, log=printed.append)
  for name in ("tiktok.json", "tiktok.md", "tiktok_curves.png", "tiktok_stats.png",
               "tiktok_survival.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "tiktok.json")) as f:
    saved = json.load(f)  # strict JSON: NaN written as null
  assert saved["label_source"] == "dataset label 'tiktok'"
  assert saved["permutations"] == 500 and saved["seed"] == 1 and saved["bootstrap"] == 100
  assert saved["stats"]["second_rise"]["p"] == pytest.approx(1 / 501)
  assert saved["model_error"]["available"] is True
  assert res["stats"] == saved["stats"]
  # Holm over the ten tests: every adjusted p is there and >= its raw p.
  sv, adj = saved["survival"], saved["second_rise_adjusted"]
  family = [saved["stats"][n] for n in tiktok.STATS] + [sv["logrank"], sv["cox"]["tiktok"], adj]
  assert len(saved["holm"]["tests"]) == len(family) == 10
  for t in family:
    assert t["p_holm"] >= t["p"] - 1e-12 and t["p_holm"] <= 1
  assert saved["holm"]["p_holm"] == [t["p_holm"] for t in family]
  # The smallest raw p (the permutation floor) times the family size: Holm's first step.
  assert min(saved["holm"]["p_holm"]) == pytest.approx(10 / 501)
  # Survival: both groups have KM curves; the Cox table has the TikTok row and the covariates
  # but not the song's own outcomes.
  assert set(sv["km"]) == {"TikTok", "rest"} and sv["cox"]["strata"] == "region"
  names = [r["covariate"] for r in sv["cox"]["table"]]
  assert names[0] == "tiktok" and "artist_prior_peak_log_streams" in names
  assert not set(names) & set(tiktok.OUTCOME_FEATURES)
  # The planted wave survives the adjustment: a second rise far more likely for TikTok songs.
  # Every resample agrees on the sign: p at its floor, 2 / (1 + 100 draws).
  assert adj["log_odds_ratio"] > 1 and adj["ci"][0] > 0 and adj["p"] == pytest.approx(2 / 101)
  md = res["markdown"]
  assert printed == [f"[analysis] T: {saved['verdict']}"]
  assert saved["verdict"].startswith("TikTok songs differ significantly (Holm-adjusted p < 0.05) "
                                     "in ")
  assert "second_rise" in saved["verdict"]
  assert open(os.path.join(out, "tiktok.md")).read() == md
  assert md.startswith("## T: TikTok songs vs the rest")
  share = saved["stats"]["second_rise"]
  assert (f"TikTok songs show a second rise in {share['TikTok']['mean'] * 100:.0f} % of their "
          f"series vs {share['rest']['mean'] * 100:.0f} % of the others (p ≤ 0.002, Holm p = "
          f"{share['p_holm']:.2g})") in md
  assert "| second_rise |" in md and "| model |" in md and "| train_drift |" in md
  assert "| half_life (uncensored rows only; see the survival analysis) |" in md
  assert "| p (Holm) |" in md and "| log-rank (time on chart) |" in md
  assert "| Cox: hazard of leaving the chart" in md and "| artist_never_charted |" in md
  assert "no promotion feature" in md and "not corrected" not in md
  assert "](tiktok_curves.png)" in md and "](tiktok_stats.png)" in md
  assert "](tiktok_survival.png)" in md

  # Shuffled labels: the verdict says so.
  null = tiktok.run(pairs, tiktok.shuffle_labels(pairs, labels, seed=3), str(tmp_path / "null"),
                    label_source="shuffled", permutations=500, seed=1, bootstrap=100,
                    log=lambda s: None)
  assert "No statistic differs significantly" in null["markdown"]
  assert "show a second rise" not in null["markdown"]


# ------------------------------------------------------------------------------------------------
# Survival


def test_chart_durations_censoring():
  nan = np.nan
  x = np.array([
      [10.0, 9.0, 8.0, nan, nan, nan],   # leaves at step 3: duration 3, event 1
      [10.0, 9.0, 8.0, 7.0, 6.0, 5.0],   # on to the end: censored at 6 known steps
      [10.0, 9.0, 8.0, 7.0, nan, nan],   # on to step 3, then unknown: censored at 4
      [nan, 10.0, 9.0, nan, nan, nan],   # debuts at step 1, leaves at 3: duration 2
      [10.0, nan, 9.0, 8.0, nan, nan],   # leaves at 1 (re-enters later): the first exit counts
      [nan] * 6,                         # never observed: NaN
  ])
  known = np.ones_like(x, bool)
  known[2, 4:] = False
  dur, event = tiktok.chart_durations(x, np.isfinite(x), known)
  np.testing.assert_array_equal(dur[:5], [3, 6, 4, 2, 1])
  np.testing.assert_array_equal(event[:5], [1, 0, 0, 1, 1])
  assert math.isnan(dur[5]) and math.isnan(event[5])
  with pytest.raises(ValueError, match="one shape"):
    tiktok.chart_durations(x, np.isfinite(x), known[:, :3])


def test_kaplan_meier_hand_values():
  # Product limit on durations [1, 2, 2, 3, 4, 5], events [1, 1, 0, 1, 0, 1] (the censored 2 is
  # still at risk at 2): t=1: 6 at risk, 1 event, S = 5/6; t=2: 5 at risk, 1 event,
  # S = 5/6 * 4/5 = 2/3; t=3: 3 at risk, 1 event, S = 2/3 * 2/3 = 4/9; t=4: censored only,
  # S = 4/9; t=5: 1 at risk, 1 event, S = 0. Median: the first t with S <= 1/2, 3.
  km = tiktok._km(np.array([1, 2, 2, 3, 4, 5.0]), np.array([1, 1, 0, 1, 0, 1.0]), "x")
  s = dict(zip(km["time"], km["survival"]))
  np.testing.assert_allclose([s[1], s[2], s[3], s[4], s[5]], [5 / 6, 2 / 3, 4 / 9, 4 / 9, 0])
  assert km["median"] == 3 and km["events"] == 4 and km["n_rows"] == 6
  assert all(lo <= v + 1e-12 <= hi + 2e-12 for lo, v, hi in zip(km["lo"], km["survival"], km["hi"]))


def _planted_survival(n=2000, hr=2.0, h=40, seed=0):
  """A pairs-like dict whose rows leave the chart after exponential times with hazard
  0.08 * hr^tiktok * exp(0.5 z) (z = artist_prior_peak_log_streams), cut at h steps."""
  rng = np.random.default_rng(seed)
  tik = (rng.random(n) < 0.4).astype(int)
  z = rng.normal(size=n)
  rate = 0.08 * hr ** tik * np.exp(0.5 * z)
  steps = np.ceil(rng.exponential(1.0 / rate)).astype(int)  # leaves at this step (>= 1)
  t = np.arange(h)
  mask = t[None] < steps[:, None]
  series = np.where(mask, 10.0 - 0.1 * t[None], np.nan)
  region = rng.integers(0, 2, n)
  extrinsic = np.column_stack([z, rng.normal(size=n), np.ones(n)])
  return {"song": np.array([f"s{i}" for i in range(n)]), "series": series, "mask": mask,
          "known": np.ones_like(mask), "region": region, "extrinsic": extrinsic,
          "feature_names": ["artist_prior_peak_log_streams", "debut_pos", "constant"]}, tik, steps


def test_cox_recovers_planted_hazard_ratio():
  pairs, tik, steps = _planted_survival()
  sv = tiktok.survival(pairs, tik)
  cox = sv["cox"]
  # debut_pos is an outcome (left out), the constant column is dropped.
  assert cox["covariates"] == ["artist_prior_peak_log_streams"] and cox["strata"] == "region"
  assert cox["tiktok"]["hr"] == pytest.approx(2.0, rel=0.15)
  assert cox["tiktok"]["lo"] < cox["tiktok"]["hr"] < cox["tiktok"]["hi"]
  assert cox["tiktok"]["p"] < 1e-6 and sv["logrank"]["p"] < 1e-6
  fame = cox["table"][1]
  assert fame["covariate"] == "artist_prior_peak_log_streams"
  assert math.log(fame["hr"]) == pytest.approx(0.5, rel=0.2)  # per SD of a unit-SD feature
  # Rows still on the chart at step 40 are censored; TikTok rows leave sooner.
  assert sv["n_censored"] == int((steps >= 40).sum()) > 0
  assert sv["km"]["TikTok"]["median"] < sv["km"]["rest"]["median"]
  # No effect planted: HR near 1, not significant.
  pairs0, tik0, _ = _planted_survival(hr=1.0, seed=1)
  cox0 = tiktok.survival(pairs0, tik0)["cox"]["tiktok"]
  assert cox0["hr"] == pytest.approx(1.0, abs=0.15) and cox0["p"] > 0.01


# ------------------------------------------------------------------------------------------------
# Real chart data with a label file


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
  """A chart-only daily dataset built from the real kworb cut (tests/fixtures/charts): no tiktok
  label, like every real chart."""
  from data_prep import build, kworb_csv, tables

  base = tmp_path_factory.mktemp("real")
  raw = base / "raw"
  raw.mkdir()
  cut = os.path.join(os.path.dirname(__file__), "fixtures", "charts", "kworb_daily_cut.csv.gz")
  tables.write(kworb_csv.load_daily_csv(cut), str(raw / "charts.csv"), "charts")
  build.build(build.BuildConfig(raw=str(raw), out=str(base / "data"), progress=False,
                                chart_only=True, period="daily", horizon=28))
  return str(base / "data")


def test_t_on_real_chart_data_with_a_label_csv(real_data, tmp_path):
  from mpjax.analysis import research

  pairs = rows.load(real_data, "train,val,test", with_audio=False)
  assert "tiktok" not in pairs["labels_names"]
  with pytest.raises(ValueError, match="give the labels as a CSV"):
    tiktok.labels_from_dataset(pairs)
  # A label file keyed by track: every other song labelled TikTok.
  songs = sorted(set(pairs["song"]))
  first_track = {s: pairs["track"][pairs["song"] == s][0] for s in songs}
  path = tmp_path / "labels.csv"
  path.write_text("track,label\n" + "".join(f"{first_track[s]},{i % 2}\n"
                                            for i, s in enumerate(songs)))
  labels = tiktok.labels_from_csv(pairs, str(path))
  assert (labels >= 0).all()
  res = tiktok.run(pairs, labels, str(tmp_path / "t"), label_source=f"CSV {path}",
                   permutations=200, bootstrap=30, seed=0, log=lambda s: None)
  assert f"Labels: CSV {path}." in res["markdown"]
  assert res["unit"] == "days" and res["n_songs"]["TikTok"] >= 2
  assert res["survival"]["km"]["rest"]["n_rows"] > 0
  assert os.path.getsize(tmp_path / "t" / "tiktok_survival.png") > 0

  # The report: T runs from the label file, and without one says how to supply it.
  out = research.run(None, data_dir=real_data, out=str(tmp_path / "r"), tiktok_labels=str(path),
                     bootstrap=30, permutations=100, log=lambda s: None)
  text = open(out["report"]).read()
  assert f"Labels: CSV {path}." in text and "| log-rank (time on chart) |" in text
  skipped = research.run(None, data_dir=real_data, out=str(tmp_path / "s"), bootstrap=30,
                         permutations=100, log=lambda s: None)
  text = open(skipped["report"]).read()
  assert "T was skipped" not in text  # said as "Skipped: ..." in the T section
  assert "## T: TikTok songs vs the rest\n\nSkipped: no TikTok labels" in text
  assert "--tiktok_labels=LABELS.csv" in text and "`track,label`" in text
