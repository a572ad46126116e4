"""The train loop, the same for every task (MP2, MP3, SSL: `mpjax.tasks`). Reads top to bottom:

  1. data       manifest, mesh, Grain pipeline
  2. model      shapes via nnx.eval_shape, then a jitted init with out_shardings; the optimizer
  3. steps      one donated, sharded train step; an eval step
  4. restore    latest checkpoint (state + data iterator) or init_from
  5. loop       logs (loss, steps/s, examples/s, TFLOP/s, ETA), eval, checkpoints,
                NaN/Inf guard, SIGTERM -> checkpoint and exit 0
  6. test       the test split; for forecasting tasks the report against every baseline
                (`mpjax.forecast`: metrics JSON, markdown table, fan charts in WORKDIR/forecast)
  7. done       WORKDIR/final_metrics.json (a run that finished all its steps)

Several processes run this same function (`jax.distributed`, mpjax.main): every process joins
every jitted step, eval gather and checkpoint save; only process 0 writes logs and reports.
Anything that shapes the program (the head's initial level) comes from the manifest, never
from one process's own data.
"""
from __future__ import annotations

import math
import os
import re
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from mpjax import atomic
from mpjax import checkpoint as ckpt_lib
from mpjax import cpu as cpu_lib
from mpjax import forecast as forecast_lib
from mpjax import records
from mpjax import sharding
from mpjax import summary
from mpjax import tasks
from mpjax.input import pipeline
from mpjax.models import factory
from mpjax.models import regions as regions_lib


class TrainingDiverged(RuntimeError):
  pass


# ------------------------------------------------------------------------------------------------
# Config checks: fail at start, naming the field
# ------------------------------------------------------------------------------------------------


def check_config(config):
  def bad(field, why):
    raise ValueError(f"config.{field}: {why}")

  task = tasks.get(config)
  if config.region_mode not in regions_lib.MODES:
    bad("region_mode", f"{config.region_mode!r} is not one of {regions_lib.MODES}")
  o = config.optim
  if not o.lr > 0:
    bad("optim.lr", f"{o.lr} must be > 0")
  if o.weight_decay < 0:
    bad("optim.weight_decay", f"{o.weight_decay} must be >= 0")
  if o.schedule not in ("cosine", "step", "constant"):
    bad("optim.schedule", f"{o.schedule!r}: choose cosine, step or constant")
  if o.warmup_steps < 0 or o.warmup_steps >= max(config.total_steps, 1):
    bad("optim.warmup_steps", f"{o.warmup_steps} must be in [0, total_steps={config.total_steps})")
  if o.grad_accum < 1:
    bad("optim.grad_accum", f"{o.grad_accum} must be >= 1")
  if not 0 <= o.layer_decay < 1 + 1e-9:
    bad("optim.layer_decay", f"{o.layer_decay} must be in [0, 1] (0 = off)")
  if config.total_steps < 1:
    bad("total_steps", f"{config.total_steps} must be >= 1")
  m = config.model
  patch = 16
  if m.input_tdim < patch:
    bad("model.input_tdim", f"{m.input_tdim} frames is shorter than one {patch}-frame patch")
  if config.input.batch_size % jax.process_count():
    bad("input.batch_size", f"{config.input.batch_size} not divisible by {jax.process_count()} processes")
  for k in ("log_every", "eval_every"):
    if config[k] < 1:
      bad(k, f"{config[k]} must be >= 1")
  if config.init_from and not os.path.exists(config.init_from):
    bad("init_from", f"{config.init_from!r} does not exist (a checkpoint directory or a weights "
        "file; `--config.init_from=` with nothing after '=' unsets it)")
  task.check(config)


# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------


def lr_schedule(config):
  o = config.optim
  decay_steps = max(config.total_steps - o.warmup_steps, 1)
  if o.schedule == "cosine":
    after = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.min_lr_ratio)
  elif o.schedule == "step":
    after = optax.piecewise_constant_schedule(
        o.lr, {int(b * decay_steps): o.step_factor for b in o.step_boundaries})
  else:
    after = optax.constant_schedule(o.lr)
  if o.warmup_steps == 0:
    return after
  warm = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
  return optax.join_schedules([warm, after], [o.warmup_steps])


