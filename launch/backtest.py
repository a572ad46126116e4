"""Rolling-origin backtest of MP3 on real chart data against every baseline.

    python launch/backtest.py --raw=RAW --workdir=W \
        --cutoffs=2025-09-01,2025-10-01,2025-11-01,2025-12-01,2026-01-01 [--seeds=0,1,2] \
        [--config=configs/mp3.py:kworb] [--set=total_steps=1200 ...] [--test_days=0]

For each cutoff C: `data_prep.build --chart-only --cutoff C` builds W/C/data (train and val see
only chart dates before C, val = first debuts in the 28 days before C - horizon; test = songs
first charting from C up to the next cutoff, or C + test_days when set or for the last cutoff:
30 days), then one `python -m mpjax.main` run per seed trains MP3 into W/C/seed<S> and scores
its last step and every baseline on the test songs (`mpjax.forecast.report`: the baselines are
fitted on the same train split; the quantile bands are calibrated on val). Nothing is chosen on
the test songs: the config is fixed before, and the val split serves calibration. Finished pieces are
skipped, so rerunning the command resumes.

Then every method forecasts the same rolling-origin windows of each cutoff's test songs (from
the weekly origins `mp3.eval_origins` after the debut: 0, 7, 14, 21 days in the kworb config;
`mpjax.backtest.cutoff_forecasts`: the baselines, statsforecast, LightGBM, MP3 per seed and the
MP3 ensemble, all fitted on MP3's training windows, chosen and calibrated on val) into
W/C/windows.npz, and the pooled cutoffs give W/windows.md and W/windows.json (MAE/window with
paired song-bootstrap CIs against last_value, MP3 and the ensemble, Diebold-Mariano tests,
horizon bands, origins, segments, cutoffs) and W/mae_vs_horizon.png. Needs the [forecast]
extra (statsforecast, lightgbm, holidays).

Also written: W/backtest.json (every method's test metrics per cutoff and seed) and W/backtest.md:
per cutoff and averaged over cutoffs, MAE per series (the mean of each series' own MAE) and
pooled over points, MP3 as mean ± sample std over seeds, MP3's 10-90 % coverage, and MP3's
MAE relative to `last_value`, and MP3's figures on the val songs (`mp3 (val)`: the only ones a
choice between configs may use). Baselines are deterministic given the data (one value per cutoff).
Averages over cutoffs weigh every cutoff the same.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from mpjax import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOWN = ("mae_series", "mae", "coverage")


def define_flags():
  flags.DEFINE_string("raw", None, "raw-data directory with charts.csv (data_prep.kworb_csv "
                      "or data_prep.kworb)", required=True)
  flags.DEFINE_string("workdir", None, "where datasets, runs and the tables go", required=True)
  flags.DEFINE_list("cutoffs", None, "increasing YYYY-MM-DD forecast origins", required=True)
  flags.DEFINE_list("seeds", ["0"], "training seeds per cutoff")
  flags.DEFINE_string("config", "configs/mp3.py:kworb", "MP3 config (chart-only)")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every run, e.g. "
                            "--set=total_steps=1200")
  flags.DEFINE_integer("test_days", 0, "days of test debuts after each cutoff (0: up to the "
                       "next cutoff; 30 for the last)")
  flags.DEFINE_integer("horizon", 91, "stored series length in days: the config's mp3.window "
                       "(35: 7 given + 28 forecast) + mp3.origins (56)")
  flags.DEFINE_integer("window", 35, "days of a series that are evaluated (the config's "
                       "mp3.window): validation songs' first debuts end this long before a cutoff")
  flags.DEFINE_integer("val_days", 28, "days of first debuts in each validation split")
  flags.DEFINE_integer("samples", 1000, "song-bootstrap resamples of the window tables")


def test_windows(cutoffs: list[str], test_days: int = 0) -> list[tuple[str, str]]:
  """(first, last) test debut dates per cutoff: up to the day before the next cutoff, or
  `test_days` days (30 for the last cutoff when test_days is 0)."""
  days = [dt.date.fromisoformat(c) for c in cutoffs]
  if any(b <= a for a, b in zip(days, days[1:])):
    raise ValueError(f"--cutoffs must increase: {cutoffs}")
  out = []
  for i, d in enumerate(days):
    if test_days:
      end = d + dt.timedelta(days=test_days - 1)
    elif i + 1 < len(days):
      end = days[i + 1] - dt.timedelta(days=1)
    else:
      end = d + dt.timedelta(days=29)
    out.append((d.isoformat(), end.isoformat()))
  return out


def build_data(raw: str, out: str, cutoff: str, end: str, horizon: int, val_days: int,
               window: int) -> None:
  if os.path.exists(os.path.join(out, "manifest.json")):
    return
  from data_prep import build
  if os.path.isdir(out):  # an interrupted build: it never overwrites shards, so start afresh
    import shutil
    shutil.rmtree(out)
  build.build(build.BuildConfig(raw=raw, out=out, chart_only=True, period="daily",
                                horizon=horizon, split_by="cutoff", cutoff=cutoff,
                                val_days=val_days, val_horizon=window, window=("", end),
                                progress=False))


def train_command(config: str, workdir: str, data: str, seed: str, overrides: list[str]):
  return ([sys.executable, "-m", "mpjax.main", f"--config={config}", f"--workdir={workdir}",
           f"--config.data_dir={data}", f"--config.seed={seed}"]
          + [f"--config.{kv}" for kv in overrides])


def read_run(workdir: str) -> dict | None:
  """{method: overall metrics} of a finished run's test report, plus 'mp3 (val)': MP3 on the
  val split (the end-of-training val metrics, bands not calibrated), or None."""
  path = os.path.join(workdir, "forecast", "forecast_metrics.json")
  final = os.path.join(workdir, "final_metrics.json")
  if not os.path.exists(final) or not os.path.exists(path):
    return None
  with open(path) as f:
    res = json.load(f)
  with open(final) as f:
    final = json.load(f)
  val = {k[4:]: v for k, v in final.get("metrics", final).items() if k.startswith("val/")}
  out = {name: r["overall"] for name, r in res["results"].items()}
  out["mp3 (val)"] = {k: val.get(k) for k in SHOWN}
  return out


def summarise(results: dict) -> dict:
  """results: {cutoff: {seed: {method: metrics}}} -> {'per_cutoff': {cutoff: {method: {metric:
  (mean, std, n)}}}, 'average': {method: {metric: (mean, std over seeds of the cutoff mean, n)}}}.

  A method's value at a cutoff is its mean over seeds (baselines: the same for every seed);
  the average is the mean over cutoffs of those, and its spread the sample std over seeds of
  the seed's mean over cutoffs (0 for baselines)."""
  per_cutoff = {}
  seeds = sorted({s for runs in results.values() for s in runs})
  methods = sorted({m for runs in results.values() for r in runs.values() for m in r})
  for c, runs in results.items():
    per_cutoff[c] = {}
    for m in methods:
      per_cutoff[c][m] = {}
      for k in SHOWN:
        v = [r[m][k] for r in runs.values() if m in r and r[m].get(k) is not None]
        if v:
          per_cutoff[c][m][k] = (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0,
                                 len(v))
  average = {}
  full = [c for c in results if all(s in results[c] for s in seeds)]
  for m in methods:
    average[m] = {}
    for k in SHOWN:
      by_seed = []
      for s in seeds:
        v = [results[c][s][m][k] for c in full if m in results[c][s]
             and results[c][s][m].get(k) is not None]
        if len(v) == len(full) and v:
          by_seed.append(statistics.fmean(v))
      if by_seed:
        average[m][k] = (statistics.fmean(by_seed),
                         statistics.stdev(by_seed) if len(by_seed) > 1 else 0.0, len(full))
  return {"per_cutoff": per_cutoff, "average": average, "cutoffs_averaged": full,
          "seeds": seeds}


