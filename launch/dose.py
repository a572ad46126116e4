"""Dose-response on the demo world: does the encoder learn the planted audio?

One command trains the MP2 demo on worlds whose planted audio effect is scaled by each dose, for
every seed, and plots the within-region test R² it recovers against what an audio-only oracle
reaches on the same pairs:

  python launch/dose.py --root=/tmp/dose [--doses=null,1,0.5,2] [--seeds=0,1,2] [--target=longevity]

Dose 'null' (plotted at 0) is the null world (`data_prep.synthetic --null`): the same songs and
audio, popularity driven by a phantom attribute vector of the same distribution, so the target
keeps its spread but owes nothing to the audio. (audio_effect=0 would also remove the audio's
effect, but with it most of the target's spread within a region, and R² against a near-constant
target says nothing.)

1. Training: per dose, in the order given, one `launch/sweep.py` over --sweep=seed=SEEDS with
   configs/mp2.py:demo into ROOT/runs/dose=D (--set=demo_audio_effect=D; the null world:
   --set=demo_null=True), config.mp2.targets = (TARGET, the other one), so the checkpoint is
   chosen on TARGET's validation within-region R². Each point builds its world into POINT/raw
   (truth.json) and POINT/data; the world's seed stays 0, so a dose's seeds share it. Finished
   points are skipped on a rerun (the sweep's own rule), so the command resumes, and a later
   call may add doses or seeds.
2. Scoring: each point's best-on-val checkpoint on the test split (`mpjax.evaluate`, which
   writes per-pair predictions).
3. Oracle: per region, gradient boosting on the six TRUE audio attributes (truth.json
   'attributes_u') fitted on the train and val songs' pairs and scored on the same test pairs:
   what an audio-only predictor reaches on this target with this much data (the model sees the
   audio through a 5 s crop, the oracle the attributes themselves).
4. Within-region R² (the mean over regions of each region's R²) with a 95 % song-bootstrap
   interval (test songs resampled, every region's pairs of a song together), per seed, for the
   oracle and for the train+val region mean (knows nothing of the song; below 0 on a small test
   split, whose own means differ); mean and sample sd over seeds. Written to ROOT/dose.json, ROOT/dose.md and
   ROOT/dose.png (recovered against oracle, and both against the dose).

The evidence that the encoder learns the audio: recovered R² rises with the dose and is about
0 at dose 0 (its interval includes 0), the control that could make the claim fail.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("longevity", "mp2")
BOOTSTRAP = 2000


def within_region_r2(y, pred, region) -> float:
  """Mean over regions (2+ pairs, non-constant target) of 1 - SSE / SST."""
  out = []
  for r in np.unique(region):
    sel = region == r
    yy, pp = y[sel], pred[sel]
    sst = float(np.sum((yy - yy.mean()) ** 2))
    if sel.sum() >= 2 and sst > 0:
      out.append(1.0 - float(np.sum((yy - pp) ** 2)) / sst)
  return float(np.mean(out)) if out else float("nan")


def song_bootstrap(y, pred, region, song, *, n=BOOTSTRAP, seed=0) -> tuple[float, float]:
  """95 % interval of `within_region_r2` over test songs resampled with replacement."""
  songs, inv = np.unique(song, return_inverse=True)
  rows_of = [np.flatnonzero(inv == i) for i in range(len(songs))]
  rng = np.random.default_rng(seed)
  stats = []
  for _ in range(n):
    pick = rng.integers(len(songs), size=len(songs))
    idx = np.concatenate([rows_of[i] for i in pick])
    stats.append(within_region_r2(y[idx], pred[idx], region[idx]))
  lo, hi = np.nanpercentile(stats, [2.5, 97.5])
  return float(lo), float(hi)


def oracle_predictions(raw: str, data: str, target: str, test: dict):
  """(audio-only oracle, train+val region mean) predictions for the test pairs (module doc,
  step 3). The region mean is what knows nothing of the song: its within-region R² is slightly
  below 0 on a small test split (the split's own means differ), the floor to read the null
  world's figure against."""
  from sklearn.ensemble import HistGradientBoostingRegressor
  from mpjax import records

  with open(os.path.join(raw, "truth.json")) as f:
    truth = json.load(f)
  attrs = truth["attributes"]
  u = {s["song_id"]: [s["attributes_u"][a] for a in attrs] for s in truth["songs"]}
  field = {"mp2": "mp2", "longevity": "longevity"}[target]
  manifest = records.load_manifest(data)
  X, y, reg = [], [], []
  for split in ("train", "val"):
    for rec in records.read(data, split, manifest=manifest):
      for r, v in zip(rec["regions"], rec[field]):
        if np.isfinite(v) and rec["song_id"] in u:
          X.append(u[rec["song_id"]]), y.append(float(v)), reg.append(manifest["regions"][r])
  X, y, reg = np.array(X), np.array(y), np.array(reg)
  pred = np.full(len(test["region"]), np.nan)
  means = np.full(len(test["region"]), np.nan)
  tx = np.array([u[s] for s in test["song_id"]])
  from threadpoolctl import threadpool_limits
  with threadpool_limits(1):  # OpenMP threads on a busy machine slow small fits 30x
    for r in np.unique(test["region"]):
      fit = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_depth=3,
                                          random_state=0).fit(X[reg == r], y[reg == r])
      sel = test["region"] == r
      pred[sel] = fit.predict(tx[sel])
      means[sel] = y[reg == r].mean()
  return pred, means


