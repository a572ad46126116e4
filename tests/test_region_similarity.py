"""Region similarity: cosine and Mantel basics, the data's decay curves recover the planted taste
on an 8-region synthetic world, and a tiny trained run is compared end to end."""
from __future__ import annotations

import itertools
import json
import os
import shutil

import numpy as np
import pytest

from configs import mp2 as mp2_config
from data_prep import synthetic
from mpjax import checkpoint, train
from mpjax.analysis import regions, rows

from fakes import tiny_dataset, tiny_train

EIGHT = ("global", "us", "kr", "br", "de", "jp", "fr", "mx")


def _prefs(codes):
  """[R, 6] planted preference weights of `codes` (data_prep.synthetic.region_params)."""
  return np.array([[synthetic.region_params(c)["prefs"][a] for a in synthetic.ATTRIBUTES]
                   for c in codes])


# ------------------------------------------------------------------------------------------------
# cosine and Mantel
# ------------------------------------------------------------------------------------------------


def test_cosine_similarity_basics():
  v = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
  sim = regions.cosine_similarity(v)
  np.testing.assert_allclose(sim, [[1, 1, 0, -1], [1, 1, 0, -1], [0, 0, 1, 0], [-1, -1, 0, 1]],
                             atol=1e-12)
  with pytest.raises(ValueError, match=r"row\(s\) \[1\] are zero vectors"):
    regions.cosine_similarity([[1.0, 2.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match=r"need vectors \[R, D\]"):
    regions.cosine_similarity(np.zeros(3))


def test_mantel_finds_planted_taste_in_projected_vectors():
  # Region vectors as a model might hold them: the planted prefs seen through a random linear
  # map into 32 dims, plus a little noise. Their similarity must track the planted one.
  rng = np.random.default_rng(0)
  w = _prefs(EIGHT)
  planted = regions.cosine_similarity(w)
  learned = w @ rng.normal(size=(6, 32)) + 0.05 * rng.normal(size=(8, 32))
  t = regions.mantel(regions.cosine_similarity(learned), planted, seed=0)
  assert t["r"] > 0.8 and t["p"] < 0.01
  assert t["n_pairs"] == 28 and not t["exact"] and t["permutations"] == 9999
  # The same vectors with the region labels shuffled, and unrelated vectors: no association.
  shuffled = regions.cosine_similarity(learned[rng.permutation(8)])
  assert regions.mantel(shuffled, planted, seed=0)["p"] > 0.05
  unrelated = regions.cosine_similarity(rng.normal(size=(8, 32)))
  assert regions.mantel(unrelated, planted, seed=0)["p"] > 0.05


def _brute_force_p(a, b):
  """The exact one-sided Mantel p by plain loops and np.corrcoef."""
  n = len(a)
  iu = np.triu_indices(n, 1)
  r0 = np.corrcoef(a[iu], b[iu])[0, 1]
  rs = [np.corrcoef(a[iu], b[np.ix_(p, p)][iu])[0, 1] for p in itertools.permutations(range(n))]
  return r0, np.mean(np.array(rs) >= r0 - 1e-12)


@pytest.mark.parametrize("n", [4, 5, 7])
def test_mantel_enumerates_all_relabellings_up_to_seven_regions(n):
  rng = np.random.default_rng(n)
  a = regions.cosine_similarity(rng.normal(size=(n, 3)))
  b = regions.cosine_similarity(rng.normal(size=(n, 3)) + 0.5 * rng.normal(size=(n, 3)))
  t = regions.mantel(a, b, permutations=10)  # `permutations` is unused when exact
  r0, p0 = _brute_force_p(a, b)
  assert t["exact"] and t["permutations"] == len(list(itertools.permutations(range(n))))
  assert t["n_pairs"] == n * (n - 1) // 2
  np.testing.assert_allclose([t["r"], t["p"]], [r0, p0], atol=1e-9)


def test_mantel_with_four_regions_bottoms_out_at_one_in_24():
  a = regions.cosine_similarity(_prefs(("global", "us", "kr", "br")))
  t = regions.mantel(a, a)
  assert t["r"] == pytest.approx(1.0)
  assert t["p"] == pytest.approx(1 / 24) and t["min_p"] == pytest.approx(1 / 24)
  assert "all 24 relabellings" in t["note"] and "1/24" in t["note"]
  # Eight regions: random relabellings, p = (1 + count) / (1 + permutations).
  b = regions.cosine_similarity(_prefs(EIGHT))
  t8 = regions.mantel(b, b, permutations=99, seed=3)
  assert not t8["exact"] and t8["p"] == pytest.approx(1 / 100)


def test_mantel_ignores_nan_pairs_and_names_bad_input():
  rng = np.random.default_rng(1)
  a = regions.cosine_similarity(rng.normal(size=(5, 3)))
  b = a.copy()
  b[0, 1] = b[1, 0] = np.nan
  t = regions.mantel(a, b)
  assert t["n_pairs"] == 9 and t["r"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r"two square matrices of one shape"):
    regions.mantel(a, a[:4, :4])
  with pytest.raises(ValueError, match=r"2 regions give 1 pair"):
    regions.mantel(np.eye(2), np.eye(2))


def test_decline_window_stops_at_a_second_wave():
  # Climb, peak at step 2, decline, then a second wave from step 6; row 2 leaves the chart.
  y = np.array([[10.0, 10.5, 11.0, 10.8, 10.5, 10.3, 10.9, 11.2],
                [12.0, 11.7, 11.4, 11.1, 10.8, 10.5, 10.2, 9.9],
                [12.0, 11.7, np.nan, 11.1, 10.8, 10.5, 10.2, 9.9]])
  mask = np.isfinite(y)
  win = regions.decline_window(y, mask)
  np.testing.assert_array_equal(win[0], [0, 0, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(win[1], np.ones(8))
  np.testing.assert_array_equal(win[2], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(regions.decline_window(y, mask, None), mask)
  pairs = {"song": np.array(["a", "b", "c"]), "region": np.array([0, 0, 1]), "series": y,
           "mask": mask, "regions": ["x", "y"]}
  songs, decay = regions.decay_rates(pairs)
  np.testing.assert_allclose(decay[:, 0], [0.24, 0.3, np.nan], atol=1e-9)
  assert np.isnan(decay[2, 1])  # two steps before the gap: too few for a slope


# ------------------------------------------------------------------------------------------------
# The data's decay curves against the planted taste (8 regions)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
  """(raw dir, rows) of a 400-song synthetic world with 8 regions (~20-40 s)."""
  from data_prep import build
  raw = str(tmp_path_factory.mktemp("raw8"))
  out = str(tmp_path_factory.mktemp("ds8"))
  synthetic.generate(raw, seed=0, n_songs=400, n_artists=100, regions=EIGHT, clip_seconds=5.5, fit_chart_oracle=False)
  build.build(build.BuildConfig(raw=raw, out=out, progress=False))
  return raw, rows.load(out, "train,val,test", with_audio=False)


def test_curve_similarity_recovers_planted_taste(eight):
  raw, pairs = eight
  planted = regions.planted_similarity(raw, pairs["regions"])
  curve, n_shared = regions.curve_similarity(pairs)
  np.testing.assert_allclose(np.diag(curve), 1.0)
  np.testing.assert_allclose(curve, curve.T)
  assert n_shared.min() >= 10 and np.isfinite(curve).all()
  t = regions.mantel(curve, planted, seed=0)
  # seed 0: r = 0.93, p = 1e-4 (the floor of 9999 relabellings)
  assert t["r"] > 0 and t["p"] < 0.05
  assert t["r"] > 0.7
  # The decline window keeps the second (TikTok) wave, shared by all regions, out of the
  # slopes: fitted on every observed step the similarities sit well above the planted ones
  # (seed 0: mean off-diagonal bias +0.18; in the window -0.02).
  iu = np.triu_indices(len(curve), 1)
  all_steps, _ = regions.curve_similarity(pairs, rise_tol=None)
  assert abs((curve - planted)[iu].mean()) < 0.08
  assert (all_steps - planted)[iu].mean() > 0.12
  # Too few shared songs: no estimate, the diagonal stays 1.
  sparse, _ = regions.curve_similarity(pairs, min_songs=10_000)
  assert np.isnan(sparse[iu]).all() and (np.diag(sparse) == 1).all()


def test_planted_similarity_needs_the_regions(eight, tmp_path):
  raw, pairs = eight
  sim = regions.planted_similarity(raw, ["kr", "global"])
  assert sim.shape == (2, 2) and sim[0, 1] == pytest.approx(
      regions.cosine_similarity(_prefs(("kr", "global")))[0, 1])
  with pytest.raises(ValueError, match=r"no planted prefs for region\(s\) \['zz'\]"):
    regions.planted_similarity(raw, ["kr", "zz"])
  assert regions.planted_similarity(str(tmp_path), ["kr"]) is None
  assert regions.planted_similarity(None, ["kr"]) is None


def test_run_without_a_model_writes_data_and_truth(eight, tmp_path):
  raw, pairs = eight
  res = regions.run(None, pairs, raw, str(tmp_path), log=lambda *a: None)
  assert set(res["matrices"]) == {"curve", "planted"}
  assert list(res["mantel"]) == ["curve vs planted"]
  assert res["mantel"]["curve vs planted"]["p"] < 0.05
  assert "Caveat" not in res["markdown"]  # 8 regions: random relabellings, no small-R caveat
  for name in ("regions.json", "regions.md", "regions_heatmap.png", "regions_dendrogram.png"):
    assert os.path.getsize(tmp_path / name) > 0


# ------------------------------------------------------------------------------------------------
# A tiny trained run, end to end
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A 1-block MP2 run (region CLS tokens) trained for 3 steps on a 3-region, 40-song dataset,
  with a copy of itself at RUN/mp2 standing in for an MP3 demo's encoder run."""
  data = tiny_dataset(tmp_path_factory)
  c = tiny_train(mp2_config.get_config("demo"), data)
  c.total_steps = 3
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(c, workdir)
  assert c.region_mode == "cls_token"
  os.makedirs(os.path.join(workdir, "mp2"))
  shutil.copy(os.path.join(workdir, "config.json"), os.path.join(workdir, "mp2"))
  shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(workdir, "mp2", "checkpoints"))
  with open(os.path.join(data, "manifest.json")) as f:
    raw = json.load(f)["provenance"]["build_args"]["raw"]
  return workdir, data, raw


def test_run_compares_the_learned_table(tiny_run, tmp_path):
  workdir, data, raw = tiny_run
  got = regions.learned_vectors(workdir)
  params = checkpoint.read_checkpoint_params(os.path.join(workdir, "checkpoints"))
  np.testing.assert_array_equal(got["table"], params["regions/table"])
  assert got["codes"] == ["global", "kr", "us"] and got["region_mode"] == "cls_token"
  assert got["step"] == 3

  pairs = rows.load(data, "train,val,test", with_audio=False)
  out = str(tmp_path / "out")
  res = regions.run(workdir, pairs, raw, out, log=lambda *a: None)
  for name in ("regions.json", "regions.md", "regions_heatmap.png", "regions_dendrogram.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, "regions.json")) as f:
    saved = json.load(f)
  assert saved["codes"] == pairs["regions"]
  want = regions.cosine_similarity(params["regions/table"])
  np.testing.assert_allclose(np.array(saved["matrices"]["learned"], float), want, atol=1e-6)
  np.testing.assert_allclose(np.array(saved["matrices"]["learned_mp2"], float), want, atol=1e-6)
  assert {"learned vs planted", "curve vs planted", "learned vs curve",
          "learned_mp2 vs planted"} <= set(saved["mantel"])
  lp = saved["mantel"]["learned vs planted"]
  assert lp["exact"] and lp["permutations"] == 6 and lp["n_pairs"] == 3
  md = res["markdown"]
  assert md.startswith("## Regions: which share taste")
  assert "Caveat: 3 regions: 3 pairs, all 6 relabellings" in md
  assert "](regions_heatmap.png)" in md and "](regions_dendrogram.png)" in md
  with open(os.path.join(out, "regions.md")) as f:
    assert f.read() == md


def test_runs_without_region_vectors_say_so(tiny_run, tmp_path, monkeypatch):
  workdir, _, _ = tiny_run
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  json.dump({**config, "region_mode": "none"}, open(tmp_path / "config.json", "w"))
  with pytest.raises(ValueError, match=r"region_mode is 'none' .* no learned region vectors"):
    regions.learned_vectors(str(tmp_path))
  real = checkpoint.read_checkpoint_params
  monkeypatch.setattr(checkpoint, "read_checkpoint_params", lambda *a, **k: {
      k_: v for k_, v in real(*a, **k).items() if not k_.startswith("regions/")})
  with pytest.raises(ValueError, match=r"step 3: no regions/table parameter"):
    regions.learned_vectors(workdir)