def _cell(v, bold=False) -> str:
  if v is None:
    return "–"
  mean, std, _ = v
  s = f"{mean:.4f}" + (f" ± {std:.4f}" if std else "")
  return f"**{s}**" if bold else s


def markdown(summary: dict, windows: dict, counts: dict, command: str) -> str:
  avg = summary["average"]
  # Test rows ranked; MP3 on val (what choices may look at) last, never bold.
  order = sorted((m for m in avg if m != "mp3 (val)"),
                 key=lambda m: avg[m].get("mae_series", (9e9,))[0])
  order += [m for m in avg if m == "mp3 (val)"]
  best = order[0] if order else None
  lines = [f"# Rolling-origin backtest: {len(summary['per_cutoff'])} cutoffs, seeds "
           f"{', '.join(summary['seeds'])}", "", f"Command: `{command}`", "",
           "MAE of log1p daily streams over forecast days 8..35 after debut, per series (each "
           "series' own MAE, averaged: every song weighs the same) and pooled over points, "
           "on each cutoff's test songs. MP3: mean ± sample std over seeds; its coverage after "
           "calibrating the bands on val. `mp3 (val)`: MP3 on the val songs (before the cutoff; "
           "bands not calibrated), the only figures a choice between configs may use.", "",
           "## Averaged over cutoffs", "",
           "| method | MAE/series | MAE pooled | vs last_value (MAE/series) | coverage 10-90 % |",
           "|---|---|---|---|---|"]
  lv = avg.get("last_value", {}).get("mae_series")
  for m in order:
    a = avg[m]
    rel = (f"{100 * (a['mae_series'][0] / lv[0] - 1):+.1f} %"
           if lv and "mae_series" in a and m != "mp3 (val)" else "–")
    lines.append(f"| {m} | {_cell(a.get('mae_series'), m == best)} | {_cell(a.get('mae'))} | "
                 f"{rel} | {_cell(a.get('coverage'))} |")
  lines += ["", "## Per cutoff (MAE/series; test songs first charting in the window)", ""]
  cut = list(summary["per_cutoff"])
  lines.append("| method | " + " | ".join(f"{c} ({windows[c][1]}, {counts.get(c, '?')} series)"
                                           for c in cut) + " |")
  lines.append("|---" * (len(cut) + 1) + "|")
  for m in order:
    row = []
    for c in cut:
      col = summary["per_cutoff"][c]
      vals = {n: col[n].get("mae_series") for n in col
              if col[n].get("mae_series") and n != "mp3 (val)"}
      low = min(vals, key=lambda n: vals[n][0]) if vals else None
      row.append(_cell(col.get(m, {}).get("mae_series"), m == low))
    lines.append(f"| {m} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def _spec(run: str):
  """The windows of the run's config (config.json): prefix, window, origins, season."""
  from mpjax import backtest
  with open(os.path.join(run, "config.json")) as f:
    cfg = json.load(f)
  f = cfg["mp3"]
  return backtest.Spec(k=f["prefix_steps"], window=f["window"],
                       origins=tuple(f.get("eval_origins") or (0,)), max_origin=f["origins"],
                       season=f["season"], seed=cfg.get("seed", 0))


def _stale(path: str, runs: dict) -> bool:
  """The cutoff's windows.npz predates one of its runs' MP3 forecasts, or misses a seed."""
  from mpjax import backtest
  with open(path[:-len(".npz")] + ".json") as f:
    have = set(json.load(f).get("ensemble_weight", {}))
  want = {f"{backtest.ENSEMBLE}/s{s}" for s in runs}
  return have != want or any(
      os.path.getmtime(os.path.join(r, "forecast", "origin_predictions.npz")) > os.path.getmtime(path)
      for r in runs.values())


def main(argv):
  del argv
  F = flags.FLAGS
  cutoffs = [c.strip() for c in F.cutoffs]
  windows = dict(zip(cutoffs, test_windows(cutoffs, F.test_days)))
  os.makedirs(F.workdir, exist_ok=True)
  results, counts, failed = {}, {}, []
  total = len(cutoffs) * len(F.seeds)
  i = 0
  for c in cutoffs:
    data = os.path.join(F.workdir, c, "data")
    print(f"[backtest] cutoff {c}: test debuts {windows[c][0]}..{windows[c][1]} -> {data}",
          flush=True)
    build_data(F.raw, data, c, windows[c][1], F.horizon, F.val_days, F.window)
    results[c] = {}
    for s in F.seeds:
      i += 1
      run = os.path.join(F.workdir, c, f"seed{s}")
      if read_run(run) is None:
        cmd = train_command(F.config, run, data, s, F.set)
        print(f"[backtest {i}/{total}] {' '.join(cmd[1:])}  (log: {run}.log)", flush=True)
        with open(f"{run}.log", "a") as log:
          rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if rc:
          failed.append(f"{c} seed {s}: exit {rc}, see {run}.log")
          print(f"[backtest] FAILED {failed[-1]}", flush=True)
          continue
      r = read_run(run)
      if r is None:
        failed.append(f"{c} seed {s}: no forecast report in {run}")
        continue
      results[c][s] = r
      counts[c] = int(r.get("mp3", {}).get("n_series", 0))
      print(f"[backtest {i}/{total}] {c} seed {s}: mp3 MAE/series "
            f"{r['mp3']['mae_series']:.4f}, last_value {r['last_value']['mae_series']:.4f}",
            flush=True)
  command = "python launch/backtest.py " + " ".join(a for a in sys.argv[1:])
  from mpjax import backtest  # statsforecast / lightgbm behind it: pip install -e .[forecast]
  saved = []
  for c in cutoffs:  # every method on the same rolling-origin windows, per cutoff
    runs = {s: os.path.join(F.workdir, c, f"seed{s}") for s in F.seeds if s in results.get(c, {})}
    path = os.path.join(F.workdir, c, "windows.npz")
    if runs and (not os.path.exists(path) or _stale(path, runs)):
      try:
        cut = backtest.cutoff_forecasts(os.path.join(F.workdir, c, "data"), runs,
                                        _spec(next(iter(runs.values()))))
      except (ValueError, KeyError) as e:
        failed.append(f"{c}: windows: {e}")
        continue
      backtest.save_cutoff(path, cut, c)
    if os.path.exists(path):
      saved.append(path)
  if saved:
    pooled = backtest.load_cutoffs(saved)
    win = backtest.summarise(pooled, samples=F.samples)
    atomic.write_json(os.path.join(F.workdir, "windows.json"), {"command": command, **win},
                      indent=2)
    md_w = backtest.markdown(win, command=command,
                             title=f"Weekly rolling origins: {len(saved)} cutoffs")
    md_w += "\n## Chosen on val, per cutoff\n\n| cutoff | ensemble partner | weights of MP3 " \
            "(per seed) | val MAE/window (what choices between configs may use) |\n" \
            "|---|---|---|---|\n"
    for path in saved:
      with open(path[:-len(".npz")] + ".json") as f:
        info = json.load(f)
      md_w += (f"| {os.path.basename(os.path.dirname(path))} | {info['ensemble_partner']} | "
               + ", ".join(f"{v:.2f}" for v in info["ensemble_weight"].values()) + " | "
               + ", ".join(f"{n} {v:.4f}" for n, v in info["val_mae"].items()) + " |\n")
    atomic.write_text(os.path.join(F.workdir, "windows.md"), md_w)
    backtest.horizon_figure(os.path.join(F.workdir, "mae_vs_horizon.png"), pooled)
    print(md_w)
  summary = summarise({c: r for c, r in results.items() if r})
  md = markdown(summary, windows, counts, command)
  atomic.write_json(os.path.join(F.workdir, "backtest.json"),
                    {"command": command, "windows": windows, "results": results,
                     "summary": summary, "failed": failed}, indent=2)
  atomic.write_text(os.path.join(F.workdir, "backtest.md"), md)
  print(md)
  if failed:
    print("[backtest] failed:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