def _layer_id(path: str, depth: int) -> int:
  m = re.match(r"encoder/blocks/(\d+)/", path)
  if m:
    return int(m.group(1)) + 1
  if path.startswith("encoder/") and not path.startswith("encoder/norm"):
    return 0  # patch embedding, cls/dist tokens, positions
  return depth + 1  # final norm, head, region table


def make_optimizer(config, params, depth: int):
  """AdamW chain. Parameters under the task's frozen prefix (MP3 with mp3.freeze_encoder:
  `encoder/`) get zero updates and no weight decay: only the rest trains."""
  o = config.optim
  no_decay = re.compile(r".*(bias|scale|cls_token|dist_token|pos_embed|table|mask_token)$")
  decay_mask = jax.tree_util.tree_map_with_path(
      lambda p, _: not no_decay.fullmatch(sharding.path_str(p)), params)
  chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm else []
  chain.append(optax.scale_by_adam(b1=o.b1, b2=o.b2))
  if o.layer_decay:
    scales = jax.tree_util.tree_map_with_path(
        lambda p, _: o.layer_decay ** (depth + 1 - _layer_id(sharding.path_str(p), depth)), params)
    chain.append(optax.GradientTransformation(
        lambda _: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree.map(lambda a, f: a * f, u, scales), s)))
  chain.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
  chain.append(optax.scale_by_learning_rate(lr_schedule(config)))
  tx = optax.chain(*chain)
  frozen = tasks.get(config).frozen(config)
  if frozen:
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if sharding.path_str(p).startswith(frozen) else "train", params)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if o.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum)
  return tx


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------


def make_steps(graphdef, tx, mesh, config, window: int | None = None):
  """(train_step, eval_step) of the config's task. window: the series length a forecasting task
  sees (`tasks.get(config).window`; None = the batch's)."""
  task = tasks.get(config)
  m = config.model
  patchout = bool(m.patchout_time or m.patchout_freq)

  def train_step(state, batch):
    # Per-step randomness from (seed, step), so a resumed run draws the same: patchout here,
    # the task's own (forecast origins, masked patches) in train_batch.
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"]) if patchout else None
    batch = task.train_batch(batch, config, state["step"], window)

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      fbank = sharding.constrain_batch(batch["fbank"], mesh)
      return task.loss(task.forward(model, batch, config, fbank, key), batch, config)

    # Traced under the mesh: kernels opaque to XLA's partitioner (cuDNN/splash attention)
    # then run per batch shard (mpjax.ops.attention).
    with sharding.tracing_mesh(mesh):
      loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite}

  def eval_step(params, batch):
    batch = task.eval_batch(batch, config, window)
    with sharding.tracing_mesh(mesh):
      return task.eval_output(task.forward(nnx.merge(graphdef, params), batch, config), config)

  return train_step, eval_step


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


