"""Linear probes: the probe recovers planted signal, grouping stops leaks, encoder features match
the AST, and a tiny trained run is probed end to end."""
import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import mp2 as mp2_config
from mpjax import checkpoint, train
from mpjax.analysis import probes
from mpjax.models import ast as ast_lib
from mpjax.models import ast_weights

from fakes import tiny_dataset, tiny_train


def test_probe_recovers_planted_linear_attribute():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 20))
  y = x @ rng.normal(size=20) + 0.1 * rng.normal(size=200)
  real = probes.probe_r2(x, y, folds=5, seed=0)
  shuffled = probes.probe_r2(x, rng.permutation(y), folds=5, seed=0)
  assert real > 0.95
  assert shuffled < 0.1 and shuffled < real - 0.8


def test_groups_keep_duplicates_on_one_side():
  # Each song's clip twice (identical rows); the target is pure per-song noise. Split by row,
  # the probe memorises a song from its twin on the other side; split by song, it cannot.
  rng = np.random.default_rng(1)
  x = np.repeat(rng.normal(size=(60, 150)), 2, axis=0)
  y = np.repeat(rng.normal(size=60), 2)
  songs = np.repeat(np.arange(60), 2)
  grouped = probes.probe_r2(x, y, groups=songs, seed=0)
  leaky = probes.probe_r2(x, y, seed=0)
  # (A twin in the same test fold is not memorised: 1 - 1/folds of the rows leak.)
  assert grouped < 0.1
  assert leaky > 0.5 and leaky > grouped + 0.5


def _duplicated_noise(n_songs=60, clips=3, dim=150, seed=3):
  """Each song's clip `clips` times (near-identical rows), the target pure per-song noise."""
  rng = np.random.default_rng(seed)
  x = np.repeat(rng.normal(size=(n_songs, dim)), clips, axis=0)
  x += 0.01 * rng.normal(size=x.shape)
  y = np.repeat(rng.normal(size=n_songs), clips)
  return x, y, np.repeat(np.arange(n_songs), clips)


def test_learning_curve_does_not_leak_duplicate_clips():
  # Split by clip, a song's twin in the training folds gives its target away (the leaky R² is
  # high); the curve's song-grouped CV and whole-song draws keep R² at about 0 at every size.
  x, y, songs = _duplicated_noise()
  leaky = probes.probe_r2(x, y, seed=0)
  assert leaky > 0.5
  curve = probes.learning_curve({"noise": x}, y[:, None], ["target"], songs, sizes=(60, 120),
                                repeats=2, folds=5, seed=0)
  means = curve["r2"]["target"]["noise"]["mean"]
  assert len(means) == 3 and means[-1] < 0.1 and max(means) < 0.25 and max(means) < leaky - 0.5


def test_subsample_songs_takes_whole_songs():
  _, _, songs = _duplicated_noise(n_songs=40)
  rows = probes.subsample_songs(songs, 31, np.random.default_rng(0))
  assert 31 <= len(rows) < 31 + 3
  for s in np.unique(songs[rows]):
    assert (songs[rows] == s).sum() == 3
  assert len(probes.subsample_songs(songs, 10_000, np.random.default_rng(0))) == len(songs)


def test_learning_curve_has_the_sizes_asked_for():
  # 200 songs, 1-2 clips each; two representations: one holds the planted attribute, one not.
  rng = np.random.default_rng(4)
  songs = np.repeat(np.arange(200), rng.integers(1, 3, size=200))
  n = len(songs)
  signal = rng.normal(size=(200, 8))[songs]
  y = np.stack([signal @ rng.normal(size=8), (signal[:, 0] > 0).astype(float)], 1)
  y[:, 0] += 0.5 * rng.normal(size=n)
  lines = []
  curve = probes.learning_curve({"good": signal, "bad": rng.normal(size=(n, 8))}, y,
                                ["tempo", "mode"], songs, sizes=(5, 40, 80, 160, 10_000),
                                repeats=3, folds=5, seed=0, log=lines.append)
  assert curve["sizes"] == [40, 80, 160, n] and curve["repeats"] == [3, 3, 3, 1]
  assert curve["requested"] == [5, 40, 80, 160, 10_000]
  assert any(d.startswith("5: ") for d in curve["dropped"])
  assert any(d.startswith("10000: ") for d in curve["dropped"])
  for size, mean_n in zip(curve["sizes"], curve["n"]):
    assert size <= mean_n < size + 2
  for rep in ("good", "bad"):
    for t in ("tempo", "mode"):
      s = curve["r2"][t][rep]
      assert [len(r) for r in s["runs"]] == [3, 3, 3, 1] and len(s["mean"]) == 4
  good, bad = curve["r2"]["tempo"]["good"]["mean"], curve["r2"]["tempo"]["bad"]["mean"]
  assert good[-1] > 0.7 and max(bad) < 0.1 and good[-1] >= good[0] - 0.02
  acc = curve["accuracy"]["mode"]
  assert set(acc) == {"good", "bad", "majority"} and "tempo" not in curve["accuracy"]
  assert acc["good"]["mean"][-1] > 0.9 and 0.5 <= acc["majority"] < 0.6
  assert len(lines) == 3 * 3 + 1 and "size 40" in lines[0]


