"""Several processes (jax.distributed over localhost, CPU collectives) train exactly as one does.

Each run is `launch/local.sh NPROC DEVICES python -m mpjax.main ...`: 2 processes x 4 CPU
devices against 1 process x 8 devices, so the mesh (8 devices, data-parallel) is the same and
only the process layout differs. What may differ is float32 summation order (a process's share
of the batch is interleaved, so devices hold other examples): losses, parameters and metrics
must agree to rounding, and everything that is not a float reduction (rows, records, baselines)
exactly.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from mpjax import checkpoint
from mpjax import distributed
from mpjax import records
from mpjax.input import pipeline

from fakes import tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH = 9, 8
# Relative tolerance for losses. Parameters: Adam's update g / sqrt(v) turns rounding in a
# near-zero gradient into up to a whole step (lr = 1e-3) for that element, so one element in
# hundreds may differ by a few 1e-5 after 9 steps (measured: 2.3e-5; e.g. the attention key
# bias, whose true gradient is 0). The median difference must stay at rounding level (a wrong
# batch or state moves every weight by ~lr).
RTOL, PARAM_ATOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = tiny_dataset(tmp_path_factory, n_songs=80, n_artists=16)
  n_train = json.load(open(os.path.join(out, "manifest.json")))["counts"]["train"]["records"]
  # The runs below cross an epoch boundary of an odd-sized split (global stream across epochs).
  assert STEPS * BATCH > n_train and n_train % 2, n_train
  return out


def launch(nproc, devices, workdir, data, config="configs/mp2.py:demo", *extra):
  """Runs mpjax.main through launch/local.sh; returns process 0's output and every log."""
  cmd = ["bash", os.path.join(ROOT, "launch", "local.sh"), str(nproc), str(devices),
         sys.executable, "-m", "mpjax.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.data_dir={data}", "--config.model.depth=1", "--config.model.input_tdim=64",
         f"--config.input.batch_size={BATCH}", f"--config.input.eval_batch_size={BATCH}",
         f"--config.total_steps={STEPS}", "--config.optim.warmup_steps=2",
         # constant after warmup: a run stopped early (total_steps=3) has the same schedule
         "--config.optim.schedule=constant", "--config.log_every=1", "--config.eval_every=3",
         "--config.checkpoint.every=3", "--config.checkpoint.use_async=False",
         "--config.tensorboard=False", *extra]
  logs = tempfile.mkdtemp(prefix=os.path.basename(workdir) + ".logs.", dir=os.path.dirname(workdir))
  env = dict(os.environ, MPJAX_LOG_DIR=logs, MPJAX_KILL_GRACE="3")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  ranks = {int(f[4:-4]): open(os.path.join(logs, f)).read() for f in os.listdir(logs)}
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + ranks.get(1, "")[-3000:]
  assert sorted(ranks) == list(range(nproc))
  return proc.stdout + proc.stderr, ranks


def losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert len(steps) == len(set(steps)), "metrics.jsonl written by more than one process"
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def final_metrics(workdir):
  return json.load(open(os.path.join(workdir, "final_metrics.json")))


def assert_params_close(a_dir, b_dir):
  a = checkpoint.read_checkpoint_params(os.path.join(a_dir, "checkpoints"))
  b = checkpoint.read_checkpoint_params(os.path.join(b_dir, "checkpoints"))
  assert a.keys() == b.keys() and a
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=PARAM_ATOL, err_msg=k)
    assert np.median(np.abs(a[k] - b[k])) < 1e-7, k