# ------------------------------------------------------------------------------------------------
# Train and evaluate
# ------------------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains until config.total_steps (resuming from WORKDIR/checkpoints); returns final eval."""
  check_config(config)
  task = tasks.get(config)
  os.makedirs(workdir, exist_ok=True)
  jit_options = cpu_lib.setup()  # XLA:CPU options on the CPU backend; None elsewhere
  is_main = jax.process_index() == 0
  if is_main:  # what mpjax.export rebuilds the model from
    atomic.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  log = summary.MetricLogger(workdir, tensorboard=config.tensorboard, is_main=is_main)

  # 1. Data ---------------------------------------------------------------------------------
  data_dir = config.data_dir
  manifest = records.load_manifest(data_dir)
  task.check_data(config, manifest, data_dir)
  mesh = make_mesh(config)
  train_iter = iter(pipeline.make_dataset(data_dir, "train", cfg=config.input,
                                          augment=config.augment, seed=config.seed, train=True))

  # 2. Model and optimizer: abstract shapes, shardings, jitted init ---------------------------
  graphdef, tx, state, abs_state, state_sh = init_state(config, manifest, mesh)

  # 3. Steps --------------------------------------------------------------------------------
  train_step, eval_step = make_steps(graphdef, tx, mesh, config,
                                     window=task.window(config, manifest))
  batch_sh = sharding.batch_sharding(mesh)
  train_step = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, None), donate_argnums=0,
                       compiler_options=jit_options)
  eval_fn = jax.jit(eval_step, in_shardings=(state_sh["params"], batch_sh),
                    out_shardings=batch_sh)

  def evaluate(params, split):
    return task.evaluate(eval_fn, params, data_dir, split, config, manifest, mesh)

  # 4. Restore (state + data position) or init_from -----------------------------------------
  ck = checkpointer(config, workdir)
  state = restore(config, ck, graphdef, state, abs_state, state_sh, train_iter, log)

  # 5. Loop ---------------------------------------------------------------------------------
  final = {}
  try:
    with Preemption() as stop:
      step = int(jax.device_get(state["step"]))
      meter = Meter(config, step)
      while step < config.total_steps:
        batch = sharding.to_global(next(train_iter), mesh)
        if meter.flops is None:
          meter.flops = _step_flops(train_step, state, batch)
        state, out = train_step(state, batch)
        step += 1
        stop.check(step)
        meter.add(out)
        if step % config.log_every == 0 or step == config.total_steps:
          log.write(step, meter.row(step, ck), prefix="train/")
        evaluated = None
        if step % config.eval_every == 0 or step == config.total_steps:
          evaluated = evaluate(state["params"], "val")
          log.write(step, evaluated, prefix="val/")
          final = {f"val/{k}": v for k, v in evaluated.items()}
          if is_main:
            print(f"eval  {step:6d}  val " + task.headline(evaluated), flush=True)
        if (step % config.checkpoint.every == 0 or step == config.total_steps or stop.requested
            or evaluated is not None):
          save(ck, step, state, train_iter, evaluated)
        if stop.requested:
          ck.wait()
          print(f"SIGTERM: checkpoint saved at step {step}; exiting.", flush=True)
          break

      # 6. Test, the forecast report, final_metrics.json -------------------------------------
      if step >= config.total_steps and not stop.requested:
        report = lambda out: forecast_lib.report(eval_fn, state["params"], data_dir, config,  # noqa: E731
                                                 manifest, mesh, out)
        final = run_test(config, workdir, step, final, evaluate, state["params"], log, report)
  finally:
    ck.close()
    log.close()
  return final


# ------------------------------------------------------------------------------------------------
# The loop's parts
# ------------------------------------------------------------------------------------------------


def make_mesh(config):
  """config.mesh over the first config.num_devices devices (all when unset)."""
  n_dev = config.get("num_devices") or len(jax.devices())
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:n_dev])
  if jax.process_index() == 0:
    print(f"mesh {dict(mesh.shape)} over {mesh.devices.size} devices, {jax.process_count()} "
          f"process(es); global batch {config.input.batch_size} "
          f"({config.input.batch_size // jax.process_count()} per process)", flush=True)
  return mesh


def checkpointer(config, workdir: str) -> ckpt_lib.Checkpointer:
  c = config.checkpoint
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep_latest=c.keep_latest,
                               keep_best=c.keep_best, best_metric=c.best_metric,
                               best_mode=c.best_mode, use_async=c.use_async)


def run_test(config, workdir, step, final, evaluate, params, log, forecast_report) -> dict:
  """After the last step: val (again, when the run resumed at the end), the test split, for a
  forecasting task the report against every baseline (WORKDIR/forecast; every process
  evaluates its share, process 0 writes), then final_metrics.json, the mark of a finished run
  (launch/sweep.py skips points that have it). Returns the final metrics."""
  task = tasks.get(config)
  is_main = jax.process_index() == 0
  if not final:  # resumed at the end (e.g. killed during the test eval): val as well
    final = {f"val/{k}": v for k, v in evaluate(params, "val").items()}
  metrics = evaluate(params, "test")
  log.write(step, metrics, prefix="test/")
  final = {**final, **{f"test/{k}": v for k, v in metrics.items()}}
  if is_main and metrics:
    print(f"test  {step:6d}  " + task.headline(metrics) + f"  (n={int(metrics['n'])})",
          flush=True)
  if task.forecast_report:
    table = forecast_report(os.path.join(workdir, "forecast"))
    if is_main:
      print(table, flush=True)
  if is_main:
    atomic.write_json(os.path.join(workdir, "final_metrics.json"),
                      {"step": step, "metrics": final}, indent=2, sort_keys=True)
  return final