def test_oracle_features_from_truth_detect(tmp_path):
  truth = {"songs": [{"song_id": f"s{i}", "detect": {"mode": i % 2, "tempo": 0.1 * i}}
                     for i in range(4)] + [{"song_id": "s4"}]}
  truth["songs"][3]["detect"]["tempo"] = None  # a feature the rule could not measure
  (tmp_path / "truth.json").write_text(json.dumps(truth))
  x, info = probes.oracle_features(str(tmp_path), ["s1", "s0", "s1"])
  assert info["available"] and info["features"] == ["tempo", "mode"]  # ATTRIBUTES order
  np.testing.assert_allclose(x, [[0.1, 1], [0.0, 0], [0.1, 1]])
  assert info["imputed"] == 0 and info["message"] is None
  x, info = probes.oracle_features(str(tmp_path), ["s3", "s2", "s0"])
  np.testing.assert_allclose(x, [[0.1, 1], [0.2, 0], [0.0, 0]])  # None -> mean of 0.2 and 0
  assert info["imputed"] == 1
  x, info = probes.oracle_features(str(tmp_path), ["s0", "s4"])
  assert x is None and not info["available"]
  assert info["message"].startswith("no oracle features in truth.json for 1 of the 2 songs")
  (tmp_path / "truth.json").write_text(json.dumps({"songs": [{"song_id": "s0"}]}))
  x, info = probes.oracle_features(str(tmp_path), ["s0"])
  assert x is None and info["message"] == "no oracle features in truth.json"


