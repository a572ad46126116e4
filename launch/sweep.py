"""Grid sweeps over `python -m mpjax.main`: one workdir per point, then a table over seeds.

Each --sweep=KEY=V1,V2,... is one grid axis (KEY is a config path: seed, region_mode, optim.lr,
model.depth ...); the grid is the cartesian product, in flag order. --set=KEY=VALUE fixes a value
for every point. Every override reaches mpjax.main as --config.KEY=VALUE. Each point runs into
ROOT/<name>, the name built from its overrides (e.g. ROOT/region_mode=cls_token,seed=0).

Run a grid here, one point after the other (3 x 3 = 9 runs):
  python launch/sweep.py --config=configs/mp2.py:demo --root=/tmp/sweep_regions \\
      --sweep=region_mode=cls_token,embedding,none --sweep=seed=0,1,2 --set=total_steps=100

  Before running it writes ROOT/sweep.json (the grid, each point's command, its status). Each
  point streams its output, after a `[sweep i/N name]` line, to the terminal and to
  ROOT/<name>/sweep.log. A point is finished when ROOT/<name>/final_metrics.json exists
  (mpjax.main writes it when the run completes); rerunning the same command skips finished
  points and resumes unfinished ones from their checkpoints. A failed point does not stop the
  others (unless --fail_fast); the sweep then exits non-zero, naming the failed points and logs.
  Afterwards it writes ROOT/results.csv (one row per point), ROOT/results.md (mean ± sample std
  over the seed axis for each combination of the other overrides; unfinished points are listed
  as missing) and ROOT/results.png, and prints the table. Metrics: --metrics=val/r2,test/r2
  (default for mp2 configs; val/mae,test/mae for mp3).

Only print the commands:      ... --dry_run
Tables again, from ROOT only:  python launch/sweep.py --root=/tmp/sweep_regions --collect_only
One point of ROOT/sweep.json:  python launch/sweep.py --root=/tmp/sweep_regions --run_index=4

SLURM: one job array task per point (each runs `launch/sweep.py --root=ROOT --run_index=I`);
resources as #SBATCH lines; collect when the array has finished:
  python launch/sweep.py --config=configs/mp2.py --root=/ckpt/sweep_lr --sweep=optim.lr=1e-4,3e-4 \\
      --sweep=seed=0,1 --set=data_dir=/data/mpjax --slurm \\
      --slurm_args='--partition=gpu --gres=gpu:8 --time=24:00:00' [--dry_run]
  python launch/sweep.py --root=/ckpt/sweep_lr --collect_only
For a point that spans several SLURM tasks (multi-host), add --launcher=srun: each point's
command then starts with `srun`, and mpjax.main initialises jax.distributed from SLURM.

Values may hold commas inside brackets or quotes: --sweep='optim.step_boundaries=(0.5,0.8),(0.6,0.9)'.
The sweep's config and --set values are fixed per ROOT: rerunning into ROOT with other ones is
refused (finished points would be skipped although they ran with other settings).
"""
import csv
import datetime
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys

from absl import app, flags

from mpjax import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL = "final_metrics.json"   # written by mpjax.main when a run completes all its steps
STATUS = "sweep_status.json"   # per point: the last attempt's status, exit code, times
LOG = "sweep.log"              # per point: the output of every attempt
DEFAULT_METRICS = {"mp2": ["val/r2", "test/r2"], "mp3": ["val/mae", "test/mae"]}

_CONFIG = flags.DEFINE_string("config", None, "Config for mpjax.main, e.g. configs/mp2.py:demo "
                              "(relative to the current directory or to the repository).")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,...: one grid axis (repeatable).")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE: a fixed override for every point "
                                 "(repeatable).")
_ROOT = flags.DEFINE_string("root", None, "Sweep directory: ROOT/<point name> per point.")
_METRICS = flags.DEFINE_list("metrics", None, "Metrics of final_metrics.json for the tables "
                             "(default: val/r2,test/r2 for mp2, val/mae,test/mae for mp3).")
