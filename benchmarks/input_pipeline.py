"""Throughput of the Grain input pipeline alone (no model): examples/s in training mode.

    python benchmarks/input_pipeline.py --data /tmp/h_ds [--tdim 1024] [--batch 16] \
        [--workers 0 2] [--threads 0] [--batches 60] [--no-augment]

Build a dataset first: `python -m data_prep.synthetic --out /tmp/h_raw --build /tmp/h_ds`.
Prints one JSON line per (workers, read_threads) setting: steady-state examples/s over
`--batches` batches after `--warmup` batches (worker start-up excluded and reported separately
as `startup_s`, the time to the first batch). Augmentations default to everything on, mixup
included (its partner costs a second read + decode per mixed example): the demanding case.
What bounds it on CPU: parsing the Example proto, float16 -> float32, crop/normalise and the
per-example numpy augmentations; `workers` spreads that over processes (GIL-free).
"""
import argparse
import json
import os
import platform
import time

from mpjax.input import pipeline

AUGMENT = dict(specaug=dict(freq_masks=2, freq_width=48, time_masks=2, time_width=192),
               roll=True, gain_db=6.0, tilt_db=6.0, pitch_bins=2.0, mixup_alpha=0.5,
               mixup_prob=0.5)


def run(args, workers: int, threads: int) -> dict:
  cfg = dict(batch_size=args.batch, input_tdim=args.tdim, regions_per_example=2,
             workers=workers, read_threads=threads)
  ds = pipeline.make_dataset(args.data, "train", cfg=cfg, seed=0, train=True,
                             augment=None if args.no_augment else AUGMENT,
                             process_index=0, process_count=1)
  t0 = time.perf_counter()
  it = iter(ds)
  first = next(it)
  startup = time.perf_counter() - t0
  for _ in range(args.warmup):
    next(it)
  t1 = time.perf_counter()
  n = 0
  for _ in range(args.batches):
    b = next(it)
    n += b["fbank"].shape[0]
  dt = time.perf_counter() - t1
  if hasattr(it, "close"):
    it.close()
  return {"bench": "input_pipeline", "mode": "train", "workers": workers, "read_threads": threads,
          "input_tdim": args.tdim, "batch": args.batch, "augment": not args.no_augment,
          "examples_per_s": round(n / dt, 1), "batches_per_s": round(args.batches / dt, 2),
          "ms_per_batch": round(1e3 * dt / args.batches, 1), "startup_s": round(startup, 2),
          "batches": args.batches, "fbank_shape": list(first["fbank"].shape),
          "cpus": os.cpu_count(), "python": platform.python_version()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", default="/tmp/h_ds", help="dataset directory (with manifest.json)")
  ap.add_argument("--tdim", type=int, default=1024, help="input_tdim (frames per example)")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  ap.add_argument("--threads", type=int, nargs="+", default=[0], help="read_threads settings")
  ap.add_argument("--batches", type=int, default=60, help="timed batches")
  ap.add_argument("--warmup", type=int, default=5, help="untimed batches after the first")
  ap.add_argument("--no-augment", action="store_true")
  args = ap.parse_args()
  for w in args.workers:
    for t in args.threads:
      print(json.dumps(run(args, w, t)), flush=True)


if __name__ == "__main__":
  main()