@pytest.mark.parametrize("call,match", [
    (lambda: probes.probe_r2(np.zeros((8, 3)), np.arange(8.0)), r"too few rows \(8\) for 5 folds"),
    (lambda: probes.probe_r2(np.random.randn(40, 3), np.arange(40.0), groups=np.arange(40) % 6),
     r"too few groups \(songs\): 6 over 40 rows"),
    (lambda: probes.probe_r2(np.random.randn(40, 3), np.ones(40)), r"target is constant"),
])
def test_probe_errors_name_the_problem(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def _ast_with(cfg, flat):
  """An AST of `cfg` holding the per-layer parameters `flat` {path: array} (stacked for scan),
  without compiling an initialiser."""
  flat = ast_weights.stack_blocks(flat) if cfg.scan else flat
  graphdef, state = nnx.split(nnx.eval_shape(lambda: ast_lib.AST(cfg, rngs=nnx.Rngs(0))))
  leaves = [(p, v.replace(jnp.asarray(flat["/".join(map(str, p))])))
            for p, v in nnx.to_flat_state(state)]
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def test_encoder_features_match_the_ast_scanned_or_not():
  cfg = ast_lib.ASTConfig(hidden=32, depth=3, heads=2, mlp_dim=64, fstride=16, tstride=16,
                          input_fdim=32, input_tdim=48, attention="xla")
  rng = np.random.default_rng(0)
  shapes = nnx.state(nnx.eval_shape(lambda: ast_lib.AST(cfg, rngs=nnx.Rngs(0))))
  flat = {"/".join(map(str, p)): rng.normal(0, 0.2, v.get_value().shape).astype(np.float32)
          for p, v in nnx.to_flat_state(shapes)}
  model = _ast_with(cfg, flat)
  fbank = jnp.asarray(rng.normal(size=(2, 48, 32)), jnp.float32)
  want_pooled, want_tokens = nnx.jit(lambda m, x: (m(x), m.encode(x)))(model, fbank)
  pooled, layers = probes._embed(*nnx.split(model), fbank)
  assert layers.shape == (2, 3, 32)
  np.testing.assert_allclose(pooled, want_pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers[:, -1], want_tokens[:, 2:].mean(1), rtol=1e-5, atol=1e-5)
  # The earlier layers against the blocks applied one by one, here.
  x = model.embed(fbank)
  for i, blk in enumerate(model.blocks[:-1]):
    x = blk(x)
    np.testing.assert_allclose(layers[:, i], x[:, 2:].mean(1), rtol=1e-4, atol=1e-5)
  scanned = _ast_with(dataclasses.replace(cfg, scan=True), flat)
  pooled_s, layers_s = probes._embed(*nnx.split(scanned), fbank)
  np.testing.assert_allclose(pooled_s, pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers_s, layers, rtol=1e-5, atol=1e-5)


def test_mp3_run_without_audio_has_no_encoder():
  config = ml_collections.ConfigDict({"task": "mp3", "mp3": {"audio": False}})
  with pytest.raises(ValueError, match=r"RUNDIR: an MP3 run with mp3.audio=False has no audio"):
    probes.load_encoders("RUNDIR", config, 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A 1-block MP2 run trained for 3 steps on a 40-song synthetic dataset."""
  data = tiny_dataset(tmp_path_factory)
  c = tiny_train(mp2_config.get_config("demo"), data)
  c.total_steps = 3
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(c, workdir)
  return workdir, data


def test_run_errors_name_the_thing(tiny_run, tmp_path):
  workdir, data = tiny_run
  with pytest.raises(FileNotFoundError, match=r"config.json not found"):
    probes.run(str(tmp_path))
  config = json.load(open(os.path.join(workdir, "config.json")))
  json.dump(config, open(tmp_path / "config.json", "w"))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints"):
    probes.run(str(tmp_path))
  with pytest.raises(ValueError, match=r"split 'nope': .* has splits \['test', 'train', 'val'\]"):
    probes.run(workdir, split="nope")
  with pytest.raises(ValueError, match=r"split 'test' of .*: 1 records of 1 songs, too few for "
                     r"5-fold probes"):
    probes.run(workdir, split="test")
  with pytest.raises(FileNotFoundError, match=r"--raw=.*: no truth.json"):
    probes.run(workdir, split="train", raw=str(tmp_path))


def _raw_copy(data, tmp_path, edit):
  """A raw directory holding only the dataset's truth.json, changed in place by `edit`."""
  manifest = json.load(open(os.path.join(data, "manifest.json")))
  truth = json.load(open(os.path.join(manifest["provenance"]["build_args"]["raw"], "truth.json")))
  edit(truth)
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "truth.json").write_text(json.dumps(truth))
  return str(raw)


def _no_detect(truth):
  truth.pop("detectability", None)
  for s in truth["songs"]:
    s.pop("detect", None)


def test_probes_a_trained_run_end_to_end(tiny_run, tmp_path):
  workdir, data = tiny_run
  # By default truth.json is found through the manifest's build source (the raw dir is not
  # DATA/../raw); here a copy without 'detect' features stands in for an older world's.
  manifest = json.load(open(os.path.join(data, "manifest.json")))
  assert probes.find_raw(data, manifest, None) == manifest["provenance"]["build_args"]["raw"]
  raw = _raw_copy(data, tmp_path, _no_detect)
  out = str(tmp_path / "probes")
  lines = []
  result = probes.run(workdir, raw=raw, out=out, seed=0, log=lines.append, curve_sizes=(12, 24),
                      repeats=2)
  for name in ("probes.json", "probes.md", "probes.png", "probes_curves.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  saved = json.load(open(os.path.join(out, "probes.json")))
  # The default probe set is every split of the run's dataset.
  assert saved["split"] == "all" and saved["splits"] == ["train", "val", "test"]
  assert saved["n"] == saved["clips"] == result["n"] == sum(
      c["records"] for c in manifest["counts"].values()) > 30
  assert saved["folds"] == 5 and saved["seed"] == 0 and not saved["enough_clips"]
  assert saved["data_dir"] == os.path.abspath(data) and saved["raw"] == raw
  for a in probes.ATTRIBUTES:
    r2 = saved["targets"][a]["r2"]
    for rep in probes.REPRESENTATIONS:
      assert np.isfinite(r2[rep]), (a, rep)
    assert probes.ORACLE not in r2
    assert len(r2["trained_layers"]) == len(r2["random_layers"]) == saved["depth"] == 1
    assert saved["targets"][a]["n"] == saved["n"]
  assert 0 <= saved["targets"]["mode"]["accuracy"]["fbank"] <= 1
  assert "label/tiktok" in saved["targets"] or "label/tiktok" in saved["skipped"]
  params = checkpoint.read_checkpoint_params(os.path.join(workdir, "checkpoints"))
  assert saved["encoder_params_loaded"] == sum(k.startswith("encoder/") for k in params) > 10
  # No 'detect' in this truth.json: the oracle is skipped, and the output says so.
  assert saved["oracle"]["available"] is False
  assert saved["oracle"]["message"] == "no oracle features in truth.json"
  curve = saved["curve"]
  assert curve["sizes"] == [12, 24, saved["n"]] and curve["repeats"] == [2, 2, 1]
  assert set(curve["r2"]) == set(probes.ATTRIBUTES)
  assert set(curve["r2"]["tempo"]) == {"trained", "random", "fbank"}
  # The whole-set point is the whole-set probe of the feature the curve names.
  for a in probes.ATTRIBUTES:
    feat = curve["features"][a]["trained"]
    want = saved["targets"][a]["r2"]["trained" if feat == "pooled" else "trained_layers"]
    want = want if feat == "pooled" else want[int(feat[1:]) - 1]
    assert curve["r2"][a]["trained"]["mean"][-1] == pytest.approx(want, abs=1e-6)
    assert saved["at_largest"][a]["fbank"]["of_oracle"] is None
  assert "accuracy" in saved["at_largest"]["mode"]["fbank"]
  table = open(os.path.join(out, "probes.md")).read()
  assert all(f"| {a} |" in table for a in probes.ATTRIBUTES)
  assert f"**{saved['n']} clips**" in table and "Fewer than 1,000 clips" in table
  assert "no oracle features in truth.json" in table and "## Learning curves" in table
  assert any("embedded" in line for line in lines) and table.strip() in "\n".join(lines)
  assert any("curve: size 12" in line for line in lines)


def test_oracle_representation_from_truth_detect(tiny_run, tmp_path):
  # A copy of the run's truth.json with 'detect' features (the planted attribute plus a little
  # noise): the oracle joins every probe and the curves, and nears R² 1 on each attribute.
  workdir, data = tiny_run
  rng = np.random.default_rng(0)

  def add_detect(truth):
    for s in truth["songs"]:
      s["detect"] = {a: s["attributes_u"][a] + 0.02 * rng.normal() for a in probes.ATTRIBUTES}
    truth["detectability"] = {"tempo": {"feature": "onset_bpm", "r2": 0.9, "n": 40}}

  raw = _raw_copy(data, tmp_path, add_detect)
  result = probes.run(workdir, raw=raw, out=str(tmp_path / "out"), curve_sizes=(20,),
                      repeats=1, log=lambda *_: None)
  assert result["oracle"]["available"] and result["oracle"]["features"] == list(probes.ATTRIBUTES)
  assert result["oracle"]["detectability"]["tempo"]["feature"] == "onset_bpm"
  assert result["dims"][probes.ORACLE] == 6
  for a in probes.ATTRIBUTES:
    assert result["targets"][a]["r2"][probes.ORACLE] > 0.9
    assert result["curve"]["r2"][a][probes.ORACLE]["mean"][-1] > 0.9
    largest = result["at_largest"][a]
    assert largest[probes.ORACLE]["of_oracle"] == pytest.approx(1.0)
    assert largest["fbank"]["of_oracle"] == pytest.approx(
        largest["fbank"]["r2"] / largest[probes.ORACLE]["r2"])
  assert result["at_largest"]["mode"][probes.ORACLE]["accuracy"] > 0.95
  table = open(tmp_path / "out" / "probes.md").read()
  assert "Oracle: truth.json's detect features (tempo, brightness" in table
  assert "| attribute | trained | random | fbank | oracle |" in table
  assert "tempo: onset_bpm R² 0.900, n 40" in table