_GROUP_OVER = flags.DEFINE_string("group_over", "seed", "The axis the tables average over.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs mpjax.main.")
_LAUNCHER = flags.DEFINE_string("launcher", "", "Prefix of each point's command, e.g. srun.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands; run and submit nothing.")
_FAIL_FAST = flags.DEFINE_bool("fail_fast", False, "Stop at the first failed point.")
_COLLECT_ONLY = flags.DEFINE_bool("collect_only", False, "Only write the results tables.")
_RUN_INDEX = flags.DEFINE_integer("run_index", None, "Run only this point of ROOT/sweep.json "
                                  "(what each SLURM array task does).")
_SLURM = flags.DEFINE_bool("slurm", False, "Write ROOT/sweep.sbatch (a job array, one task per "
                           "point) and submit it with sbatch instead of running here.")
_SLURM_ARGS = flags.DEFINE_string("slurm_args", "", "sbatch options, written as #SBATCH lines, "
                                  "e.g. '--partition=gpu --gres=gpu:8 --time=24:00:00'.")
_SLURM_MAX_PARALLEL = flags.DEFINE_integer("slurm_max_parallel", 0, "At most this many array "
                                           "tasks at once (--array=0-N%K); 0 = no limit.")


class FlagError(ValueError):
  """A flag the sweep cannot use; the message names it."""


class Interrupted(Exception):
  """SIGINT/SIGTERM reached the sweep while a point ran (forwarded to it; it checkpoints)."""


# ------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CLOSE = {"(": ")", "[": "]", "{": "}"}


def split_values(text: str) -> list[str]:
  """Splits at commas outside brackets and quotes: 'a,(1,2),"x,y"' -> ['a', '(1,2)', '"x,y"']."""
  out, cur, stack, quote = [], [], [], None
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in _CLOSE:
      stack.append(_CLOSE[ch])
    elif stack and ch == stack[-1]:
      stack.pop()
    elif ch == "," and not stack:
      out.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  if quote or stack:
    raise ValueError(f"unbalanced {'quote' if quote else 'brackets'}")
  out.append("".join(cur))
  return [v.strip() for v in out]


def _key_value(text: str, flag: str) -> tuple[str, str]:
  shown = f"--{flag}={text!r}"
  if "=" not in text:
    raise FlagError(f"{shown}: expected KEY=VALUE{',VALUE...' if flag == 'sweep' else ''}, "
                    "e.g. --sweep=seed=0,1,2 or --set=total_steps=100")
  key, value = (s.strip() for s in text.split("=", 1))
  if key.startswith("config."):
    raise FlagError(f"{shown}: give the config path without 'config.' (it is added): "
                    f"{key[len('config.'):]}=...")
  if not _KEY.match(key):
    raise FlagError(f"{shown}: {key!r} is not a config path like seed, region_mode or optim.lr")
  return key, value


def parse_axis(text: str) -> tuple[str, list[str]]:
  """'--sweep' value 'optim.lr=1e-4,3e-4' -> ('optim.lr', ['1e-4', '3e-4'])."""
  key, value = _key_value(text, "sweep")
  shown = f"--sweep={text!r}"
  try:
    values = split_values(value)
  except ValueError as e:
    raise FlagError(f"{shown}: {e}") from None
  if not value or any(v == "" for v in values):
    raise FlagError(f"{shown}: empty value (want {key}=V1,V2,...)")
  dup = sorted({v for v in values if values.count(v) > 1})
  if dup:
    raise FlagError(f"{shown}: value(s) {', '.join(dup)} given twice")
  return key, values


def parse_set(text: str) -> tuple[str, str]:
  """'--set' value 'total_steps=100' -> ('total_steps', '100'); the value is not split."""
  key, value = _key_value(text, "set")
  if value == "":
    raise FlagError(f"--set={text!r}: empty value")
  return key, value


