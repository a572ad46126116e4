"""Issue 15's demo targets, read from finished runs; prints JSON (figures, and which targets hold).

    python benchmarks/audio_targets.py --probes=SSL_RUN/probes/probes.json \
        --mp2=MP2_RUN [--mp2=...] --mp3=MP3_RUN --mp3_audio_free=MP3_RUN_AUDIO_FREE

Probes (`python -m mpjax.analysis.probes --workdir=RUN` first): the trained encoder's pooled R²
beats the random encoder's on every planted attribute and reaches >= 0.9 of the fbank-statistics
R² on each attribute fbank statistics can predict (R² > 0.05; tempo: >= 0.5 absolute).
MP2 (final_metrics.json): mean within-region test R² >= 0.05, pooled >= 0.45.
MP3 (forecast/forecast_metrics.json): MAE over the steps after the MP2 window (the band after
the first one) >= 10 % below train_drift's and below the audio-free MP3's by as much.
"""
import argparse
import json
import os

import numpy as np

ATTRIBUTES = ("tempo", "brightness", "percussiveness", "hook", "loudness", "mode")


def probe_figures(path):
  with open(path) as f:
    p = json.load(f)
  out = {"run": p["run"], "split": p["split"], "n": p["n"], "attributes": {}}
  ok = True
  for a in ATTRIBUTES:
    if a not in p["targets"]:
      continue
    r2 = p["targets"][a]["r2"]
    t, rnd, fb = r2["trained"], r2["random"], r2["fbank"]
    beats_random = t > rnd
    if a == "tempo":
      enough = t >= 0.5
    else:
      enough = fb <= 0.05 or t >= 0.9 * fb
    out["attributes"][a] = {"trained": t, "random": rnd, "fbank": fb,
                            "trained_over_fbank": t / fb if fb > 0.05 else None,
                            "beats_random": beats_random, "enough_of_fbank": enough}
    ok &= beats_random and enough
  out["target_met"] = bool(ok)
  return out


def mp2_figures(run):
  with open(os.path.join(run, "final_metrics.json")) as f:
    m = json.load(f)["metrics"]
  out = {"run": run}
  for split in ("val", "test"):
    regions = sorted({k.split("/")[1] for k in m if k.startswith(f"{split}/") and k.count("/") == 2
                      and k.endswith("/r2")})
    within = [m[f"{split}/{r}/r2"] for r in regions]
    out[split] = {"pooled_r2": m[f"{split}/r2"], "within_region_r2": float(np.mean(within)),
                  "per_region_r2": dict(zip(regions, within))}
  out["target_met"] = out["test"]["within_region_r2"] >= 0.05 and out["test"]["pooled_r2"] >= 0.45
  return out


def late_band(run):
  with open(os.path.join(run, "forecast", "forecast_metrics.json")) as f:
    m = json.load(f)
  bands = list(m["results"]["mp3"]["per_band"])
  late = bands[-1]
  return late, {name: r["per_band"][late]["mae"] for name, r in m["results"].items()
                if late in r.get("per_band", {})}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--probes", help="probes.json of the encoder to judge")
  ap.add_argument("--mp2", action="append", default=[], help="MP2 run directory (repeatable: seeds)")
  ap.add_argument("--mp3", help="MP3 run directory")
  ap.add_argument("--mp3_audio_free", help="MP3 run trained the same way with mp3.audio=False")
  a = ap.parse_args()
  out = {}
  if a.probes:
    out["probes"] = probe_figures(a.probes)
  if a.mp2:
    runs = [mp2_figures(r) for r in a.mp2]
    within = [r["test"]["within_region_r2"] for r in runs]
    pooled = [r["test"]["pooled_r2"] for r in runs]
    out["mp2"] = {"runs": runs, "test_within_region_r2_mean": float(np.mean(within)),
                  "test_within_region_r2_std": float(np.std(within, ddof=1)) if len(runs) > 1 else None,
                  "test_pooled_r2_mean": float(np.mean(pooled)),
                  "target_met": bool(np.mean(within) >= 0.05 and np.mean(pooled) >= 0.45)}
  if a.mp3:
    band, maes = late_band(a.mp3)
    res = {"band": band, "mae": maes, "mp3_vs_train_drift": maes["mp3"] / maes["train_drift"] - 1}
    ok = res["mp3_vs_train_drift"] <= -0.10
    if a.mp3_audio_free:
      _, free = late_band(a.mp3_audio_free)
      res["audio_free_mp3"] = free["mp3"]
      res["mp3_vs_audio_free"] = maes["mp3"] / free["mp3"] - 1
      ok &= res["mp3_vs_audio_free"] <= -0.10
    res["target_met"] = bool(ok)
    out["mp3"] = res
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