def init_state(config, manifest: dict, mesh):
  """(graphdef, tx, state, abstract state, state shardings): the model's shapes from
  nnx.eval_shape, its parameters' shardings from config.sharding_rules, then one jitted init
  that writes every array straight into its shard. The head starts at the train split's mean
  target (manifest statistics: the same value, so the same program, on every process)."""
  head_bias = tasks.get(config).head_bias(config, records.target_stats(config.data_dir, manifest))

  def make_model(seed):
    return factory.build_model(config, manifest, seed=seed, head_bias=head_bias)

  abstract = nnx.eval_shape(lambda: make_model(config.seed))
  graphdef, abs_params = nnx.split(abstract, nnx.Param)
  param_sh = sharding.param_shardings(abs_params, mesh, [tuple(r) for r in config.sharding_rules])
  tx = make_optimizer(config, abs_params, factory.model_config(config).depth)

  def init(seed):
    params = nnx.state(make_model(seed), nnx.Param)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  abs_state = jax.eval_shape(lambda: init(config.seed))
  state_sh = {"params": param_sh,
              "opt_state": _follow_params(abs_state["opt_state"], abs_params, param_sh, mesh),
              "step": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())}
  with jax.set_mesh(mesh):
    state = jax.jit(init, static_argnums=0, out_shardings=state_sh)(config.seed)
  return graphdef, tx, state, abs_state, state_sh


def restore(config, ck, graphdef, state, abs_state, state_sh, train_iter, log):
  """The latest checkpoint (state and data position) when there is one, into this run's mesh
  whatever mesh or process count wrote it (the data position translated from the step when the
  process count changed); else the fresh state, with config.init_from's weights when set."""
  if ck.latest_step() is not None:
    local_batch = config.input.batch_size // jax.process_count()
    step0, state = ck.restore(
        _with_shardings(abs_state, state_sh), train_iter,
        data_state_at=lambda s: pipeline.iterator_state_at(train_iter, s, local_batch))
    log.resume(step0)  # rows a killed run logged after this checkpoint are logged again
    logging.info("resumed from step %d (%s)", step0, ck.directory)
  elif config.init_from:
    model = nnx.merge(graphdef, state["params"])
    m = config.model
    report = ckpt_lib.init_from(model, config.init_from, input_fdim=m.input_fdim,
                                input_tdim=m.input_tdim, fstride=m.fstride, tstride=m.tstride)
    state["params"] = jax.device_put(nnx.state(model, nnx.Param), state_sh["params"])
    logging.info("init_from %s: %d loaded; re-initialised (shape differs): %s; fresh: %s",
                 config.init_from, len(report["loaded"]), report["reinit"], report["absent"])
    if jax.process_index() == 0:
      print(f"init_from {config.init_from}: {len(report['loaded'])} parameters loaded, "
            f"{len(report['reinit'])} re-initialised (shape differs), "
            f"{len(report['absent'])} fresh", flush=True)
  return state


class Preemption:
  """SIGTERM (preemption, time limit) -> `requested`: the loop checkpoints and exits 0. With
  several processes every one must save at the same step: JAX's preemption service
  (jax.distributed) catches SIGTERM on any host and picks that step (`check`, every step)."""

  def __init__(self):
    self.requested = False
    self._sync = jax.process_count() > 1
    self._prev = None

  def __enter__(self):
    if not self._sync:
      self._prev = signal.getsignal(signal.SIGTERM)
      signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))
    return self

  def check(self, step: int):
    if self._sync and multihost_utils.reached_preemption_sync_point(step):
      self.requested = True

  def __exit__(self, *exc):
    if not self._sync and self._prev is not None:  # None: a handler set outside Python
      signal.signal(signal.SIGTERM, self._prev)
    return False