def parse_flags(sweep: list[str], fixed: list[str]) -> tuple[dict, dict]:
  """(axes {key: [values]}, fixed {key: value}), both in flag order; a key at most once."""
  axes, sets, seen = {}, {}, {}
  for flag, texts, parse in (("sweep", sweep, parse_axis), ("set", fixed, parse_set)):
    for text in texts:
      key, value = parse(text)
      if key in seen:
        raise FlagError(f"--{flag}={text!r}: {key} is already given by {seen[key]}")
      seen[key] = f"--{flag}={text!r}"
      (axes if flag == "sweep" else sets)[key] = value
  return axes, sets


def expand_grid(axes: dict) -> list[dict]:
  """Cartesian product in flag order (the last axis varies fastest); [{}] without axes."""
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def safe_name(text: str) -> str:
  """Readable and filesystem-safe: letters, digits and ._=,+- kept, any other run -> '_'."""
  name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_")
  return ("_" + name) if name.startswith((".", "-")) else name


def point_names(grid: list[dict], max_len: int = 120) -> list[str]:
  """One directory name per point, from its overrides: 'region_mode=cls_token,seed=0'.

  Names that sanitising made equal, or longer than max_len, get a hash of the raw overrides."""
  raw = [",".join(f"{k}={v}" for k, v in o.items()) for o in grid]
  safe = [safe_name(r) or "default" for r in raw]
  names = [f"{n[:max_len - 9]}-{hashlib.sha1(r.encode()).hexdigest()[:8]}"
           if len(n) > max_len or safe.count(n) > 1 else n for r, n in zip(raw, safe)]
  if len(set(names)) != len(names):
    raise FlagError(f"--sweep: values give equal directory names: {names}")
  return names


def override_args(fixed: dict, overrides: dict) -> list[str]:
  """The mpjax.main flags: --set values first, then the point's own (the later flag wins)."""
  return [f"--config.{k}={v}" for k, v in list(fixed.items()) + list(overrides.items())]


def point_command(python: str, config: str, workdir: str, fixed: dict, overrides: dict,
                  launcher: str = "") -> list[str]:
  return (shlex.split(launcher) + [python, "-m", "mpjax.main", f"--config={config}",
                                   f"--workdir={workdir}"] + override_args(fixed, overrides))


def build_points(config: str, root: str, axes: dict, fixed: dict, python: str,
                 launcher: str = "") -> list[dict]:
  grid = expand_grid(axes)
  points = []
  for i, (overrides, name) in enumerate(zip(grid, point_names(grid))):
    workdir = os.path.join(root, name)
    points.append({"index": i, "name": name, "overrides": overrides, "workdir": workdir,
                   "command": point_command(python, config, workdir, fixed, overrides, launcher)})
  return points


# ------------------------------------------------------------------------------------------------
# The config (to check keys and to know the task)
# ------------------------------------------------------------------------------------------------


def resolve_config(spec: str, cwd: str | None = None) -> tuple[str, str, str | None]:
  """'configs/mp2.py:demo' -> (the --config value for mpjax.main run in REPO, file, argument).

  The file is looked up relative to cwd first, then to the repository."""
  path, arg = (spec.split(":", 1) + [None])[:2]
  cwd = cwd or os.getcwd()
  candidates = [path] if os.path.isabs(path) else [os.path.join(cwd, path), os.path.join(REPO, path)]
  found = next((os.path.abspath(p) for p in candidates if os.path.isfile(p)), None)
  if not found:
    raise FlagError(f"--config={spec!r}: no such file (looked for {' and '.join(candidates)})")
  rel = os.path.relpath(found, REPO)
  shown = found if rel.startswith("..") else rel
  return shown + (f":{arg}" if arg is not None else ""), found, arg


def load_config(spec: str):
  """The ConfigDict of 'configs/mp2.py[:arg]', as mpjax.main will see it (before overrides)."""
  _, path, arg = resolve_config(spec)
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # configs/mp3.py imports configs.mp2 and mpjax
  module_spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def check_keys(config, axes: dict, fixed: dict, spec: str) -> None:
  """Every override names a field of the config (a typo would fail every point, one by one)."""
  for flag, keys in (("sweep", axes), ("set", fixed)):
    for key in keys:
      node = config
      for part in key.split("."):
        try:
          has = part in node
        except TypeError:
          has = False
        if not has:
          raise FlagError(f"--{flag}={key}=...: the config {spec} has no field {key!r}")
        node = node[part]


