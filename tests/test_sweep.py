"""launch/sweep.py: grid, names, overrides, flag errors, tables over seeds; runs with a fake
trainer (seconds) and one real MP2 demo sweep end to end (4 tiny runs, about a minute)."""
import csv
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_PY = os.path.join(REPO, "launch", "sweep.py")

_spec = importlib.util.spec_from_file_location("launch_sweep", SWEEP_PY)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

GRID = ["region_mode=cls_token,none", "seed=0,1"]
NAMES = ["region_mode=cls_token,seed=0", "region_mode=cls_token,seed=1",
         "region_mode=none,seed=0", "region_mode=none,seed=1"]


def run_cli(*args, cwd=None, env=None, timeout=600):
  """sweep.py as a subprocess (JAX on CPU, the rest of the environment passed through)."""
  env = dict(os.environ if env is None else env, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, SWEEP_PY, *args], cwd=cwd or REPO, env=env,
                     capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stdout, p.stderr


# ------------------------------------------------------------------------------------------------
# Grid, names, overrides
# ------------------------------------------------------------------------------------------------


def test_grid_2x2_in_flag_order_with_names_and_commands(tmp_path):
  axes, fixed = sweep.parse_flags(GRID, ["total_steps=2", "optim.lr=1e-4"])
  assert axes == {"region_mode": ["cls_token", "none"], "seed": ["0", "1"]}
  assert fixed == {"total_steps": "2", "optim.lr": "1e-4"}
  grid = sweep.expand_grid(axes)
  assert grid == [{"region_mode": "cls_token", "seed": "0"}, {"region_mode": "cls_token", "seed": "1"},
                  {"region_mode": "none", "seed": "0"}, {"region_mode": "none", "seed": "1"}]
  assert sweep.point_names(grid) == NAMES
  root = str(tmp_path)
  points = sweep.build_points("configs/mp2.py:demo", root, axes, fixed, "PY")
  assert [p["index"] for p in points] == [0, 1, 2, 3]
  assert [p["workdir"] for p in points] == [os.path.join(root, n) for n in NAMES]
  assert points[2]["command"] == [
      "PY", "-m", "mpjax.main", "--config=configs/mp2.py:demo",
      f"--workdir={os.path.join(root, NAMES[2])}", "--config.total_steps=2",
      "--config.optim.lr=1e-4", "--config.region_mode=none", "--config.seed=0"]
  assert sweep.expand_grid({}) == [{}] and sweep.point_names([{}]) == ["default"]


def test_override_formatting_and_value_splitting():
  # --set values first, then the point's own: on the mpjax.main command line the later flag wins.
  assert sweep.override_args({"model.depth": "1"}, {"optim.lr": "3e-4", "seed": "2"}) == [
      "--config.model.depth=1", "--config.optim.lr=3e-4", "--config.seed=2"]
  cmd = sweep.point_command("python3", "configs/mp3.py", "/w", {}, {"seed": "1"}, launcher="srun -l")
  assert cmd == ["srun", "-l", "python3", "-m", "mpjax.main", "--config=configs/mp3.py",
                 "--workdir=/w", "--config.seed=1"]
  # Commas inside brackets or quotes stay inside one value; a --set value is never split.
  assert sweep.split_values("a, (1,2),[3,4],'x,y'") == ["a", "(1,2)", "[3,4]", "'x,y'"]
  assert sweep.parse_axis("optim.step_boundaries=(0.5,0.8),(0.6,0.9)") == (
      "optim.step_boundaries", ["(0.5,0.8)", "(0.6,0.9)"])
  assert sweep.parse_set("optim.step_boundaries=(0.5,0.8)") == ("optim.step_boundaries", "(0.5,0.8)")


def test_names_are_filesystem_safe_readable_and_unique():
  grid = [{"data_dir": "/data/a b", "seed": "0"}, {"data_dir": "/data/a_b", "seed": "0"},
          {"init_from": "x" * 300}, {"mesh": "[('data',-1)]"}, {"tag": "..hidden"}]
  names = sweep.point_names(grid)
  assert len(set(names)) == len(names)
  for n in names:
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._=,+-]*", n), n
    assert len(n) <= 120 and "/" not in n
  assert names[0].startswith("data_dir=_data_a_b,seed=0-")  # collided with names[1]: hashed
  assert names[1].startswith("data_dir=_data_a_b,seed=0-") and names[0] != names[1]
  assert names[3] == "mesh=_data_,-1" and names[4] == "tag=..hidden"