class Meter:
  """The train log line: mean loss, steps/s, examples/s, TFLOP/s, LR, ETA since the last line;
  raises TrainingDiverged on a non-finite loss or gradient."""

  def __init__(self, config, step: int):
    self.config = config
    self.flops = None
    self.outs = []
    self.t_last, self.step_last = time.time(), step
    self.t_start, self.step_start = self.t_last, step

  def add(self, out):
    self.outs.append(out)

  def row(self, step: int, ck) -> dict:
    config = self.config
    vals = jax.device_get(self.outs)
    self.outs = []
    if not all(bool(v["finite"]) for v in vals):
      bad = [v for v in vals if not bool(v["finite"])][0]
      what = (f"loss {float(bad['loss'])}" if not math.isfinite(float(bad["loss"]))
              else f"gradient norm {float(bad['grad_norm'])} (loss {float(bad['loss']):.4g})")
      raise TrainingDiverged(
          f"non-finite {what} by step {step}; {_last_good(ck)}. Lower optim.lr or check the data.")
    now = time.time()
    sps = (step - self.step_last) / max(now - self.t_last, 1e-9)
    rate = (step - self.step_start) / max(now - self.t_start, 1e-9)
    eta = (config.total_steps - step) / max(rate, 1e-9)
    row = {"loss": float(np.mean([v["loss"] for v in vals])),
           "grad_norm": float(vals[-1]["grad_norm"]), "steps_per_s": sps,
           "examples_per_s": sps * config.input.batch_size,
           "tflops_per_s": (self.flops or 0) * sps / 1e12,
           "lr": float(lr_schedule(config)(step)), "eta_min": eta / 60}
    if jax.process_index() == 0:
      print(f"step {step:6d}/{config.total_steps}  loss {row['loss']:.4f}  "
            f"{row['steps_per_s']:.2f} steps/s  {row['examples_per_s']:.1f} ex/s  "
            f"{row['tflops_per_s']:.3f} TFLOP/s  lr {row['lr']:.2e}  ETA {eta / 60:.1f} min",
            flush=True)
    self.t_last, self.step_last = now, step
    return row


_finite = jax.jit(all_finite)


def save(ck, step: int, state, train_iter, evaluated: dict | None):
  """A checkpoint of the state and the data position (with the val metrics, for keep-best),
  never of non-finite parameters."""
  if not bool(_finite(state["params"])):
    raise TrainingDiverged(f"non-finite parameters at step {step}; not saved; {_last_good(ck)}.")
  metrics = {f"val/{k}": v for k, v in (evaluated or {}).items()} or None
  ck.save(step, state, train_iter, metrics=metrics, force=True)


def _last_good(ck) -> str:
  step = ck.latest_step()
  return (f"the last good checkpoint is step {step} in {ck.directory}" if step is not None
          else f"no checkpoint yet in {ck.directory}")


def _follow_params(opt_abs, abs_params, param_sh, mesh):
  """Optimizer-state shardings: a leaf at a parameter's path (suffix) with its shape gets the
  parameter's sharding (Adam moments); everything else (counts) is replicated."""
  shapes = {sharding.path_str(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abs_params)}
  by_path = {sharding.path_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_sh)}
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def one(path, leaf):
    name = sharding.path_str(path)
    for pname, s in by_path.items():
      if (name == pname or name.endswith("/" + pname)) and shapes[pname] == leaf.shape:
        return s
    return rep

  return jax.tree_util.tree_map_with_path(one, opt_abs)


def _with_shardings(abs_tree, sh_tree):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_tree, sh_tree)


def _step_flops(jitted, state, batch) -> float | None:
  """FLOPs of one train step from XLA's cost analysis (None where the backend has none)."""
  try:
    cost = jitted.lower(state, batch).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is optional diagnostics
    return None
