"""Inference bundle: what someone who did not train a model needs to use it.

    python -m mpjax.export --workdir=RUN --out=BUNDLE [--step=best|latest|N]

BUNDLE/
  bundle.json       the model and task config, region vocabulary, fbank settings and
                    normalisation, what the outputs mean (units, horizon, step), quantile levels,
                    per-region training distribution of the MP2 target, provenance (run, step,
                    metrics at that step, data manifest hash, git commit), mpjax/jax versions.
  params/           Orbax checkpoint of the parameters only, {path: array}: restorable onto any
                    mesh or device count (`load`). The source of truth.
  model.jax_export  the inference program serialized with `jax.export` (StableHLO), lowered for
                    cpu, cuda and tpu with a symbolic batch size and the portable XLA attention
                    (fused-attention custom calls carry no compatibility guarantee). Parameters
                    are its first argument, not constants. It loads without mpjax:

      exp = jax.export.deserialize(open("BUNDLE/model.jax_export", "rb").read())
      params = orbax.checkpoint.StandardCheckpointer().restore("BUNDLE/params")
      out = exp.call(params, fbank, regions[, prefix, prefix_mask])
      # {"prediction": MP2 [b, R] | MP3 [b, R, H, Q], "embedding": [b, hidden]}

    Serialized programs load in a limited window of jax versions; rerun `export` to refresh
    the program from the parameters.

`load(BUNDLE)` rebuilds the mpjax model with the parameters (what `mpjax.predict` uses).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mpjax import atomic
from mpjax import checkpoint as ckpt_lib
from mpjax import provenance
from mpjax import sharding
from mpjax.audio import decode as decode_lib
from mpjax import records
from mpjax.input import tfrecord
from mpjax.models import factory

BUNDLE_FORMAT = 1
PLATFORMS = ("cpu", "cuda", "tpu")
PROGRAM = "model.jax_export"
PERCENTILES = 101  # points of each region's training distribution of the MP2 target


class BundleError(ValueError):
  """A bundle that is missing, damaged or from an incompatible version; says which file."""


# ------------------------------------------------------------------------------------------------
# Reading a run
# ------------------------------------------------------------------------------------------------


def run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run directory "
                            "(mpjax.main writes config.json there)") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def _metrics_rows(workdir: str) -> dict[int, dict]:
  """step -> the merged metrics.jsonl rows of that step."""
  rows: dict[int, dict] = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue
        rows.setdefault(int(r.get("step", -1)), {}).update(r)
  return rows


def choose_step(workdir: str, which: str, config) -> tuple[int, dict]:
  """(checkpoint step, val metrics logged at that step) for --step=best|latest|N.

  best: the kept checkpoint with the best `config.checkpoint.best_metric` (validation only;
  never a test metric), else the latest."""
  ckdir = os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckdir) if s.isdigit()) if os.path.isdir(ckdir) else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckdir}")
  rows = _metrics_rows(workdir)
  val = lambda s: {k: v for k, v in rows.get(s, {}).items() if k.startswith("val/")}  # noqa: E731
  if which == "latest":
    return steps[-1], val(steps[-1])
  if which == "best":
    metric = config.checkpoint.best_metric
    if metric.startswith("test/"):
      raise ValueError(f"config.checkpoint.best_metric={metric!r}: choose on validation only")
    scored = [(rows[s][metric], s) for s in steps if metric in rows.get(s, {})]
    if not scored:
      return steps[-1], val(steps[-1])
    pick = max if config.checkpoint.best_mode == "max" else min
    return pick(scored)[1], val(pick(scored)[1])
  if not which.isdigit() or int(which) not in steps:
    raise ValueError(f"--step={which!r}: choose best, latest or one of the kept steps {steps}")
  return int(which), val(int(which))


def _region_distribution(data_dir: str, manifest: dict) -> dict[str, list[float]]:
  """region -> PERCENTILES evenly spaced quantiles of the train split's finite MP2 targets."""
  values: dict[str, list[float]] = {r: [] for r in manifest["regions"]}
  paths = [os.path.join(data_dir, s) for s in manifest["shards"].get("train", [])]
  records = tfrecord.TFRecordSource(paths) if paths else []
  for i in range(len(records)):
    ex = tfrecord.decode_example(records[i])
    for code, v in zip(ex["regions"], ex["mp2_target"]):
      code = code.decode() if isinstance(code, bytes) else str(code)
      if np.isfinite(v) and code in values:
        values[code].append(float(v))
  q = np.linspace(0, 1, PERCENTILES)
  return {r: [round(float(x), 6) for x in np.quantile(v, q)] if v else []
          for r, v in values.items()}