@pytest.mark.parametrize("sweeps,sets,needle", [
    (["seed"], [], "--sweep='seed'"),                              # no '='
    (["seed="], [], "--sweep='seed='"),                            # no values
    (["seed=0,,1"], [], "--sweep='seed=0,,1'"),                    # an empty value
    (["seed=0,1,0"], [], "given twice"),                           # a repeated value
    (["seed=0,1", "seed=2"], [], "--sweep='seed=2'"),              # a key twice
    (["seed=0,1"], ["seed=3"], "--set='seed=3'"),                  # swept and fixed
    (["config.seed=0,1"], [], "without 'config.'"),
    (["optim..lr=1"], [], "--sweep='optim..lr=1'"),
    (["optim.step_boundaries=(0.5,0.8"], [], "unbalanced"),
    ([], ["total_steps="], "--set='total_steps='"),
    ([], ["total_steps"], "--set='total_steps'"),
])
def test_bad_flags_raise_naming_the_flag(sweeps, sets, needle):
  with pytest.raises(sweep.FlagError, match=re.escape(needle)):
    sweep.parse_flags(sweeps, sets)


def test_config_keys_checked_and_task_read(tmp_path, monkeypatch):
  cfg = sweep.load_config("configs/mp2.py:demo")
  assert cfg.task == "mp2"
  sweep.check_keys(cfg, {"optim.lr": ["1"], "seed": ["0"]}, {"augment.specaug.freq_width": "8"},
                   "configs/mp2.py:demo")
  with pytest.raises(sweep.FlagError, match=r"--sweep=optim\.lrr=.*no field 'optim\.lrr'"):
    sweep.check_keys(cfg, {"optim.lrr": ["1"]}, {}, "configs/mp2.py:demo")
  with pytest.raises(sweep.FlagError, match=r"--set=seed\.x=.*no field"):
    sweep.check_keys(cfg, {}, {"seed.x": "1"}, "configs/mp2.py:demo")
  assert sweep.load_config("configs/mp3.py:demo").task == "mp3"
  # Relative to the repository when called from elsewhere; passed on relative to it.
  monkeypatch.chdir(tmp_path)
  assert sweep.resolve_config("configs/mp2.py:demo")[0] == "configs/mp2.py:demo"
  with pytest.raises(sweep.FlagError, match="--config='configs/nope.py'"):
    sweep.resolve_config("configs/nope.py")


# ------------------------------------------------------------------------------------------------
# Tables from fake final_metrics.json files
# ------------------------------------------------------------------------------------------------


def fake_spec(root, axes, fixed=None, metrics=("val/r2", "test/r2")):
  return sweep.make_spec("configs/mp2.py:demo", "mp2", str(root), axes, fixed or {}, "python", "",
                         "seed", list(metrics))


def write_final(workdir, metrics, step=300):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
    json.dump({"step": step, "metrics": metrics}, f)


