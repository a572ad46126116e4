"""MP2 training: config errors, sharded == single device, overfitting, exact resume."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import mp2 as mp2_config
from mpjax import checkpoint, train
from mpjax.models import factory
from mpjax.input import pipeline

from fakes import tiny_dataset, tiny_train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return tiny_dataset(tmp_path_factory)


def tiny_config(data, **over):
  c = tiny_train(mp2_config.get_config("demo"), data)
  for k, v in over.items():
    target = c
    *parents, leaf = k.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = v
  return c


def final_params(workdir):
  ck = os.path.join(workdir, "checkpoints")
  return checkpoint.read_checkpoint_params(ck)


def losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.parametrize("field,value,match", [
    ("region_mode", "token", r"config\.region_mode: 'token'"),
    ("optim.lr", -1e-3, r"config\.optim\.lr: -0\.001 must be > 0"),
    ("model.input_tdim", 8, r"config\.model\.input_tdim: 8 frames is shorter than one 16-frame patch"),
    ("optim.schedule", "linear", r"config\.optim\.schedule"),
    ("task", "mp4", r"config\.task: 'mp4': choose one of \('mp2', 'mp3', 'ssl'\)"),
])
def test_bad_config_fails_at_start(data, tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(data, **{field: value}), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_the_loop_never_asks_which_task_it_runs():
  """Task-specific code lives in mpjax.tasks; the loop reads config.task nowhere."""
  import inspect
  assert "config.task" not in inspect.getsource(train)
  assert "config[\"task\"]" not in inspect.getsource(train)


def test_resume_is_bit_identical(data, tmp_path):
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  train.train_and_evaluate(tiny_config(data), full)
  # "Killed" after the step-3 checkpoint, then restarted with the same config.
  train.train_and_evaluate(tiny_config(data, total_steps=3), part)
  train.train_and_evaluate(tiny_config(data), part)
  a, b = final_params(full), final_params(part)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  la, lb = losses(full), losses(part)
  assert [la[s] for s in (4, 5, 6)] == [lb[s] for s in (4, 5, 6)]  # same data order after resume
  assert len(set(la.values())) > 1


def test_sharded_mesh_matches_one_device(data, tmp_path):
  assert len(jax.devices()) == 8
  one = tiny_config(data, num_devices=1, total_steps=3, mesh=[("data", 1), ("fsdp", 1)])
  sharded = tiny_config(data, total_steps=3, mesh=[("data", 4), ("fsdp", 2)])
  train.train_and_evaluate(one, str(tmp_path / "one"))
  train.train_and_evaluate(sharded, str(tmp_path / "sharded"))
  a, b = final_params(str(tmp_path / "one")), final_params(str(tmp_path / "sharded"))
  # float32 reductions run in another order. Adam divides by sqrt(v), which amplifies those
  # rounding differences for near-zero gradients: allow 2e-5 absolute (2% of one Adam step at
  # lr 1e-3) per element, and require the average difference to be at rounding level.
  # (Measured worst element, attn/proj/kernel: 8e-6; mean difference 7e-10.)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=2e-5, err_msg=k)
    assert np.abs(a[k] - b[k]).mean() < 1e-7, k
  la, lb = losses(str(tmp_path / "one")), losses(str(tmp_path / "sharded"))
  np.testing.assert_allclose([la[s] for s in (1, 2, 3)], [lb[s] for s in (1, 2, 3)], rtol=1e-5)


def test_overfits_a_tiny_batch(data):
  c = tiny_config(data)
  c.optim.lr = 3e-3
  c.total_steps = 60
  cfg = factory.model_config(c)
  manifest = json.load(open(os.path.join(data, "manifest.json")))
  assert factory.mp2_targets(c) == ("mp2", "longevity")  # both heads learn the one batch
  model = factory.build_model(c, manifest, seed=0, head_bias=[15.0, 0.0])
  graphdef, params = nnx.split(model, nnx.Param)
  tx = train.make_optimizer(c, params, cfg.depth)
  step, _ = train.make_steps(graphdef, tx, None, c)
  step = jax.jit(step)
  batch = next(iter(pipeline.make_dataset(data, "train", cfg=c.input, seed=0, train=False)))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  first = None
  for _ in range(60):
    state, out = step(state, batch)
    first = first if first is not None else float(out["loss"])
  assert float(out["loss"]) < 0.05 * first


def test_nan_guard_stops_and_keeps_last_good_checkpoint(data, tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(data, total_steps=3), wd)
  poisoned = tiny_config(data)
  poisoned.input.fbank_std = 1e-300  # normalised inputs overflow float32: inf, then NaN
  with pytest.raises(train.TrainingDiverged, match=r"non-finite (loss nan|loss inf|gradient norm) .*the last good checkpoint is step 3"):
    train.train_and_evaluate(poisoned, wd)
  ck = checkpoint.Checkpointer(os.path.join(wd, "checkpoints"))
  assert ck.latest_step() == 3
  ck.close()
  assert all(np.isfinite(v).all() for v in final_params(wd).values())


def test_sigterm_saves_a_checkpoint_and_exits_zero(data, tmp_path):
  import subprocess
  import sys
  import time
  wd = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "mpjax.main", "--config=configs/mp2.py:demo", f"--workdir={wd}",
         f"--config.data_dir={data}", "--config.model.depth=1", "--config.model.input_tdim=64",
         "--config.input.batch_size=8", "--config.total_steps=100000", "--config.log_every=1",
         "--config.checkpoint.every=100000", "--config.eval_every=100000"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = []
  deadline = time.time() + 240
  for line in proc.stdout:
    out.append(line)
    if line.startswith("step") and " 3/" in line:
      proc.terminate()  # SIGTERM, as a preempting scheduler sends it
      break
    assert time.time() < deadline, "".join(out[-20:])
  rest, _ = proc.communicate(timeout=120)
  text = "".join(out) + rest
  assert proc.returncode == 0, text[-3000:]
  assert "SIGTERM: checkpoint saved at step" in text
  ck = checkpoint.Checkpointer(os.path.join(wd, "checkpoints"))
  assert ck.latest_step() is not None and ck.latest_step() >= 3
  ck.close()


def test_metrics_rows_are_unique_after_a_kill_and_resume(data, tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(data), wd)  # checkpoints at 3 and 6, test rows at 6
  # As if killed -9 after logging steps 4..6 (and the test) but before the step-6 checkpoint
  # was committed, in the middle of writing a line.
  import shutil
  shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 6, "train/lo')
  train.train_and_evaluate(tiny_config(data), wd)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  seen = [(r["step"], k) for r in rows for k in r if k != "step"]
  assert len(seen) == len(set(seen)), sorted(s for s in seen if seen.count(s) > 1)[:5]
  assert sorted(r["step"] for r in rows if "train/loss" in r) == [1, 2, 3, 4, 5, 6]
  assert sum("test/r2" in r for r in rows) == 1