# ------------------------------------------------------------------------------------------------
# sweep.json and the points' state
# ------------------------------------------------------------------------------------------------


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def write_json(path: str, obj) -> None:
  atomic.write_json(path, obj, indent=2)


def read_final(workdir: str) -> dict | None:
  """final_metrics.json ({'step': int, 'metrics': {...}}), or None while the point is unfinished."""
  path = os.path.join(workdir, FINAL)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      final = json.load(f)
    if not isinstance(final.get("metrics"), dict):
      raise ValueError("no 'metrics' dict")
    return final
  except (OSError, ValueError) as e:
    print(f"[sweep] warning: {path} is unreadable ({e}); the point counts as unfinished",
          flush=True)
    return None


def point_status(point: dict) -> str:
  """finished (final_metrics.json) | failed | incomplete | interrupted | running | pending."""
  if read_final(point["workdir"]) is not None:
    return "finished"
  try:
    with open(os.path.join(point["workdir"], STATUS)) as f:
      return json.load(f).get("status", "pending")
  except (OSError, ValueError):
    return "pending"


def make_spec(config: str, task: str, root: str, axes: dict, fixed: dict, python: str,
              launcher: str, group_over: str, metrics: list[str]) -> dict:
  return {"config": config, "task": task, "repo": REPO, "root": root, "axes": axes,
          "fixed": fixed, "group_over": group_over, "metrics": metrics, "python": python,
          "launcher": launcher,
          "points": build_points(config, root, axes, fixed, python, launcher)}