def test_table_mean_std_over_seeds_and_missing_points(tmp_path):
  spec = fake_spec(tmp_path, {"region_mode": ["cls_token", "none"], "seed": ["0", "1", "2"]})
  vals = {("cls_token", "0"): 0.1, ("cls_token", "1"): 0.2, ("cls_token", "2"): 0.3,
          ("none", "0"): 0.05}
  for p in spec["points"]:
    key = (p["overrides"]["region_mode"], p["overrides"]["seed"])
    if key in vals:
      write_final(p["workdir"], {"val/r2": vals[key], "test/r2": 2 * vals[key], "val/mse": 1.0,
                                 "test/spearman": float("nan")})
  # ('none', '1') failed; ('none', '2') never ran.
  fail_dir = os.path.join(str(tmp_path), "region_mode=none,seed=1")
  os.makedirs(fail_dir)
  sweep.write_json(os.path.join(fail_dir, sweep.STATUS), {"status": "failed", "returncode": 1})

  rows = sweep.collect(spec)
  assert [r["status"] for r in rows] == ["finished"] * 4 + ["failed", "pending"]
  groups = sweep.aggregate(rows, ["region_mode", "seed"], ["val/r2", "test/r2", "test/spearman"])
  assert [g["overrides"] for g in groups] == [{"region_mode": "cls_token"}, {"region_mode": "none"}]
  cls, none = groups
  assert cls["seeds"] == ["0", "1", "2"] and cls["missing"] == []
  mean, std, n, n_nan = cls["stats"]["val/r2"]
  assert n == 3 and n_nan == 0
  assert mean == pytest.approx(0.2) and std == pytest.approx(statistics.stdev([0.1, 0.2, 0.3]))
  assert std == pytest.approx(0.1)  # sample std (ddof=1), not the population std (0.0816)
  assert cls["stats"]["test/r2"][:3] == (pytest.approx(0.4), pytest.approx(0.2), 3)
  assert cls["stats"]["test/spearman"] == (None, None, 0, 3)  # NaNs counted, not averaged
  assert none["seeds"] == ["0"] and none["missing"] == [("1", "failed"), ("2", "pending")]
  assert none["stats"]["val/r2"] == (pytest.approx(0.05), None, 1, 0)

  md = sweep.write_results(spec, ["val/r2", "test/r2"])
  assert md == (tmp_path / "results.md").read_text()
  table = [l for l in md.splitlines() if l.startswith("| ")]
  assert table[0] == "| region_mode | seeds | val/r2 | test/r2 | missing |"
  assert table[1] == "| cls_token | 0, 1, 2 | 0.2000 ± 0.1000 (n=3) | 0.4000 ± 0.2000 (n=3) | – |"
  assert table[2] == ("| none | 0 | 0.0500 ± – (n=1) | 0.1000 ± – (n=1) | "
                      "seed=1 (failed), seed=2 (pending) |")
  assert "`region_mode=none,seed=1`: failed" in md and "`region_mode=none,seed=2`: pending" in md
  assert "6 points: 4 finished, 2 missing" in md

  with open(tmp_path / "results.csv") as f:
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == 6
  assert list(csv_rows[0])[:8] == ["index", "name", "region_mode", "seed", "status", "step",
                                   "val/r2", "test/r2"]
  assert {"val/mse", "test/spearman", "workdir"} <= set(csv_rows[0])
  assert csv_rows[1]["seed"] == "1" and float(csv_rows[1]["val/r2"]) == 0.2
  assert csv_rows[4]["status"] == "failed" and csv_rows[4]["val/r2"] == ""
  assert (tmp_path / "results.png").stat().st_size > 5000


def test_table_without_a_seed_axis_has_one_run_per_group(tmp_path):
  spec = fake_spec(tmp_path, {"optim.lr": ["1e-4", "3e-4"]}, metrics=["val/mae"])
  write_final(spec["points"][0]["workdir"], {"val/mae": 0.5})
  md = sweep.results_markdown(spec, sweep.collect(spec), ["val/mae"])
  assert "| 1e-4 | – | 0.5000 ± – (n=1) | – |" in md
  assert "| 3e-4 | – | – | pending |" in md


def test_slurm_script_is_a_job_array_of_run_index(tmp_path):
  spec = fake_spec(tmp_path, {"region_mode": ["cls_token", "none"], "seed": ["0", "1"]})
  text = sweep.slurm_script(spec, "--partition=gpu --gres=gpu:8 -t 10:00:00", max_parallel=2)
  lines = text.splitlines()
  assert lines[0] == "#!/bin/bash"
  assert "#SBATCH --array=0-3%2" in lines
  assert {"#SBATCH --partition=gpu", "#SBATCH --gres=gpu:8", "#SBATCH -t 10:00:00"} <= set(lines)
  assert lines[-1].endswith(f"launch/sweep.py --root={tmp_path} --run_index=\"$SLURM_ARRAY_TASK_ID\"")
  with pytest.raises(sweep.FlagError, match="--slurm_args"):
    sweep.sbatch_lines("gpu")


# ------------------------------------------------------------------------------------------------
# The command line with a fake trainer: run, skip, fail, resume, --run_index, --slurm --dry_run
# ------------------------------------------------------------------------------------------------

FAKE_TRAINER = textwrap.dedent("""\
    import json, os, sys
    assert sys.argv[1:3] == ["-m", "mpjax.main"], sys.argv
    assert os.path.isdir("mpjax") and os.path.isdir("configs"), os.getcwd()  # runs in the repo
    args = dict(a[2:].split("=", 1) for a in sys.argv[3:])
    work = args["workdir"]
    with open(os.path.join(work, "calls.txt"), "a") as f:
      f.write(" ".join(sys.argv[3:]) + "\\n")
    print("fake training", args.get("config.region_mode"), args.get("config.seed"), flush=True)
    if args.get("config.region_mode") == "bad":
      sys.exit(3)
    r2 = {"cls_token": 0.3, "none": 0.1}[args["config.region_mode"]] + 0.01 * int(args["config.seed"])
    with open(os.path.join(work, "final_metrics.json"), "w") as f:
      json.dump({"step": int(args.get("config.total_steps", 7)),
                 "metrics": {"val/r2": r2, "test/r2": r2 / 2, "val/mse": 1.0}}, f)
    """)