# ------------------------------------------------------------------------------------------------
# The model and its program
# ------------------------------------------------------------------------------------------------


def inference_config(config) -> ml_collections.ConfigDict:
  """The run's config for inference: the portable XLA attention, no patchout."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.attention = "xla"
  c.model.patchout_time = c.model.patchout_freq = 0.0
  return c


def abstract_model(meta: dict):
  """(graphdef, abstract params) of the bundle's model (no parameter is allocated)."""
  config = ml_collections.ConfigDict(meta["config"])
  manifest = {"regions": meta["regions"], "horizon": meta["targets"]["horizon"]}
  model = nnx.eval_shape(lambda: factory.build_model(config, manifest))
  return nnx.split(model, nnx.Param)


def param_names(abs_params) -> list[str]:
  return [sharding.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(abs_params)]


def params_tree(abs_params, flat: dict):
  """The model's parameter state (the structure of `abs_params`) from {name: array}."""
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abs_params),
                                      [flat[n] for n in param_names(abs_params)])


def infer(model, fbank, regions, prefix=None, prefix_mask=None) -> dict:
  """{"prediction", "embedding"} of one batch: MP2 [b, R] log1p streams; MP3 [b, R, H, Q]
  quantiles of log1p streams per step; embedding [b, hidden] the pooled audio encoder output
  ((cls + dist) / 2, no region), or absent for an MP3 without audio."""
  if hasattr(model, "prefix_steps"):
    out = {"prediction": model(fbank, regions, prefix, prefix_mask)}
  else:
    out = {"prediction": model(fbank, regions)}
  if getattr(model, "encoder", None) is not None:
    out["embedding"] = model.encoder(fbank).astype(jnp.float32)
  return out


def input_specs(meta: dict, batch) -> list[jax.ShapeDtypeStruct]:
  """Shapes of the program's inputs after the params: fbank, regions (all of the bundle's
  regions, in vocabulary order), and for MP3 with k > 0 prefix steps, prefix and its mask."""
  t, f = meta["fbank"]["input_tdim"], meta["fbank"]["mel_bins"]
  r = len(meta["regions"])
  specs = [jax.ShapeDtypeStruct((batch, t, f), jnp.float32),
           jax.ShapeDtypeStruct((batch, r), jnp.int32)]
  k = meta["task"] == "mp3" and meta["targets"]["prefix_steps"]
  if k:
    specs += [jax.ShapeDtypeStruct((batch, r, k), jnp.float32)] * 2
  return specs