def _is_number(s: str) -> bool:
  try:
    return float(s) >= 0
  except ValueError:
    return False


def _x(dose: str) -> float:
  return 0.0 if dose == "null" else float(dose)


def run(cmd):
  print("[dose] " + " ".join(cmd), flush=True)
  return subprocess.run(cmd, cwd=REPO).returncode


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python launch/dose.py", description=__doc__.split("\n")[0])
  ap.add_argument("--root", required=True, help="output directory (runs/, dose.json, dose.md, dose.png)")
  ap.add_argument("--doses", default="null,1,0.5,2",
                  help="audio-effect doses, run in this order; 'null' = the null world (default "
                       "null,1,0.5,2: the control and the default world first)")
  ap.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
  ap.add_argument("--target", default="longevity", choices=TARGETS,
                  help="the target the checkpoint is chosen on and the figure shows")
  ap.add_argument("--set", action="append", default=[],
                  help="extra KEY=VALUE for every run (e.g. total_steps=100 for a quick look)")
  ap.add_argument("--collect_only", action="store_true", help="score and plot what has finished")
  args = ap.parse_args(argv)
  root = os.path.abspath(args.root)
  other = [t for t in TARGETS if t != args.target][0]
  doses = [d.strip() for d in args.doses.split(",") if d.strip()]
  seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
  bad = [d for d in doses if d != "null" and not _is_number(d)]
  if bad:
    raise SystemExit(f"--doses: {bad} are neither numbers nor 'null'")
  sweeps = [(os.path.join(root, "runs", f"dose={d}"),
             ["--set=demo_null=True"] if d == "null" else [f"--set=demo_audio_effect={d}"])
            for d in doses]

  for runs, axis in sweeps:
    if args.collect_only:
      break
    rc = run([sys.executable, os.path.join(REPO, "launch", "sweep.py"),
              "--config=configs/mp2.py:demo", f"--root={runs}", *axis,
              f"--sweep=seed={','.join(seeds)}", f"--set=mp2.targets=('{args.target}','{other}')",
              "--metrics=val/within_region_r2,test/within_region_r2,test/r2,test/region_means_r2"]
             + [f"--set={s}" for s in args.set])
    if rc:
      print(f"[dose] the sweep exited {rc}: scoring the points that finished", flush=True)

  points = []
  for dose, (runs, _) in zip(doses, sweeps):
    if os.path.exists(os.path.join(runs, "sweep.json")):
      with open(os.path.join(runs, "sweep.json")) as f:
        points += [(dose, p) for p in json.load(f)["points"]]
  result = {"target": args.target, "doses": {}, "command": " ".join(sys.argv)}
  for dose, p in points:
    seed = str(p["overrides"]["seed"])
    w = p["workdir"]
    if not os.path.exists(os.path.join(w, "final_metrics.json")):
      print(f"[dose] {p['name']}: not finished, left out", flush=True)
      continue
    out = os.path.join(w, "eval_test_best")
    if not os.path.exists(os.path.join(out, "predictions.npz")):
      if run([sys.executable, "-m", "mpjax.evaluate", f"--workdir={w}", "--split=test",
              "--step=best", f"--out={out}"]):
        print(f"[dose] {p['name']}: evaluation failed, left out", flush=True)
        continue
    z = np.load(os.path.join(out, "predictions.npz"))
    ok = np.isfinite(z[args.target])
    test = {k: z[k][ok] for k in ("song_id", "region", args.target, f"pred_{args.target}")}
    y, pred = test[args.target], test[f"pred_{args.target}"]
    d = result["doses"].setdefault(dose, {"seeds": {}})
    d["seeds"][seed] = {"within_region_r2": within_region_r2(y, pred, test["region"]),
                        "ci95": song_bootstrap(y, pred, test["region"], test["song_id"]),
                        "pairs": int(ok.sum()), "songs": int(len(np.unique(test["song_id"])))}
    if "oracle" not in d:
      orc, means = oracle_predictions(os.path.join(w, "raw"), os.path.join(w, "data"),
                                      args.target, test)
      d["oracle"] = {"within_region_r2": within_region_r2(y, orc, test["region"]),
                     "ci95": song_bootstrap(y, orc, test["region"], test["song_id"])}
      d["region_mean"] = {"within_region_r2": within_region_r2(y, means, test["region"]),
                          "ci95": song_bootstrap(y, means, test["region"], test["song_id"])}
    print(f"[dose] dose {dose} seed {seed}: within-region R² {d['seeds'][seed]['within_region_r2']:.3f} "
          f"{d['seeds'][seed]['ci95']}, oracle {d['oracle']['within_region_r2']:.3f}", flush=True)
  for d in result["doses"].values():
    v = [s["within_region_r2"] for s in d["seeds"].values()]
    d["mean"] = float(np.mean(v))
    d["sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    d["ratio_to_oracle"] = d["mean"] / d["oracle"]["within_region_r2"]
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "dose.json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
  lines = [f"Within-region test R² of `{args.target}` ({len(seeds)} seeds; 95 % song-bootstrap "
           f"intervals), command: `{result['command']}`", "",
           "| dose | model mean ± sd | per seed [95 % CI] | oracle [95 % CI] | train region mean "
           "[95 % CI] | model / oracle |", "|---|---|---|---|---|---|"]
  for dose in sorted(result["doses"], key=_x):
    d = result["doses"][dose]
    per = "; ".join(f"{s['within_region_r2']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
                    for s in d["seeds"].values())
    o, b = d["oracle"], d["region_mean"]
    lines.append(f"| {dose} | {d['mean']:.3f} ± {d['sd']:.3f} | {per} | {o['within_region_r2']:.3f} "
                 f"[{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] | {b['within_region_r2']:.3f} "
                 f"[{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] | {d['ratio_to_oracle']:.2f} |")
  with open(os.path.join(root, "dose.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)
  plot(result, os.path.join(root, "dose.png"))
  return 0


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  doses = sorted(result["doses"], key=_x)
  if not doses:
    return
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
  orc = [result["doses"][d]["oracle"]["within_region_r2"] for d in doses]
  for d, o in zip(doses, orc):
    for s in result["doses"][d]["seeds"].values():
      lo, hi = s["ci95"]
      a.errorbar(o, s["within_region_r2"], yerr=[[s["within_region_r2"] - lo],
                                                 [hi - s["within_region_r2"]]], fmt="o", ms=4,
                 color="C0", alpha=0.7)
    a.annotate(f"dose {d}", (o, result["doses"][d]["mean"]), textcoords="offset points",
               xytext=(6, -10), fontsize=8)
  top = max(orc + [0.1])
  a.plot([0, top], [0, top], "k:", lw=1, label="= oracle")
  a.plot([0, top], [0, 0.5 * top], "k--", lw=0.8, label="0.5 x oracle")
  a.axhline(0, color="grey", lw=0.5)
  a.set_xlabel("audio-only oracle, within-region R²")
  a.set_ylabel("model, within-region R² (seeds, 95 % CI)")
  a.legend(fontsize=8)
  x = [_x(d) for d in doses]
  b.errorbar(x, [result["doses"][d]["mean"] for d in doses],
             yerr=[result["doses"][d]["sd"] for d in doses], fmt="o-", label="model (mean ± sd)")
  b.plot(x, orc, "s--", label="oracle")
  b.axhline(0, color="grey", lw=0.5)
  b.set_xlabel("planted audio effect (dose; 0 = the null world)")
  b.set_ylabel(f"within-region test R² ({result['target']})")
  b.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