@pytest.fixture
def fake_python(tmp_path):
  """A '--python' that runs FAKE_TRAINER instead of `python -m mpjax.main`."""
  script = tmp_path / "fake_trainer.py"
  script.write_text(FAKE_TRAINER)
  exe = tmp_path / "fakepython"
  exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
  exe.chmod(0o755)
  return str(exe)


def test_cli_runs_skips_and_reports_failures(tmp_path, fake_python):
  root = tmp_path / "sw"
  args = ["--config=configs/mp2.py:demo", "--sweep=region_mode=cls_token,bad,none",
          "--sweep=seed=0,1", f"--root={root}", "--set=total_steps=5", f"--python={fake_python}"]
  rc, out, err = run_cli(*args, cwd=str(tmp_path))  # called from outside the repository
  assert rc == 1, out + err
  assert "[sweep 1/6 region_mode=cls_token,seed=0] run:" in out
  assert "fake training cls_token 0" in out  # streamed to the terminal
  bad = ["region_mode=bad,seed=0", "region_mode=bad,seed=1"]
  for name in bad:  # the summary names the failed points and their logs; the others ran
    assert f"{name}: failed; log {root / name / 'sweep.log'}" in out
    assert "fake training bad" in (root / name / "sweep.log").read_text()
  spec = json.loads((root / "sweep.json").read_text())
  assert [p["status"] for p in spec["points"]] == ["finished", "finished", "failed", "failed",
                                                   "finished", "finished"]
  assert spec["points"][0]["command"][-3:] == ["--config.total_steps=5",
                                               "--config.region_mode=cls_token", "--config.seed=0"]
  md = (root / "results.md").read_text()
  assert "| cls_token | 0, 1 | 0.3050 ± 0.0071 (n=2)" in md
  assert "| bad | – | – | – | seed=0 (failed), seed=1 (failed) |" in md
  with open(root / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == 6

  # Rerun: finished points are skipped, failed ones retried.
  rc, out, _ = run_cli(*args)
  assert rc == 1
  assert out.count("] skip: finished") == 4 and out.count("] run:") == 2
  assert len((root / "region_mode=none,seed=1" / "calls.txt").read_text().splitlines()) == 1
  # --run_index runs exactly that point (a SLURM array task); the table is collected later.
  os.remove(root / "region_mode=none,seed=1" / "final_metrics.json")
  rc, out, _ = run_cli(f"--root={root}", "--run_index=5")
  assert rc == 0 and "[sweep 6/6 region_mode=none,seed=1] run:" in out and "] skip:" not in out
  assert len((root / "region_mode=none,seed=1" / "calls.txt").read_text().splitlines()) == 2
  rc, out, _ = run_cli(f"--root={root}", "--run_index=2")
  assert rc == 1
  rc, out, _ = run_cli(f"--root={root}", "--collect_only")
  assert rc == 0 and "| none | 0, 1 | 0.1050 ± 0.0071 (n=2)" in out and "] run:" not in out

  # --fail_fast: stops after the first failed point; the rest are reported as not run.
  rc, out, _ = run_cli("--config=configs/mp2.py:demo", "--sweep=region_mode=bad,none",
                       "--sweep=seed=0", f"--root={tmp_path / 'ff'}", f"--python={fake_python}",
                       "--fail_fast")
  assert rc == 1 and out.count("] run:") == 1 and "1 not run (--fail_fast)" in out
  assert "| none | – | – | – | seed=0 (pending) |" in out

  # Other --set values into the same root: refused, naming the difference.
  rc, out, err = run_cli(*args[:-2], "--set=total_steps=6", f"--python={fake_python}")
  assert rc != 0 and "already holds a sweep with other settings" in err


def test_cli_flag_errors_dry_run_and_slurm_dry_run(tmp_path, fake_python):
  rc, out, err = run_cli("--config=configs/mp2.py:demo", "--sweep=seed=0,,1", f"--root={tmp_path}")
  assert rc != 0 and "--sweep='seed=0,,1': empty value" in err
  rc, out, err = run_cli("--config=configs/mp2.py:demo", "--sweep=optim.lrr=1,2",
                         f"--root={tmp_path}")
  assert rc != 0 and "no field 'optim.lrr'" in err
  rc, out, err = run_cli(f"--root={tmp_path / 'empty'}", "--collect_only")
  assert rc != 0 and "--config is required" in err

  base = ["--config=configs/mp3.py:demo", "--sweep=optim.lr=1e-4,3e-4", "--sweep=seed=0,1"]
  rc, out, _ = run_cli(*base, f"--root={tmp_path / 'dry'}", "--dry_run")
  assert rc == 0 and out.count("--config=configs/mp3.py:demo") == 4
  assert not (tmp_path / "dry").exists()  # a dry run writes nothing

  root = tmp_path / "slurm"
  rc, out, _ = run_cli(*base, f"--root={root}", "--slurm", "--dry_run",
                       "--slurm_args=--partition=gpu --gres=gpu:8")
  assert rc == 0 and f"sbatch {root / 'sweep.sbatch'}" in out
  script = (root / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:8" in script
  spec = json.loads((root / "sweep.json").read_text())
  assert spec["task"] == "mp3" and spec["metrics"] == ["val/mae", "test/mae"]
  assert [p["status"] for p in spec["points"]] == ["pending"] * 4


# ------------------------------------------------------------------------------------------------
# End to end: the MP2 demo, 2 x 2 tiny real runs
# ------------------------------------------------------------------------------------------------

TINY = ["total_steps=2", "log_every=1", "eval_every=2", "checkpoint.every=2", "model.depth=1",
        "optim.warmup_steps=1",  # must be < total_steps (train.check_config)
        # input.input_tdim is a FieldReference to model.input_tdim (configs/mp2.py): one flag
        # sets both (checked by hand in config.json); the second keeps the intent explicit.
        "model.input_tdim=128", "input.input_tdim=128", "tensorboard=False"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from data_prep import synthetic
  raw = str(tmp_path_factory.mktemp("sweep_raw"))
  data = str(tmp_path_factory.mktemp("sweep_data"))
  synthetic.make_demo(raw, data, n_songs=40, progress=False)
  return data


def test_end_to_end_mp2_demo_sweep_skips_and_reruns(tmp_path, tiny_data):
  root = tmp_path / "sweep"
  args = ["--config=configs/mp2.py:demo", *[f"--sweep={s}" for s in GRID], f"--root={root}",
          *[f"--set={s}" for s in TINY], f"--set=data_dir={tiny_data}"]
  env = dict(os.environ)  # one CPU device per run, not conftest's 8 fake ones (~1/3 less CPU)
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  rc, out, err = run_cli(*args, env=env)
  assert rc == 0, out[-3000:] + err[-3000:]
  finals = [root / n / "final_metrics.json" for n in NAMES]
  assert all(f.exists() for f in finals), out[-3000:]
  for n, f in zip(NAMES, finals):
    final = json.loads(f.read_text())
    assert final["step"] == 2
    assert {"val/r2", "test/r2"} <= set(final["metrics"])
    config = json.loads((root / n / "config.json").read_text())
    assert config["input"]["input_tdim"] == 128 and config["model"]["depth"] == 1
    assert config["region_mode"] == n.split(",")[0].split("=")[1]
    log = (root / n / "sweep.log").read_text()
    assert "[sweep " in log and "eval " in log  # the header line and the run's own output
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
  md = (root / "results.md").read_text()
  groups = [l for l in md.splitlines() if l.startswith("| cls_token |") or l.startswith("| none |")]
  assert len(groups) == 2
  assert all(l.count("(n=2)") == 2 and "| 0, 1 |" in l for l in groups), md
  assert md.strip() in out  # the table is printed
  assert (root / "results.png").exists()
  mtimes = [f.stat().st_mtime_ns for f in finals]

  rc, out, _ = run_cli(*args, env=env)  # everything finished: all four skipped
  assert rc == 0 and out.count("] skip:") == 4 and "] run:" not in out and "] resume:" not in out
  assert [f.stat().st_mtime_ns for f in finals] == mtimes

  os.remove(finals[1])  # only that point runs again (resumed from its checkpoints)
  rc, out, err = run_cli(*args, env=env)
  assert rc == 0, out[-3000:] + err[-3000:]
  assert out.count("] skip:") == 3
  assert re.search(rf"\[sweep 2/4 {re.escape(NAMES[1])}\] (run|resume):", out)
  assert finals[1].exists()
  assert [f.stat().st_mtime_ns for i, f in enumerate(finals) if i != 1] == mtimes[:1] + mtimes[2:]
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert all(r["status"] == "finished" and r["test/r2"] != "" for r in rows)
  # The rerun point reports the same metrics as a full run: val too, though its checkpoint was
  # already at the last step (the train loop then runs no step, so no val eval, unless
  # train.py evaluates val for final_metrics.json in that case).
  assert rows[1]["val/r2"] != "", (
      f"{finals[1]} of a run resumed at its last step lacks val metrics: "
      f"{sorted(json.loads(finals[1].read_text())['metrics'])[:8]}...")