def export_program(meta: dict, platforms=PLATFORMS) -> bytes:
  """The serialized `jax.export` program: (params {name: array}, *inputs) -> outputs."""
  graphdef, abs_params = abstract_model(meta)
  names = param_names(abs_params)

  def program(params, *inputs):
    return infer(nnx.merge(graphdef, params_tree(abs_params, params)), *inputs)

  param_specs = {n: jax.ShapeDtypeStruct(x.shape, x.dtype)
                 for n, x in zip(names, jax.tree.leaves(abs_params))}
  batch, = jax.export.symbolic_shape("b")
  exported = jax.export.export(jax.jit(program), platforms=tuple(platforms))(
      param_specs, *input_specs(meta, batch))
  return bytes(exported.serialize())


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def describe(workdir: str, config, manifest: dict, step: int, metrics: dict) -> dict:
  """bundle.json's content."""
  data_dir = config.data_dir
  with open(os.path.join(data_dir, "manifest.json"), "rb") as f:
    manifest_sha = hashlib.sha256(f.read()).hexdigest()
  task = config.task
  quantiles = factory.quantiles_of(config) if task == "mp3" else None
  horizon = int(manifest["horizon"])
  k = int(config.mp3.prefix_steps) if task == "mp3" else 0
  period = manifest.get("period", "weekly")
  defs = manifest.get("definitions", {})
  if task == "mp2" and factory.mp2_targets(config)[0] != "mp2":
    raise ValueError(f"{workdir}: config.mp2.targets = {factory.mp2_targets(config)}: the bundle "
                     "serves the summed-streams target; export a run whose first target is 'mp2' "
                     "(the other heads are trained but not exported)")
  if task == "mp2":
    output = (f"log1p(streams summed over the first {manifest.get('mp2_weeks')} chart "
              f"{'weeks' if period == 'weekly' else 'days'} after the debut in the region); "
              f"streams = expm1(prediction)")
  else:
    unit = "week" if period == "weekly" else "day"
    output = (f"quantiles {list(quantiles) if quantiles else [0.5]} of log1p(streams in the "
              f"{unit}) for steps {k}..{horizon - 1} after the debut (one step = one {unit}, "
              f"step 0 = the debut {unit}), given the first {k} observed steps")
  return {
      "format": BUNDLE_FORMAT,
      "task": task,
      "config": inference_config(config).to_dict(),
      "regions": list(manifest["regions"]),
      "region_mode": config.region_mode,
      "fbank": {**manifest["fbank"], "input_tdim": int(config.model.input_tdim),
                "min_seconds": decode_lib.MIN_SECONDS},
      "targets": {"output": output, "horizon": horizon, "period": period,
                  "mp2_weeks": manifest.get("mp2_weeks"), "prefix_steps": k,
                  "quantiles": list(quantiles) if quantiles else None,
                  "definitions": {n: defs[n] for n in ("mp2_target", "series", "series_mask",
                                                       "debut") if n in defs}},
      "region_mp2_distribution": {
          "what": f"{PERCENTILES} evenly spaced quantiles (0 %, 1 %, ..., 100 %) of each "
                  "region's train-split MP2 target (log1p streams): a prediction's percentile",
          "quantiles": _region_distribution(data_dir, manifest)},
      "program": {"file": PROGRAM, "platforms": list(PLATFORMS),
                  "inputs": ["params {name: array}", "fbank [b, input_tdim, mel_bins] float32 "
                             "normalised", "regions [b, R] int32 (all regions, vocabulary order)"]
                  + (["prefix [b, R, k] float32 log1p streams",
                      "prefix_mask [b, R, k] float32 (1 observed)"] if k else []),
                  "outputs": ["prediction", "embedding [b, hidden] (pooled audio encoder)"]},
      "provenance": {"workdir": os.path.abspath(workdir), "step": step, "val_metrics": metrics,
                     "data_dir": os.path.abspath(data_dir), "data_manifest_sha256": manifest_sha,
                     "git_commit": provenance.git_commit(),
                     "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
      "versions": provenance.versions(),
  }


def export(workdir: str, out: str, step: str = "best", *, platforms=PLATFORMS) -> dict:
  """Writes the bundle of run `workdir` into `out` (replacing a bundle there); returns
  bundle.json's content."""
  config = run_config(workdir)
  if config.task == "mp3" and (config.mp3.get("weekday_input", False)
                               or config.mp3.get("origins", 0) or config.mp3.get("window", 0)
                               or config.mp3.get("floor_input", False)):
    # The bundle's program takes no weekday, origin, known-day or floor input yet.
    raise ValueError(f"{workdir}: an MP3 with mp3.weekday_input, origins, window or "
                     "floor_input set cannot be exported yet")
  manifest = records.load_manifest(config.data_dir)
  step_n, metrics = choose_step(workdir, str(step), config)
  print(f"[export] {workdir}: step {step_n} ({step}); "
        + (", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())
                     if isinstance(v, float) and k.count("/") == 1) or "no val metrics"),
        flush=True)
  meta = describe(workdir, config, manifest, step_n, metrics)
  _, abs_params = abstract_model(meta)
  names = param_names(abs_params)
  params = ckpt_lib.read_checkpoint_params(os.path.join(workdir, "checkpoints"), step_n)
  expected = {n: (tuple(x.shape), np.dtype(x.dtype)) for n, x in
              zip(names, jax.tree.leaves(abs_params))}
  missing = sorted(set(expected) - set(params))
  extra = sorted(set(params) - set(expected))
  wrong = [f"{n} {tuple(params[n].shape)} != {expected[n][0]}" for n in expected
           if n in params and tuple(params[n].shape) != expected[n][0]]
  if missing or extra or wrong:
    raise ValueError(f"checkpoint step {step_n} of {workdir} does not match its config.json "
                     f"model: missing {missing[:5]}, unexpected {extra[:5]}, shapes {wrong[:5]}")
  params = {n: np.asarray(params[n], expected[n][1]) for n in names}

  if os.path.exists(out) and os.listdir(out) and not os.path.exists(
      os.path.join(out, "bundle.json")):
    raise FileExistsError(f"--out {out} is a non-empty directory that is not a bundle")
  tmp = f"{out.rstrip('/')}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    import orbax.checkpoint as ocp
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(os.path.abspath(tmp), "params"), params)
    ckptr.wait_until_finished()
    print(f"[export] lowering the inference program for {', '.join(platforms)} ...", flush=True)
    atomic.write_bytes(os.path.join(tmp, PROGRAM), export_program(meta, platforms))
    meta["program"]["platforms"] = list(platforms)
    atomic.write_json(os.path.join(tmp, "bundle.json"), meta, indent=1)
    if "cpu" in platforms:
      meta["self_check"] = self_check(tmp)
      print(f"[export] self-check: the serialized program and the mpjax model from the saved "
            f"parameters differ by at most {meta['self_check']['max_abs_diff']:.2e} "
            f"(float32, random batch of 2)", flush=True)
      atomic.write_json(os.path.join(tmp, "bundle.json"), meta, indent=1)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(f"[export] bundle written to {out}", flush=True)
  return meta