def read_spec(root: str) -> dict | None:
  path = os.path.join(root, "sweep.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_same_settings(old: dict, new: dict) -> None:
  """A ROOT holds one config and one set of --set values (points are named by axes only)."""
  diff = [f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in ("config", "fixed")
          if old.get(k) != new[k]]
  if diff:
    raise FlagError(f"--root={new['root']} already holds a sweep with other settings ("
                    f"{'; '.join(diff)}). Its finished points would be skipped although they ran "
                    "with those settings: use another --root.")


def save_spec(spec: dict) -> None:
  for p in spec["points"]:
    p["status"] = point_status(p)
  spec["updated"] = _now()
  write_json(os.path.join(spec["root"], "sweep.json"), spec)


# ------------------------------------------------------------------------------------------------
# Running a point
# ------------------------------------------------------------------------------------------------


def run_point(point: dict, i: int, n: int, env: dict | None = None) -> str:
  """Runs one point (unless finished) in REPO, streaming to the terminal and its sweep.log.

  Returns skipped | finished | failed | incomplete (exit 0 but no final_metrics.json) |
  interrupted (SIGINT/SIGTERM; forwarded to the run, which checkpoints)."""
  workdir, name = point["workdir"], point["name"]
  tag = f"[sweep {i + 1}/{n} {name}]"
  final = read_final(workdir)
  if final is not None:
    print(f"{tag} skip: finished (step {final.get('step')}, {os.path.join(workdir, FINAL)})",
          flush=True)
    return "skipped"
  os.makedirs(workdir, exist_ok=True)
  cmd = point["command"]
  resuming = os.path.isdir(os.path.join(workdir, "checkpoints"))
  print(f"{tag} {'resume' if resuming else 'run'}: {shlex.join(cmd)}", flush=True)
  env = dict(os.environ if env is None else env)
  env.setdefault("PYTHONUNBUFFERED", "1")
  log_path = os.path.join(workdir, LOG)
  record = {"status": "running", "started": _now(), "command": cmd, "log": log_path}
  write_json(os.path.join(workdir, STATUS), record)
  stop = {}
  with open(log_path, "ab") as log:
    log.write(f"=== {_now()} {tag} {shlex.join(cmd)}\n".encode())
    log.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def forward(signum, frame):  # SLURM preemption / Ctrl-C: the run checkpoints and stops
      del frame
      stop["signal"] = signum
      if proc.poll() is None:
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      while True:
        chunk = proc.stdout.read1(65536)
        if not chunk:
          break
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        log.write(chunk)
        log.flush()
      rc = proc.wait()
    finally:
      for s, h in old.items():
        signal.signal(s, h)
  if stop:
    status = "interrupted"
  elif rc != 0:
    status = "failed"
  elif read_final(workdir) is None:
    status = "incomplete"
  else:
    status = "finished"
  record.update(status=status, returncode=rc, ended=_now())
  write_json(os.path.join(workdir, STATUS), record)
  note = {"failed": f"exit code {rc}", "interrupted": f"signal {stop.get('signal')}",
          "incomplete": f"exit code 0 but no {FINAL} (stopped before the last step?)",
          "finished": "done"}[status]
  print(f"{tag} {status}: {note}; log {log_path}", flush=True)
  if stop:
    raise Interrupted(stop["signal"])
  return status


def run_sweep(spec: dict, fail_fast: bool = False, env: dict | None = None) -> dict:
  """Runs every point in order; returns {name: status}."""
  points, results = spec["points"], {}
  try:
    for i, point in enumerate(points):
      results[point["name"]] = run_point(point, i, len(points), env)
      save_spec(spec)
      if fail_fast and results[point["name"]] in ("failed", "incomplete"):
        print(f"[sweep] --fail_fast: stopping after {point['name']}", flush=True)
        break
  finally:
    save_spec(spec)
  return results


# ------------------------------------------------------------------------------------------------
# Results: CSV, markdown table over seeds, plot
# ------------------------------------------------------------------------------------------------


def collect(spec: dict) -> list[dict]:
  """One row per point: index, name, overrides, status, step, metrics (all of final_metrics)."""
  rows = []
  for p in spec["points"]:
    final = read_final(p["workdir"])
    rows.append({"index": p["index"], "name": p["name"], "overrides": p["overrides"],
                 "workdir": p["workdir"], "status": "finished" if final else point_status(p),
                 "step": final.get("step") if final else None,
                 "metrics": final["metrics"] if final else {}})
  return rows


def _number(v) -> float | None:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(v) else v


def aggregate(rows: list[dict], axis_keys: list[str], metrics: list[str],
              group_over: str = "seed") -> list[dict]:
  """Groups points by their overrides other than group_over; per metric mean, sample std, n.

  A group: {'overrides', 'seeds' (finished), 'missing' [(seed, status)], 'values'
  {metric: [(seed, value)]}, 'stats' {metric: (mean, std or None, n, n_nan)}}. Groups keep grid
  order; NaN values are left out of the statistics and counted in n_nan."""
  keys = [k for k in axis_keys if k != group_over]
  groups = {}
  for r in rows:
    gkey = tuple(r["overrides"].get(k) for k in keys)
    g = groups.setdefault(gkey, {"overrides": dict(zip(keys, gkey)), "seeds": [], "missing": [],
                                 "values": {m: [] for m in metrics}, "nan": {m: 0 for m in metrics}})
    seed = r["overrides"].get(group_over)
    if r["status"] != "finished":
      g["missing"].append((seed, r["status"]))
      continue
    g["seeds"].append(seed)
    for m in metrics:
      v = _number(r["metrics"].get(m))
      if v is None:
        g["nan"][m] += m in r["metrics"]
      else:
        g["values"][m].append((seed, v))
  for g in groups.values():
    g["stats"] = {}
    for m in metrics:
      vals = [v for _, v in g["values"][m]]
      mean = statistics.mean(vals) if vals else None
      std = statistics.stdev(vals) if len(vals) > 1 else None
      g["stats"][m] = (mean, std, len(vals), g["nan"][m])
    del g["nan"]
  return list(groups.values())


def fmt(v: float | None) -> str:
  if v is None:
    return "–"
  return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


def format_cell(mean, std, n, n_nan=0) -> str:
  """'0.1234 ± 0.0100 (n=2)'; std '–' when n=1; '–' when no value."""
  nan = f", {n_nan} nan" if n_nan else ""
  if n == 0:
    return f"– (n=0{nan})" if nan else "–"
  return f"{fmt(mean)} ± {fmt(std)} (n={n}{nan})"


def _seed_list(seeds) -> str:
  return ", ".join("–" if s is None else str(s) for s in seeds) or "–"


def results_markdown(spec: dict, rows: list[dict], metrics: list[str]) -> str:
  group_over = spec.get("group_over", "seed")
  axis_keys = list(spec["axes"])
  groups = aggregate(rows, axis_keys, metrics, group_over)
  keys = [k for k in axis_keys if k != group_over]
  n_done = sum(r["status"] == "finished" for r in rows)
  lines = [f"# Sweep {spec['root']}",
           "",
           f"Config `{spec['config']}`"
           + (", fixed " + ", ".join(f"`{k}={v}`" for k, v in spec["fixed"].items())
              if spec["fixed"] else "") + ".",
           f"{len(rows)} points: {n_done} finished, {len(rows) - n_done} missing. Each cell: mean "
           f"± sample std (ddof=1) over {group_over} (n = finished runs with a value).",
           ""]
  head = (keys or ["group"]) + [group_over + "s"] + metrics + ["missing"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in groups:
    cells = [str(g["overrides"][k]) for k in keys] or ["all"]
    cells.append(_seed_list(g["seeds"]))
    cells += [format_cell(*g["stats"][m]) for m in metrics]
    cells.append(", ".join(f"{group_over}={s} ({st})" if s is not None else st
                           for s, st in g["missing"]) or "–")
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  missing = [r for r in rows if r["status"] != "finished"]
  if missing:
    lines += ["", "Missing points (no final_metrics.json):"]
    lines += [f"- `{r['name']}`: {r['status']}" + ("" if r["status"] == "pending" else
                                                  f" ({os.path.join(r['workdir'], LOG)})")
              for r in missing]
  absent = [m for m in metrics if not any(m in r["metrics"] for r in rows)]
  if absent and n_done:
    lines += ["", f"No finished point reports {', '.join(absent)}; metrics there: "
              f"{', '.join(sorted({k for r in rows for k in r['metrics']})[:40])}"]
  return "\n".join(lines) + "\n"


def write_csv(path: str, spec: dict, rows: list[dict], metrics: list[str]) -> None:
  """Overrides, status, step, the chosen metrics, then every other metric of final_metrics."""
  others = sorted({k for r in rows for k in r["metrics"]} - set(metrics))
  keys = list(spec["axes"])
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["index", "name"] + keys + ["status", "step"] + metrics + others + ["workdir"])
    for r in rows:
      w.writerow([r["index"], r["name"]] + [r["overrides"].get(k, "") for k in keys]
                 + [r["status"], "" if r["step"] is None else r["step"]]
                 + [r["metrics"].get(m, "") for m in metrics + others] + [r["workdir"]])


def plot(path: str, spec: dict, rows: list[dict], metrics: list[str]) -> None:
  """One panel per metric: a bar per group (error bar = sample std), each run a dot."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  group_over = spec.get("group_over", "seed")
  groups = aggregate(rows, list(spec["axes"]), metrics, group_over)
  labels = ["\n".join(f"{k}={v}" for k, v in g["overrides"].items()) or "all" for g in groups]
  width = max(3.5, 0.9 * len(groups) + 1.5)
  fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.2), squeeze=False)
  for ax, m in zip(axes[0], metrics):
    x = list(range(len(groups)))
    means = [g["stats"][m][0] for g in groups]
    stds = [g["stats"][m][1] or 0.0 for g in groups]
    ax.bar(x, [math.nan if v is None else v for v in means], yerr=stds, capsize=4, alpha=0.55,
           color="tab:blue", ecolor="black")
    for xi, g in zip(x, groups):
      vals = g["values"][m]
      for j, (_, v) in enumerate(vals):
        ax.plot(xi + (j - (len(vals) - 1) / 2) * 0.08, v, "o", color="black", ms=4)
      if not vals:
        ax.text(xi, 0, "missing", ha="center", va="bottom", fontsize=8, color="tab:red")
    ax.axhline(0, color="grey", lw=0.5)
    ticks = [f"{label}\nn={g['stats'][m][2]}" + (f", {len(g['missing'])} missing"
                                                   if g["missing"] else "")
             for label, g in zip(labels, groups)]
    long = max(map(len, labels)) > 12
    ax.set_xticks(x)
    ax.set_xticklabels(ticks, rotation=30 if long else 0, ha="right" if long else "center",
                       fontsize=8)
    ax.set_title(m)
  fig.suptitle(f"{os.path.basename(spec['root'].rstrip('/'))}: mean ± std over {group_over}",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(spec: dict, metrics: list[str]) -> str:
  """results.csv, results.md, results.png in ROOT; returns the markdown."""
  root = spec["root"]
  rows = collect(spec)
  write_csv(os.path.join(root, "results.csv"), spec, rows, metrics)
  md = results_markdown(spec, rows, metrics)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(md)
  plot(os.path.join(root, "results.png"), spec, rows, metrics)
  return md


# ------------------------------------------------------------------------------------------------
# SLURM
# ------------------------------------------------------------------------------------------------


def sbatch_lines(slurm_args: str) -> list[str]:
  """'--partition=x --gres=gpu:8 -t 10:00' -> ['#SBATCH --partition=x', '#SBATCH --gres=gpu:8',
  '#SBATCH -t 10:00'] (a token not starting with '-' belongs to the option before it)."""
  opts = []
  for tok in shlex.split(slurm_args):
    if tok.startswith("-") or not opts:
      if not tok.startswith("-"):
        raise FlagError(f"--slurm_args={slurm_args!r}: {tok!r} is not an sbatch option")
      opts.append([tok])
    else:
      opts[-1].append(tok)
  return ["#SBATCH " + " ".join(shlex.quote(t) for t in o) for o in opts]


def slurm_script(spec: dict, slurm_args: str = "", max_parallel: int = 0) -> str:
  n = len(spec["points"])
  root = spec["root"]
  array = f"0-{n - 1}" + (f"%{max_parallel}" if max_parallel > 0 else "")
  sweep = os.path.join(REPO, "launch", "sweep.py")
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name=sweep-{safe_name(os.path.basename(root.rstrip('/')))[:40]}",
           f"#SBATCH --array={array}",
           f"#SBATCH --output={os.path.join(root, 'slurm-%A_%a.out')}",
           *sbatch_lines(slurm_args),
           "# One task per point of sweep.json (finished points are skipped). Written by",
           "# launch/sweep.py; afterwards: "
           f"{shlex.quote(spec['python'])} {shlex.quote(sweep)} --root={shlex.quote(root)} "
           "--collect_only",
           "set -euo pipefail",
           f"cd {shlex.quote(REPO)}",
           f"exec {shlex.quote(spec['python'])} {shlex.quote(sweep)} --root={shlex.quote(root)} "
           "--run_index=\"$SLURM_ARRAY_TASK_ID\"",
           ""]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def _spec_from_flags(root: str) -> dict:
  config, _, _ = resolve_config(_CONFIG.value)
  axes, fixed = parse_flags(_SWEEP.value, _SET.value)
  cfg = load_config(_CONFIG.value)
  check_keys(cfg, axes, fixed, _CONFIG.value)
  task = cfg.get("task")
  metrics = _METRICS.value or DEFAULT_METRICS.get(task)
  if not metrics:
    raise FlagError(f"--config={_CONFIG.value}: task {task!r} has no default metrics; "
                    "give --metrics")
  if _GROUP_OVER.value in fixed:
    print(f"[sweep] note: {_GROUP_OVER.value} is fixed by --set; every group has one run",
          flush=True)
  python = _PYTHON.value
  if os.sep in python:  # keep 'python3' (PATH) as is; a path made absolute (cwd is REPO)
    python = os.path.abspath(python)
  return make_spec(config, task, root, axes, fixed, python, _LAUNCHER.value, _GROUP_OVER.value,
                   metrics)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    _main()
  except FlagError as e:
    raise app.UsageError(str(e)) from None
  except Interrupted as e:
    print(f"[sweep] interrupted (signal {e.args[0]}); rerun the same command to resume",
          flush=True)
    sys.exit(128 + int(e.args[0]))


def _main():
  if not _ROOT.value:
    raise FlagError("--root is required")
  root = os.path.abspath(_ROOT.value)
  old = read_spec(root)
  grid_flags = bool(_CONFIG.value or _SWEEP.value or _SET.value)

  if _RUN_INDEX.value is not None:  # one point (a SLURM array task); sweep.json stays as is
    if grid_flags:
      raise FlagError("--run_index runs a point of ROOT/sweep.json: drop --config/--sweep/--set")
    if old is None:
      raise FlagError(f"--run_index: no sweep.json in --root={root}")
    n = len(old["points"])
    if not 0 <= _RUN_INDEX.value < n:
      raise FlagError(f"--run_index={_RUN_INDEX.value}: sweep.json has points 0..{n - 1}")
    status = run_point(old["points"][_RUN_INDEX.value], _RUN_INDEX.value, n)
    sys.exit(0 if status in ("finished", "skipped") else 1)

  if grid_flags:
    if not _CONFIG.value:
      raise FlagError("--config is required with --sweep/--set")
    spec = _spec_from_flags(root)
    if old is not None:
      check_same_settings(old, spec)
      spec["created"] = old.get("created")
  elif old is not None:
    spec = old
  else:
    raise FlagError(f"--config is required (no sweep.json in --root={root} to read the grid from)")
  spec.setdefault("created", _now())
  metrics = _METRICS.value or spec["metrics"]
  n = len(spec["points"])

  if _DRY_RUN.value and not _SLURM.value:
    print(f"[sweep] {n} points into {root} (dry run: nothing is written or run)")
    for i, p in enumerate(spec["points"]):
      print(f"[sweep {i + 1}/{n} {p['name']}] {point_status(p)}: {shlex.join(p['command'])}")
    return

  os.makedirs(root, exist_ok=True)
  save_spec(spec)

  if _SLURM.value:
    script = os.path.join(root, "sweep.sbatch")
    with open(script, "w") as f:
      f.write(slurm_script(spec, _SLURM_ARGS.value, _SLURM_MAX_PARALLEL.value))
    cmd = ["sbatch", script]
    print(f"[sweep] {n} points; job array script {script}")
    if _DRY_RUN.value:
      print(f"[sweep] dry run; submit with: {shlex.join(cmd)}")
    else:
      if shutil.which("sbatch") is None:
        raise FlagError(f"--slurm: sbatch is not on PATH; the script is {script}")
      subprocess.run(cmd, check=True)
    print(f"[sweep] when the array has finished: {shlex.quote(sys.argv[0])} "
          f"--root={shlex.quote(root)} --collect_only")
    return

  failed = {}
  if not _COLLECT_ONLY.value:
    print(f"[sweep] {n} points into {root} (config {spec['config']})", flush=True)
    results = run_sweep(spec, _FAIL_FAST.value)
    failed = {k: v for k, v in results.items() if v in ("failed", "incomplete", "interrupted")}
    counts = {s: list(results.values()).count(s) for s in ("finished", "skipped")}
    print(f"[sweep] {len(results)}/{n} points run: {counts['finished']} finished, "
          f"{counts['skipped']} skipped (finished before), {len(failed)} failed"
          + (f", {n - len(results)} not run (--fail_fast)" if len(results) < n else ""),
          flush=True)

  md = write_results(spec, metrics)
  print(md, flush=True)
  print(f"[sweep] wrote {', '.join(os.path.join(root, f) for f in ('results.csv', 'results.md', 'results.png'))}",
        flush=True)
  if failed:
    by_name = {p["name"]: p for p in spec["points"]}
    print("[sweep] FAILED points:", flush=True)
    for name, status in failed.items():
      print(f"  {name}: {status}; log {os.path.join(by_name[name]['workdir'], LOG)}", flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