def assert_same_run(a_dir, b_dir, steps=range(1, STEPS + 1)):
  la, lb = losses(a_dir), losses(b_dir)
  np.testing.assert_allclose([la[s] for s in steps], [lb[s] for s in steps], rtol=RTOL)
  assert len({la[s] for s in steps}) > 1  # the losses are of different batches
  assert_params_close(a_dir, b_dir)
  ma, mb = final_metrics(a_dir), final_metrics(b_dir)
  assert ma["step"] == mb["step"] == STEPS
  assert ma["metrics"].keys() == mb["metrics"].keys()
  assert any({f"val/{m}", f"test/{m}"} <= ma["metrics"].keys() for m in ("r2", "mae", "loss"))
  for k, v in ma["metrics"].items():
    # Rounding-level parameter differences reach the metrics (R² near 0 amplifies them in
    # relative terms); a prediction paired with another record's target moves them by ~0.1.
    np.testing.assert_allclose(v, mb["metrics"][k], rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.fixture(scope="module")
def mp2_runs(data, tmp_path_factory):
  root = tmp_path_factory.mktemp("mp2")
  one, two = str(root / "one"), str(root / "two")
  out_one, _ = launch(1, 8, one, data)
  out_two, ranks = launch(2, 4, two, data)
  return {"one": one, "two": two, "out_two": out_two, "ranks_two": ranks, "root": root}


def test_two_processes_match_one_process_mp2(mp2_runs):
  assert "[process 0/2] 4 local / 8 global devices" in mp2_runs["out_two"]
  assert "[process 1/2] 4 local / 8 global devices" in mp2_runs["ranks_two"][1]
  assert "mesh {'data': 8, 'fsdp': 1} over 8 devices, 2 process(es)" in mp2_runs["out_two"]
  # Process 1 trains (it joins every step) but reports nothing.
  assert f"step {STEPS:6d}/{STEPS}" in mp2_runs["out_two"] and "step " not in mp2_runs["ranks_two"][1]
  assert_same_run(mp2_runs["one"], mp2_runs["two"])
  # Every val/test record is scored once, whatever the number of processes.
  for split in ("val", "test"):
    n = final_metrics(mp2_runs["two"])["metrics"][f"{split}/n"]
    assert n == final_metrics(mp2_runs["one"])["metrics"][f"{split}/n"] > 0


@pytest.mark.parametrize("first,then", [((2, 4), (1, 8)), ((1, 8), (2, 4))])
def test_checkpoint_resumes_on_another_process_count(mp2_runs, data, first, then):
  wd = str(mp2_runs["root"] / f"resume_{first[0]}to{then[0]}")
  launch(*first, wd, data, "configs/mp2.py:demo", "--config.total_steps=3")  # "killed" at 3
  out, _ = launch(*then, wd, data)
  assert "derived from step 3 (the checkpoint was written by another process count)" in out
  # Continues as the uninterrupted run with the second layout does: same batches, same state.
  assert_same_run(mp2_runs["one" if then[0] == 1 else "two"], wd)


def test_two_processes_match_one_process_mp3(data, tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  extra = ("--config.train_mp2_first=False", "--config.input.regions_per_example=2")
  launch(1, 8, one, data, "configs/mp3.py:demo", *extra)
  out, ranks = launch(2, 4, two, data, "configs/mp3.py:demo", *extra)
  assert "| band |" in out and "| band |" not in ranks[1]  # the report: process 0 prints it
  assert_same_run(one, two)
  # The demo's bundle: exported by the one-process run; the two-process run says how instead.
  assert os.path.exists(os.path.join(one, "bundle", "bundle.json"))
  assert not os.path.exists(os.path.join(two, "bundle"))
  assert f"python -m mpjax.export --workdir={two}" in out
  # The research report likewise: written by the one-process run, the command printed otherwise.
  assert "## H: debut from extrinsic factors" in open(os.path.join(one, "analysis", "report.md")).read()
  assert not os.path.exists(os.path.join(two, "analysis"))
  assert f"python -m mpjax.analysis --workdir={two}" in out
  a = np.load(os.path.join(one, "forecast", "predictions.npz"))
  b = np.load(os.path.join(two, "forecast", "predictions.npz"))
  assert a.files == b.files
  for k in a.files:  # rows in record order: inputs and baselines exact, the model to rounding
    if k == "pred":
      np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=1e-5)
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  sa = json.load(open(os.path.join(one, "forecast", "summary.json")))
  sb = json.load(open(os.path.join(two, "forecast", "summary.json")))
  assert sa.keys() == sb.keys() and "mp3" in sa
  for name in sa:
    for k, v in sa[name].items():
      np.testing.assert_allclose(v, sb[name][k], rtol=RTOL, err_msg=f"{name}/{k}")


def test_two_processes_match_one_process_ssl(data, tmp_path):
  """SSL: masks drawn inside the sharded step, the val/test metrics gathered from both."""
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  launch(1, 8, one, data, "configs/ssl.py:demo")
  out, ranks = launch(2, 4, two, data, "configs/ssl.py:demo")
  assert "test       9  loss" in out and "test       9" not in ranks[1]
  assert_same_run(one, two)


# ------------------------------------------------------------------------------------------------
# The pieces, in one process
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_at_is_the_state_after_that_many_batches(data, workers):
  cfg = {"batch_size": 8, "input_tdim": 64, "workers": workers}
  after = iter(pipeline.make_dataset(data, "train", cfg=cfg, seed=3, train=True,
                                     process_index=1, process_count=2))
  for _ in range(3):
    next(after)
  fresh = iter(pipeline.make_dataset(data, "train", cfg=cfg, seed=3, train=True,
                                     process_index=1, process_count=2))
  state = pipeline.iterator_state_at(fresh, 3, local_batch=4)
  assert state == after.get_state()
  fresh.set_state(state)
  a, b = next(fresh), next(after)
  np.testing.assert_array_equal(a["record"], b["record"])
  np.testing.assert_array_equal(a["fbank"], b["fbank"])


def test_iterator_state_at_rejects_an_unknown_layout():
  class Odd:
    def get_state(self):
      return {"something": 1}
  with pytest.raises(ValueError, match=r"cannot place this Grain iterator at batch 3"):
    pipeline.iterator_state_at(Odd(), 3, 4)


def test_target_stats_from_records_match_the_manifest(data, tmp_path):
  manifest = records.load_manifest(data)
  stats = manifest["target_stats"]
  assert stats["mp2_pairs"] > 0 and stats["series_steps"] > 0
  old = dict(manifest)
  del old["target_stats"]  # a dataset built before target_stats existed
  recomputed = records.target_stats(data, old)
  for k in ("mp2_mean", "series_mean"):
    np.testing.assert_allclose(recomputed[k], stats[k], rtol=1e-6)
  assert recomputed["mp2_pairs"] == stats["mp2_pairs"]
  # Not the mean of a batch: every finite training target counts.
  assert 10 < stats["mp2_mean"] < 20


def test_distributed_settings():
  settings = lambda mode="auto", c=None, n=None, i=None, env=None: distributed.settings(
      mode, c, n, i, env=env or {})
  assert settings() is None  # nothing asks for it: one process
  assert settings("on") == {}  # forced: JAX's cluster auto-detection
  assert settings("off", "h:1", 2, 0) is None
  assert settings(c="h:1234", n=2, i=1) == {"coordinator_address": "h:1234", "num_processes": 2,
                                            "process_id": 1}
  with pytest.raises(ValueError, match="num_processes, process_id missing"):
    settings(c="h:1234")
  with pytest.raises(ValueError, match=r"process_id=2 not in \[0, 2\)"):
    settings(c="h:1", n=2, i=2)
  assert settings(env={"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16"}) == {}
  assert settings(env={"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}) is None
  assert settings(env={"OMPI_COMM_WORLD_SIZE": "4"}) == {}
  assert settings(env={"TPU_WORKER_HOSTNAMES": "a,b"}) == {}
  assert settings(env={"TPU_WORKER_HOSTNAMES": "a"}) is None


def test_distributed_settings_from_env(monkeypatch):
  monkeypatch.setenv("MPJAX_COORDINATOR_ADDRESS", "localhost:9")
  monkeypatch.setenv("MPJAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("MPJAX_PROCESS_ID", "1")
  assert distributed.settings("auto", None, None, None) == {
      "coordinator_address": "localhost:9", "num_processes": 2, "process_id": 1}
  # Flags win over the environment.
  assert distributed.settings("auto", "other:1", 4, 3)["process_id"] == 3
  monkeypatch.setenv("MPJAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match=r"\$MPJAX_NUM_PROCESSES='two' is not an integer"):
    distributed.settings("auto", None, None, None)


def _pid_of(process_id: int, workdir: str) -> int | None:
  """The pid of mpjax.main process `process_id` running into `workdir` (from /proc)."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
      environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
      continue
    if (f"--workdir={workdir}".encode() in cmdline and b"mpjax.main" in cmdline
        and f"MPJAX_PROCESS_ID={process_id}".encode() in environ):
      return int(pid)
  return None


def test_sigterm_to_one_process_checkpoints_every_process_at_one_step(data, tmp_path):
  """A preempted host gets SIGTERM, the others do not: all save the same step and exit 0."""
  import signal
  import time
  wd = str(tmp_path / "run")
  logs = str(tmp_path / "logs")
  cmd = ["bash", os.path.join(ROOT, "launch", "local.sh"), "2", "4", sys.executable, "-m",
         "mpjax.main", "--config=configs/mp2.py:demo", f"--workdir={wd}",
         f"--config.data_dir={data}", "--config.model.depth=1", "--config.model.input_tdim=64",
         "--config.input.batch_size=8", "--config.total_steps=100000", "--config.log_every=1",
         "--config.checkpoint.every=100000", "--config.eval_every=100000",
         "--config.tensorboard=False"]
  env = dict(os.environ, MPJAX_LOG_DIR=logs, MPJAX_KILL_GRACE="3")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out, deadline = [], time.time() + 300
  for line in proc.stdout:
    out.append(line)
    if line.startswith("step") and " 3/" in line:
      pid = _pid_of(1, wd)
      assert pid is not None
      os.kill(pid, signal.SIGTERM)  # process 1 only
      break
    assert time.time() < deadline, "".join(out[-20:])
  rest, _ = proc.communicate(timeout=300)
  text = "".join(out) + rest
  rank1 = open(os.path.join(logs, "rank1.log")).read()
  assert proc.returncode == 0, text[-3000:] + rank1[-3000:]
  saved = [int(l.split("step ")[1].split(";")[0]) for l in (text + rank1).splitlines()
           if l.startswith("SIGTERM: checkpoint saved at step")]
  assert len(saved) == 2 and saved[0] == saved[1] >= 3, saved
  ck = checkpoint.Checkpointer(os.path.join(wd, "checkpoints"))
  assert ck.latest_step() == saved[0]
  ck.close()