# ------------------------------------------------------------------------------------------------
# Loading a bundle
# ------------------------------------------------------------------------------------------------


def read_meta(bundle: str) -> dict:
  """bundle.json, checked: a bundle of another format version is refused."""
  path = os.path.join(bundle, "bundle.json")
  try:
    with open(path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise BundleError(f"{path} not found: --model must be a directory written by "
                      "`python -m mpjax.export`") from None
  except json.JSONDecodeError as e:
    raise BundleError(f"{path}: not valid JSON ({e})") from None
  fmt = meta.get("format") if isinstance(meta, dict) else None
  if fmt != BUNDLE_FORMAT:
    raise BundleError(f"{path}: bundle format {fmt!r}, this mpjax reads format {BUNDLE_FORMAT}; "
                      f"re-export it with this version (python -m mpjax.export) from its run "
                      f"{(meta.get('provenance') or {}).get('workdir', '?') if isinstance(meta, dict) else '?'}")
  missing = [k for k in ("task", "config", "regions", "fbank", "targets") if k not in meta]
  if missing:
    raise BundleError(f"{path}: missing field(s) {missing}")
  return meta


def load(bundle: str, mesh: jax.sharding.Mesh | None = None):
  """(model, meta): the mpjax model with the bundle's parameters, replicated over `mesh`
  (default: this process's first device), whatever device count exported it."""
  import orbax.checkpoint as ocp
  meta = read_meta(bundle)
  graphdef, abs_params = abstract_model(meta)
  names = param_names(abs_params)
  where = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh is not None
           else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  target = {n: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where)
            for n, x in zip(names, jax.tree.leaves(abs_params))}
  path = os.path.join(os.path.abspath(bundle), "params")
  try:
    params = ocp.StandardCheckpointer().restore(path, target)
  except Exception as e:  # orbax raises several types for a missing / mismatched tree
    raise BundleError(f"{path}: cannot restore the parameters for this bundle's model "
                      f"({type(e).__name__}: {str(e)[:300]})") from None
  return nnx.merge(graphdef, params_tree(abs_params, params)), meta


def self_check(bundle: str, batch: int = 2, tolerance: float = 1e-3) -> dict:
  """Runs the serialized program and the mpjax model rebuilt from the saved parameters on the
  same random input; raises when they disagree by more than `tolerance`."""
  import orbax.checkpoint as ocp
  model, meta = load(bundle)
  with open(os.path.join(bundle, PROGRAM), "rb") as f:
    program = jax.export.deserialize(bytearray(f.read()))
  params = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(bundle), "params"))
  rng = np.random.default_rng(0)
  args = []
  for spec in input_specs(meta, batch):
    if spec.dtype == jnp.int32:
      args.append(np.tile(np.arange(spec.shape[1], dtype=np.int32), (batch, 1)))
    else:
      args.append(rng.normal(size=spec.shape).astype(np.float32))
  if len(args) == 4:  # prefix values in log1p streams, mask 0/1
    args[2] = (np.abs(args[2]) * 2 + 10).astype(np.float32)
    args[3] = (args[3] > 0).astype(np.float32)
  a = jax.device_get(program.call(params, *args))
  b = jax.device_get(infer(model, *args))
  diff = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in b)
  if not diff <= tolerance:
    raise RuntimeError(f"{bundle}: the exported program differs from the model by {diff:.3g} "
                       f"(> {tolerance}); the bundle is not usable")
  return {"max_abs_diff": diff, "batch": batch, "platform": jax.default_backend()}


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def define_flags():
  """The CLI's flags; defined only when run as a program (mpjax.main imports this
  module and has flags of the same names)."""
  flags.DEFINE_string("workdir", None, "training run directory (config.json, "
                      "checkpoints/, metrics.jsonl)")
  flags.DEFINE_string("out", None, "bundle directory to write (an existing bundle there "
                      "is replaced)")
  flags.DEFINE_string("step", "best", "which checkpoint: best (by the run's validation "
                      "metric), latest, or a step number")


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS.workdir or not flags.FLAGS.out:
    raise app.UsageError("--workdir and --out are required")
  try:
    export(flags.FLAGS.workdir, flags.FLAGS.out, flags.FLAGS.step)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    raise SystemExit(f"mpjax.export: {e}") from None


if __name__ == "__main__":
  define_flags()
  app.run(main)
