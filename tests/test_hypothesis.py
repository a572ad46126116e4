"""H (debut from extrinsic factors, longevity from the audio): the tool recovers the planted
split on synthetic data, finds no audio increment in the null world, and its statistics are
right (bootstrap by song, weighted R², nested designs)."""
import json
import os

import numpy as np
import pytest

from mpjax.analysis import hypothesis, rows
from mpjax.analysis.research import planted_attributes


def _world(tmp_path_factory, null):
  from data_prep import build, synthetic
  raw = str(tmp_path_factory.mktemp("raw_null" if null else "raw"))
  out = str(tmp_path_factory.mktemp("ds_null" if null else "ds"))
  # 400 songs, 40 % of them in test: enough scored songs for intervals that can exclude zero.
  synthetic.generate(raw, seed=7, n_songs=400, n_artists=100, clip_seconds=5.5, null=null, fit_chart_oracle=False)
  build.build(build.BuildConfig(raw=raw, out=out, progress=False, fractions=(0.5, 0.1, 0.4)))
  return raw, rows.load(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return _world(tmp_path_factory, null=False)


@pytest.fixture(scope="module")
def null_world(tmp_path_factory):
  return _world(tmp_path_factory, null=True)


def _analyse(pairs, audio):
  fit = np.isin(pairs["split"], ["train", "val"])
  return hypothesis.analyse(pairs, audio, fit, pairs["split"] == "test", components=8,
                            bootstrap=500, seed=0)


def test_recovers_the_planted_split(world):
  raw, pairs = world
  res = _analyse(pairs, planted_attributes(pairs, raw))
  hz = res["horizons"]
  debut = hz["debut"]
  # The debut: the extrinsic features explain most of it and the audio adds nothing.
  assert debut["r2"]["extrinsic"] > 0.7
  assert not debut["significant"] and debut["increment"] < 0.02
  # Later: the audio (decay, TikTok wave) explains retention the extrinsic features cannot.
  assert hz["weeks 2-3"]["significant"] and hz["weeks 2-3"]["increment"] > 0.4
  assert hz["longevity"]["significant"] and hz["longevity"]["increment"] > 0.2
  assert res["verdict"]["supported"] is True
  assert "weeks 2-3" in res["verdict"]["significant_later"]


def test_null_world_has_no_audio_increment(null_world):
  raw, pairs = null_world
  for audio in (planted_attributes(pairs, raw), pairs["fbank_stats"]):
    res = _analyse(pairs, audio)
    assert set(res["horizons"]) >= {"debut", "weeks 2-3", "longevity"}
    assert [n for n, e in res["horizons"].items() if e["significant"]] == []
    assert res["verdict"]["supported"] is False


def test_fbank_statistics_find_the_audio_effect(world):
  _, pairs = world
  res = _analyse(pairs, pairs["fbank_stats"])
  assert res["verdict"]["supported"] is True
  assert hz_sig(res) >= {"weeks 2-3"}


def hz_sig(res):
  return {n for n, e in res["horizons"].items() if e["significant"]}


def test_bootstrap_resamples_songs_not_rows():
  groups = np.array([0, 0, 0, 1, 2, 2])
  w = hypothesis.bootstrap_weights(groups, samples=200, seed=1)
  assert w.shape == (200, 6)
  # A song's rows always carry the same weight; each draw picks 3 songs.
  assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 1] == w[:, 2]) and np.all(w[:, 4] == w[:, 5])
  assert np.all(w[:, [0, 3, 4]].sum(1) == 3)
  assert len({tuple(r) for r in w}) > 5  # not one resample repeated


def test_weighted_r2_matches_plain_and_a_duplicated_sample():
  rng = np.random.default_rng(0)
  y, p = rng.normal(size=30), rng.normal(size=30)
  plain = 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()
  assert hypothesis.r2(y, p) == pytest.approx(plain)
  assert hypothesis.r2(y, p, np.ones((1, 30)))[0] == pytest.approx(plain)
  w = np.ones(30)
  w[:5] = 2
  dup = np.concatenate([np.arange(30), np.arange(5)])
  assert hypothesis.r2(y, p, w[None])[0] == pytest.approx(hypothesis.r2(y[dup], p[dup]))


def test_targets_debut_level_then_retention():
  series = np.array([[10.0, 9.0, 8.0, np.nan, 6.0, 5.0], [12.0, np.nan, np.nan, np.nan, np.nan, np.nan]])
  mask = np.isfinite(series)
  known = np.array([[True] * 6, [True] * 3 + [False] * 3])
  t = hypothesis.targets({"series": series, "mask": mask, "known": known, "period": "weekly"})
  assert [n for n, *_ in hypothesis.horizons(6)] == ["debut", "weeks 2-3", "weeks 4-6"]
  assert t["debut"].tolist() == [10.0, 12.0]
  assert t["weeks 2-3"][0] == pytest.approx(8.5 - 10.0)   # retention relative to the debut
  assert t["weeks 4-6"][0] == pytest.approx(5.5 - 10.0)   # the off-chart week left out
  assert np.isnan(t["weeks 2-3"][1])                       # never on the chart there
  assert t["longevity"][0] == 5 and np.isnan(t["longevity"][1])  # 2nd: horizon not all known


def test_overlapping_fit_and_score_rows_are_refused(world):
  _, pairs = world
  allrows = np.ones(len(pairs["region"]), bool)
  with pytest.raises(ValueError, match="overlap"):
    hypothesis.analyse(pairs, pairs["fbank_stats"], allrows, allrows)


def test_run_writes_report_and_figures(world, tmp_path):
  raw, pairs = world
  res = hypothesis.run(pairs, str(tmp_path), audio={"planted": planted_attributes(pairs, raw)},
                       fit="train,val", score="test", bootstrap=200, components=8,
                       log=lambda *_: None)
  with open(tmp_path / "hypothesis.json") as f:
    saved = json.load(f)
  assert saved["audio"]["planted"]["verdict"]["supported"] is True
  assert "debut_pos" in saved["excluded"] and "debut_pos" not in saved["extrinsic_features"]
  md = (tmp_path / "hypothesis.md").read_text()
  assert "H supported" in md and "| weeks 2-3 |" in md
  assert os.path.getsize(tmp_path / "hypothesis_planted.png") > 10_000
  assert res["markdown"] == md
