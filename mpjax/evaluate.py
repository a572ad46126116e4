"""Score a trained run on any dataset built with the same region vocabulary, without training.

    python -m mpjax.evaluate --workdir=RUN [--data=DATASET] [--split=test] [--step=latest|best|N]
        [--out=DIR] [--eval_crops=C]

A later period or another country set, built by `data_prep.build` with the same regions (and,
for MP3, the same horizon), is read with the run's own input settings and the fbank
normalisation of the run's training data (not the new dataset's). MP2 with --eval_crops=C > 1
predicts from C evenly spaced crops of each clip and averages them. Written to `--out` (default
RUN/eval/<dataset>-<split>-step<N>/):
  metrics.json   the model's metrics on the split (what training logs as test/... at its end)
  MP2 also:      predictions.npz: per (record, region) the song_id, region, each target of
                 config.mp2.targets and its prediction (for song-bootstrap intervals)
  MP3 also:      forecast_table.md, forecast_metrics.json, summary.json, predictions.npz,
                 fan_charts.png (`mpjax.forecast.report`: the model against every baseline,
                 the baselines fitted on DATASET's train split)
Every process runs it (the evaluation is sharded over the run's mesh); process 0 writes.
"""
from __future__ import annotations

import io
import os

from absl import app, flags, logging
import jax
import numpy as np
from flax import nnx

from mpjax import atomic
from mpjax import checkpoint as ckpt_lib
from mpjax import export as export_lib
from mpjax import forecast as forecast_lib
from mpjax import sharding
from mpjax import tasks
from mpjax import train
from mpjax import records
from mpjax.models import factory


def check_compatible(run_manifest: dict, manifest: dict, task: str, data_dir: str):
  """The model's region ids are positions in its vocabulary, and MP3's outputs are per step."""
  if list(manifest["regions"]) != list(run_manifest["regions"]):
    raise ValueError(f"{data_dir}: region vocabulary {manifest['regions']} differs from the "
                     f"run's {run_manifest['regions']}; rebuild it with the same regions")
  if task == "mp3" and int(manifest["horizon"]) != int(run_manifest["horizon"]):
    raise ValueError(f"{data_dir}: horizon {manifest['horizon']} differs from the run's "
                     f"{run_manifest['horizon']} (build with --horizon {run_manifest['horizon']})")
  if manifest["fbank"]["mel_bins"] != run_manifest["fbank"]["mel_bins"]:
    raise ValueError(f"{data_dir}: {manifest['fbank']['mel_bins']} mel bins, the run was "
                     f"trained on {run_manifest['fbank']['mel_bins']}")


def write_mp2_predictions(path: str, rows: dict, config, data_dir: str, split: str,
                          manifest: dict) -> None:
  """One row per (record, region) with a target: song_id, region, pred_<t> and <t> (NaN where
  that target is missing) for every target t of config.mp2.targets."""
  songs = np.array([r["song_id"] for r in records.read(data_dir, split, manifest=manifest)])
  targets = factory.mp2_targets(config)
  keep = np.zeros(rows["region_ids"].shape, bool)
  for t in targets:
    keep |= rows[f"{t}_weight"] > 0
  rec, col = np.nonzero(keep)
  out = {"song_id": songs[rows["record"][rec]],
         "region": np.array(manifest["regions"])[rows["region_ids"][rec, col]],
         "targets": np.array(targets)}
  for j, t in enumerate(targets):
    ok = rows[f"{t}_weight"][rec, col] > 0
    out[t] = np.where(ok, rows[t][rec, col], np.nan)
    out[f"pred_{t}"] = rows["pred"][rec, col, j]
  buf = io.BytesIO()
  np.savez(buf, **out)
  atomic.write_bytes(path, buf.getvalue())


