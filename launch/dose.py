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
   split, whose own means differ). With ~15 test pairs per region that mean of ratios is
   unstable (a resample with a near-constant region sends it far below 0), so beside it: the
   gain, the pooled within-region R² beyond the region mean, with a paired interval. Mean and
   sample sd over seeds. Written to ROOT/dose.json, ROOT/dose.md and ROOT/dose.png (the gain
   against the oracle's, and both figures against the dose).

The evidence that the encoder learns the audio: the gain rises with the dose and is about 0 in
the null world (its interval includes 0), the control that could make the claim fail.
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


def pooled_within_region_r2(y, pred, region) -> float:
  """1 - (sum over regions of SSE) / (sum over regions of SST around the region's own mean):
  within-region R² with regions weighted by their spread. Unlike the mean of per-region R²s it
  does not blow up when a small (resampled) region holds nearly equal targets."""
  sse = sst = 0.0
  for r in np.unique(region):
    sel = region == r
    sse += float(np.sum((y[sel] - pred[sel]) ** 2))
    sst += float(np.sum((y[sel] - y[sel].mean()) ** 2))
  return 1.0 - sse / sst if sst > 0 else float("nan")


def gain_over(y, pred, base, region) -> float:
  """How much of the within-region spread `pred` explains beyond `base` (the train region
  mean): pooled_within_region_r2(pred) - pooled_within_region_r2(base). 0: no better than
  knowing the region."""
  return pooled_within_region_r2(y, pred, region) - pooled_within_region_r2(y, base, region)


def song_bootstrap(stat, y, preds, region, song, *, n=BOOTSTRAP, seed=0) -> tuple[float, float]:
  """95 % interval of stat(y, *preds, region) over test songs resampled with replacement (every
  region's pairs of a song together; several preds: paired, the same resample for all)."""
  songs, inv = np.unique(song, return_inverse=True)
  rows_of = [np.flatnonzero(inv == i) for i in range(len(songs))]
  rng = np.random.default_rng(seed)
  stats = []
  for _ in range(n):
    pick = rng.integers(len(songs), size=len(songs))
    idx = np.concatenate([rows_of[i] for i in pick])
    stats.append(stat(y[idx], *(p[idx] for p in preds), region[idx]))
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


def score(y, pred, base, region, song) -> dict:
  """A prediction's within-region R² and its gain over `base`, each with its interval."""
  return {"within_region_r2": within_region_r2(y, pred, region),
          "ci95": song_bootstrap(within_region_r2, y, (pred,), region, song),
          "gain": gain_over(y, pred, base, region),
          "gain_ci95": song_bootstrap(gain_over, y, (pred, base), region, song)}


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
    region, song = test["region"], test["song_id"]
    d = result["doses"].setdefault(dose, {"seeds": {}})
    # Per point, on its own test pairs (a dose's seeds share the world, so these agree).
    orc, means = oracle_predictions(os.path.join(w, "raw"), os.path.join(w, "data"),
                                    args.target, test)
    if "oracle" not in d:
      d["oracle"] = score(y, orc, means, region, song)
      d["region_mean"] = {"within_region_r2": within_region_r2(y, means, region),
                          "ci95": song_bootstrap(within_region_r2, y, (means,), region, song)}
    d["seeds"][seed] = {**score(y, pred, means, region, song),
                        "pairs": int(ok.sum()), "songs": int(len(np.unique(song)))}
    print(f"[dose] dose {dose} seed {seed}: within-region R² {d['seeds'][seed]['within_region_r2']:.3f} "
          f"{d['seeds'][seed]['ci95']}, gain {d['seeds'][seed]['gain']:.3f} "
          f"{d['seeds'][seed]['gain_ci95']}; oracle {d['oracle']['within_region_r2']:.3f}, "
          f"gain {d['oracle']['gain']:.3f}", flush=True)
  for d in result["doses"].values():
    for key in ("within_region_r2", "gain"):
      v = [s[key] for s in d["seeds"].values()]
      d[f"{key}_mean"] = float(np.mean(v))
      d[f"{key}_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    d["ratio_to_oracle"] = d["within_region_r2_mean"] / d["oracle"]["within_region_r2"]
    d["gain_ratio_to_oracle"] = d["gain_mean"] / d["oracle"]["gain"]
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "dose.json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
  ci = lambda v: f"[{v[0]:.3f}, {v[1]:.3f}]"
  lines = [f"Test split, target `{args.target}`, command: `{result['command']}`. Within-region R² "
           "= the mean over regions of each region's R² (the issue's figure); gain = the pooled "
           "within-region R² beyond the train+val region mean (0: no better than knowing the "
           "region). Per seed: value [95 % song-bootstrap interval]; the gain's interval is "
           "paired (model and region mean on the same resamples).", "",
           "| dose | within-region R², mean ± sd over seeds | per seed | oracle | train region "
           "mean | model / oracle | gain, mean ± sd | gain per seed | oracle gain | gain / "
           "oracle gain |", "|---|---|---|---|---|---|---|---|---|---|"]
  for dose in sorted(result["doses"], key=_x):
    d = result["doses"][dose]
    o, b = d["oracle"], d["region_mean"]
    per = "; ".join(f"{s['within_region_r2']:.3f} {ci(s['ci95'])}" for s in d["seeds"].values())
    gains = "; ".join(f"{s['gain']:.3f} {ci(s['gain_ci95'])}" for s in d["seeds"].values())
    lines.append(
        f"| {dose} | {d['within_region_r2_mean']:.3f} ± {d['within_region_r2_sd']:.3f} | {per} | "
        f"{o['within_region_r2']:.3f} {ci(o['ci95'])} | {b['within_region_r2']:.3f} "
        f"{ci(b['ci95'])} | {d['ratio_to_oracle']:.2f} | {d['gain_mean']:.3f} ± "
        f"{d['gain_sd']:.3f} | {gains} | {o['gain']:.3f} {ci(o['gain_ci95'])} | "
        f"{d['gain_ratio_to_oracle']:.2f} |")
  with open(os.path.join(root, "dose.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)
  plot(result, os.path.join(root, "dose.png"))
  return 0


def plot(result, path):
  """Left: each seed's gain over the region mean against the oracle's (paired 95 % CIs); right:
  mean ± sd over seeds against the dose, gain and mean within-region R², beside the oracle's."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  doses = sorted(result["doses"], key=_x)
  if not doses:
    return
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
  orc = [result["doses"][d]["oracle"]["gain"] for d in doses]
  for d, o in zip(doses, orc):
    for s in result["doses"][d]["seeds"].values():
      lo, hi = s["gain_ci95"]
      a.errorbar(o, s["gain"], yerr=[[s["gain"] - lo], [hi - s["gain"]]], fmt="o", ms=4,
                 color="C0", alpha=0.7)
    a.annotate(f"dose {d}", (o, result["doses"][d]["gain_mean"]), textcoords="offset points",
               xytext=(6, -10), fontsize=8)
  top = max(orc + [0.1])
  a.plot([0, top], [0, top], "k:", lw=1, label="= oracle")
  a.plot([0, top], [0, 0.5 * top], "k--", lw=0.8, label="0.5 x oracle")
  a.axhline(0, color="grey", lw=0.5)
  a.set_xlabel("audio-only oracle: within-region R² gain over the region mean")
  a.set_ylabel("model: gain (seeds, paired 95 % CI)")
  a.legend(fontsize=8)
  x = [_x(d) for d in doses]
  for key, label, fmt in (("gain", "model gain", "o-"), ("within_region_r2",
                                                          "model mean within-region R²", "^-")):
    b.errorbar(x, [result["doses"][d][f"{key}_mean"] for d in doses],
               yerr=[result["doses"][d][f"{key}_sd"] for d in doses], fmt=fmt,
               label=f"{label} (mean ± sd)")
  b.plot(x, orc, "s--", label="oracle gain")
  b.plot(x, [result["doses"][d]["oracle"]["within_region_r2"] for d in doses], "s:",
         label="oracle mean within-region R²")
  b.axhline(0, color="grey", lw=0.5)
  b.set_xlabel("planted audio effect (dose; 0 = the null world)")
  b.set_ylabel(f"test, {result['target']}")
  b.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
