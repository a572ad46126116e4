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


def test_probes_a_trained_run_end_to_end(tiny_run, tmp_path):
  workdir, data = tiny_run
  out = str(tmp_path / "probes")
  lines = []
  result = probes.run(workdir, split="train", out=out, seed=0, log=lines.append)
  for name in ("probes.json", "probes.md", "probes.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  saved = json.load(open(os.path.join(out, "probes.json")))
  assert saved["n"] == result["n"] > 20 and saved["folds"] == 5 and saved["seed"] == 0
  assert saved["split"] == "train" and saved["data_dir"] == os.path.abspath(data)
  # truth.json found through the manifest's build source (the raw dir is not DATA/../raw)
  assert saved["raw"] and os.path.exists(os.path.join(saved["raw"], "truth.json"))
  for a in probes.ATTRIBUTES:
    r2 = saved["targets"][a]["r2"]
    for rep in probes.REPRESENTATIONS:
      assert np.isfinite(r2[rep]), (a, rep)
    assert len(r2["trained_layers"]) == len(r2["random_layers"]) == saved["depth"] == 1
    assert saved["targets"][a]["n"] == saved["n"]
  assert "label/tiktok" in saved["targets"] or "label/tiktok" in saved["skipped"]
  params = checkpoint.read_checkpoint_params(os.path.join(workdir, "checkpoints"))
  assert saved["encoder_params_loaded"] == sum(k.startswith("encoder/") for k in params) > 10
  table = open(os.path.join(out, "probes.md")).read()
  assert all(f"| {a} |" in table for a in probes.ATTRIBUTES)
  assert any("embedded" in line for line in lines) and table.strip() in "\n".join(lines)