def evaluate(workdir: str, data_dir: str | None = None, split: str = "test", step: str = "latest",
             out: str | None = None, eval_crops: int | None = None) -> dict[str, float]:
  """Scores the run's checkpoint on `split` of `data_dir`; returns the metrics (module doc)."""
  config = export_lib.run_config(workdir)
  run_manifest = records.load_manifest(config.data_dir)
  data_dir = data_dir or config.data_dir
  manifest = records.load_manifest(data_dir)
  check_compatible(run_manifest, manifest, config.task, data_dir)
  step_n, _ = export_lib.choose_step(workdir, str(step), config)
  with config.unlocked():
    config.data_dir = data_dir
    if eval_crops is not None:
      if eval_crops < 1 or (eval_crops > 1 and config.task != "mp2"):
        raise ValueError(f"eval_crops={eval_crops}: MP2 takes C >= 1 crops, "
                         f"{config.task} one centre crop")
      config.input.eval_crops = int(eval_crops)
    if config.input.get("fbank_mean") is None and run_manifest["fbank"].get("mean") is not None:
      config.input.fbank_mean = run_manifest["fbank"]["mean"]
      config.input.fbank_std = run_manifest["fbank"]["std"]
  if out is None:
    name = os.path.basename(os.path.normpath(data_dir))
    out = os.path.join(workdir, "eval", f"{name}-{split}-step{step_n}")

  # The model as training built it, on the run's mesh, with the checkpoint's parameters.
  n_dev = config.get("num_devices") or len(jax.devices())
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:n_dev])
  model = nnx.eval_shape(lambda: factory.build_model(config, run_manifest))
  graphdef, abs_params = nnx.split(model, nnx.Param)
  param_sh = sharding.param_shardings(abs_params, mesh, [tuple(r) for r in config.sharding_rules])
  values = ckpt_lib.read_checkpoint_params(os.path.join(workdir, "checkpoints"), step_n)
  names = export_lib.param_names(abs_params)
  missing = [n for n in names if n not in values]
  if missing:
    raise ValueError(f"checkpoint step {step_n} of {workdir} lacks {missing[:5]} of its model")
  params = jax.device_put(export_lib.params_tree(abs_params, values), param_sh)
  batch_sh = sharding.batch_sharding(mesh)

  task = tasks.get(config)
  _, eval_step = train.make_steps(graphdef, None, mesh, config,
                                  window=task.window(config, run_manifest))
  eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh), out_shardings=batch_sh)
  is_main = jax.process_index() == 0
  if config.task == "mp2":  # also the per-pair predictions, for song-bootstrap intervals
    rows = task.rows(eval_fn, params, data_dir, split, config, mesh)
    metrics = task.scores(rows, config, manifest)
    if is_main and rows:
      write_mp2_predictions(os.path.join(out, "predictions.npz"), rows, config, data_dir,
                            split, manifest)
  else:
    metrics = task.evaluate(eval_fn, params, data_dir, split, config, manifest, mesh)
  if is_main:
    atomic.write_json(os.path.join(out, "metrics.json"),
                      {"workdir": os.path.abspath(workdir), "step": step_n,
                       "data_dir": os.path.abspath(data_dir), "split": split,
                       "metrics": metrics}, indent=2, sort_keys=True)
    print(f"{split} {step_n:6d}  " + task.headline(metrics)
          + (f"  (n={int(metrics['n'])})" if "n" in metrics else ""), flush=True)
  if task.forecast_report:
    table = forecast_lib.report(eval_fn, params, data_dir, config, manifest, mesh, out,
                                split=split)
    if is_main:
      print(table, flush=True)
  if is_main:
    print(f"[evaluate] written to {out}", flush=True)
  return metrics


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "training run directory (config.json, checkpoints/)")
  flags.DEFINE_string("data", None, "dataset directory (default: the run's own data_dir)")
  flags.DEFINE_string("split", "test", "split of the dataset to score")
  flags.DEFINE_string("step", "latest", "checkpoint: latest, best (by the run's validation "
                      "metric) or a step number")
  flags.DEFINE_string("out", None, "output directory (default RUN/eval/<data>-<split>-step<N>)")
  flags.DEFINE_integer("eval_crops", None, "MP2: average the predictions of this many evenly "
                       "spaced crops of each clip (default: the run's input.eval_crops)")


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  from mpjax import distributed
  settings = distributed.settings("auto", None, None, None)  # SLURM, MPI, TPU pods, MPJAX_*
  if settings:
    jax.distributed.initialize(**settings)
  try:
    evaluate(f.workdir, f.data, f.split, f.step, f.out, f.eval_crops)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"mpjax.evaluate: {e}") from None


if __name__ == "__main__":
  define_flags()
  app.run(main)
