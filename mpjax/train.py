"""The train loop, shared by MP2 (config.task='mp2'), MP3 ('mp3') and the self-supervised
pretraining of the encoder ('ssl', `mpjax.models.ssl`). Reads top to bottom:

  1. data       manifest, Grain pipelines, mesh
  2. model      shapes via nnx.eval_shape, then a jitted init with out_shardings
  3. optimizer  AdamW, warmup + cosine/step decay, clipping, layer-wise LR decay, accumulation
  4. steps      one donated, sharded train step; an eval step
  5. restore    latest checkpoint (state + data iterator) or init_from
  6. loop       logs (loss, steps/s, examples/s, TFLOP/s, ETA), eval, checkpoints,
                NaN/Inf guard, SIGTERM -> checkpoint and exit 0
  7. MP3 only   the forecast evaluation on the test split against every baseline
                (`mpjax.forecast`): metrics JSON, markdown table, fan charts in WORKDIR/forecast
  8. done       WORKDIR/final_metrics.json (a run that finished all its steps)

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
from mpjax import forecast as forecast_lib
from mpjax import cpu as cpu_lib
from mpjax import metrics as metrics_lib
from mpjax import sharding
from mpjax import summary
from mpjax.input import pipeline
from mpjax.models import ast as ast_lib
from mpjax.models import mp2 as mp2_lib
from mpjax.models import mp3 as mp3_lib
from mpjax.models import regions as regions_lib
from mpjax.models import ssl as ssl_lib


class TrainingDiverged(RuntimeError):
  pass


TASKS = ("mp2", "mp3", "ssl")


# ------------------------------------------------------------------------------------------------
# Config checks: fail at start, naming the field
# ------------------------------------------------------------------------------------------------


def check_config(config):
  def bad(field, why):
    raise ValueError(f"config.{field}: {why}")

  if config.task not in TASKS:
    bad("task", f"{config.task!r}: choose one of {TASKS}")
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
  if config.task == "mp3":
    f = config.mp3
    if f.prefix_steps < 0:
      bad("mp3.prefix_steps", f"{f.prefix_steps} must be >= 0")
    q = list(f.quantiles) if f.quantiles else None
    if q is not None and (any(not 0 < v < 1 for v in q) or any(b <= a for a, b in zip(q, q[1:]))):
      bad("mp3.quantiles", f"{q}: need strictly increasing levels in (0, 1), or None (point)")
    if q is not None and 0.5 not in q:
      bad("mp3.quantiles", f"{q}: must include 0.5 (the point forecast)")
    if f.dec_depth < 1:
      bad("mp3.dec_depth", f"{f.dec_depth} must be >= 1")
    if f.censored_weight < 0:
      bad("mp3.censored_weight", f"{f.censored_weight} must be >= 0")
    if f.get("origins", 0) < 0 or f.get("window", 0) < 0:
      bad("mp3.origins", f"origins={f.get('origins')}, window={f.get('window')}: must be >= 0")
    if f.freeze_encoder and not f.audio:
      bad("mp3.freeze_encoder", "needs mp3.audio=True (there is no encoder to freeze)")
    if config.input.get("eval_crops", 1) != 1:
      bad("input.eval_crops", "MP3 evaluates one centre crop (set 1)")
  if config.task == "ssl":
    s = config.ssl
    try:
      ssl_lib.num_masked(model_config(config), s.mask_ratio)
    except ValueError as e:
      bad("ssl.mask_ratio", str(e))
    if s.cluster < 1:
      bad("ssl.cluster", f"{s.cluster} must be >= 1 (1 = random masking)")
    if s.recon_weight < 0:
      bad("ssl.recon_weight", f"{s.recon_weight} must be >= 0")
    if config.input.get("eval_crops", 1) != 1:
      bad("input.eval_crops", "SSL evaluates one centre crop (set 1)")


def model_config(config) -> ast_lib.ASTConfig:
  m = config.model
  return ast_lib.config_for(m.variant, fstride=m.fstride, tstride=m.tstride,
                            input_tdim=m.input_tdim, input_fdim=m.input_fdim, ln_eps=m.ln_eps,
                            dtype=m.dtype, attention=m.attention, scan=m.scan,
                            remat_policy=m.remat_policy, patchout_time=m.patchout_time,
                            patchout_freq=m.patchout_freq,
                            **({"depth": m.depth} if m.get("depth") else {}))


def build_model(config, manifest: dict, *, seed: int = 0, head_bias: float = 0.0):
  """The task's model (MP2, MP3 or SSAST) for a dataset with this manifest (regions, horizon)."""
  cfg = model_config(config)
  if config.task == "ssl":
    return ssl_lib.SSAST(cfg, rngs=nnx.Rngs(seed))
  num_regions = len(manifest["regions"])
  if config.task == "mp2":
    return mp2_lib.MP2(cfg, num_regions, config.region_mode, rngs=nnx.Rngs(seed),
                       head_bias=head_bias)
  f = config.mp3
  return mp3_lib.MP3(cfg, num_regions, config.region_mode,
                     horizon=forecast_lib.window_of(config, manifest), max_origin=f.get("origins", 0),
                     prefix_steps=f.prefix_steps, quantiles=forecast_lib.quantiles_of(config),
                     audio=f.audio, dec_depth=f.dec_depth, dec_heads=f.dec_heads or None,
                     freeze_encoder=f.freeze_encoder, level_init=head_bias,
                     weekday=f.get("weekday_input", False),
                     num_extrinsic=len(manifest["feature_names"]) if f.get("extrinsic_input") else 0,
                     rngs=nnx.Rngs(seed))


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
  """AdamW chain; with config.mp3.freeze_encoder the encoder's updates are zero (and its
  weights are not decayed): only the decoder and the region table train."""
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
  if config.task == "mp3" and config.mp3.freeze_encoder:
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if sharding.path_str(p).startswith("encoder/") else "train", params)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if o.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum)
  return tx


# ------------------------------------------------------------------------------------------------
# Loss and steps
# ------------------------------------------------------------------------------------------------


def mp2_loss(pred, batch):
  """Masked MSE over the (example, region) pairs with a target."""
  w = batch["mp2_weight"]
  sq = jnp.where(w > 0, (pred - batch["mp2"]) ** 2, 0.0) * w
  return sq.sum() / jnp.maximum(w.sum(), 1.0)


def forecast_window(batch, config, window: int | None, origin_key=None):
  """MP3's view of the series: steps [o, o + window) of the stored ones, with o = 0 (evaluation),
  or, given origin_key and mp3.origins = O > 0 (training augmentation), a random origin per
  (example, region), uniform over the o in [0, O] whose prefix holds an observed step (0 when
  none does). Returns the batch with series / series_mask / series_known replaced and 'origin'
  [B, R] int32 (steps since the debut of the first prefix step)."""
  out = dict(batch)
  s, m = batch["series"], batch["series_mask"]
  known = batch.get("series_known", m)
  window = window or s.shape[-1]
  o_max = int(config.mp3.get("origins", 0) or 0)
  if origin_key is None or not o_max:
    origin = jnp.zeros(s.shape[:-1], jnp.int32)
    out.update(series=s[..., :window], series_mask=m[..., :window],
               series_known=known[..., :window], origin=origin)
    return out
  k = max(config.mp3.prefix_steps, 1)
  obs = jnp.cumsum(jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(1, 0)]), axis=-1)
  o = jnp.arange(o_max + 1)
  valid = (obs[..., o + k] - obs[..., o]) > 0  # [B, R, O + 1]: prefix at o has a chart value
  logits = jnp.where(valid, 0.0, -jnp.inf)
  logits = jnp.where(valid.any(-1, keepdims=True), logits, jnp.where(o == 0, 0.0, -jnp.inf))
  origin = jax.random.categorical(origin_key, logits).astype(jnp.int32)
  idx = origin[..., None] + jnp.arange(window)
  take = lambda x: jnp.take_along_axis(x, idx, axis=-1)
  out.update(series=take(s), series_mask=take(m), series_known=take(known), origin=origin)
  return out


def with_mask(batch, config, key):
  """The batch with 'mask_idx' [B, M]: the patches SSL masks in each clip (`ssl_lib.mask_indices`),
  keyed by (key, the example's record index): the same clip at the same step gets the same mask
  whatever its row, which depends on the process count."""
  cfg = model_config(config)
  count = ssl_lib.num_masked(cfg, config.ssl.mask_ratio)
  keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(batch["record"])
  return dict(batch, mask_idx=ssl_lib.mask_indices(keys, cfg.grid, count, config.ssl.cluster))


def forward(model, batch, config, fbank=None, patchout_key=None):
  """The model's output for a batch (MP3: after `forecast_window`; SSL: after `with_mask`):
  MP2 [B, R]; MP3 [B, R, H, Q] (from the first k steps); SSL (contrast, recon, target)
  [B, M, P] each. patchout_key: training steps only (None: every patch, as at eval)."""
  fbank = batch["fbank"] if fbank is None else fbank
  if config.task == "ssl":
    return model(fbank, batch["mask_idx"])
  if config.task == "mp2":
    return model(fbank, batch["region_ids"], patchout_key=patchout_key)
  k = config.mp3.prefix_steps
  known = batch.get("series_known")
  return model(fbank, batch["region_ids"], batch["series"][..., :k], batch["series_mask"][..., :k],
               patchout_key=patchout_key, prefix_known=None if known is None else known[..., :k],
               weekday=batch.get("weekday"), origin=batch.get("origin"),
               extrinsic=batch.get("extrinsic"))


def task_loss(out, batch, config):
  if config.task == "ssl":
    return ssl_lib.loss(out, config.ssl.recon_weight)
  if config.task == "mp2":
    return mp2_loss(out, batch)
  f = config.mp3
  return mp3_lib.forecast_loss(out, batch["series"], batch["series_mask"],
                               prefix_steps=f.prefix_steps,
                               quantiles=forecast_lib.quantiles_of(config),
                               censored_weight=f.censored_weight,
                               series_known=batch.get("series_known"),
                               per_series=f.get("loss_per_series", False))


def make_steps(graphdef, tx, mesh, config, window: int | None = None):
  """(train_step, eval_step). window: MP3's series length (`forecast.window_of`; None = the
  batch's)."""
  m = config.model
  patchout = bool(m.patchout_time or m.patchout_freq)

  def train_step(state, batch):
    # One patchout draw per step, from (seed, step): a resumed run draws the same patches.
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"]) if patchout else None
    if config.task == "mp3":  # forecast origins likewise from (seed, step)
      origin_key = jax.random.fold_in(jax.random.key(config.seed + 7919), state["step"])
      batch = forecast_window(batch, config, window, origin_key)
    if config.task == "ssl":  # and the masked patches
      mask_key = jax.random.fold_in(jax.random.key(config.seed + 104729), state["step"])
      batch = with_mask(batch, config, mask_key)

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      fbank = sharding.constrain_batch(batch["fbank"], mesh)
      return task_loss(forward(model, batch, config, fbank, key), batch, config)

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
    if config.task == "mp3":
      batch = forecast_window(batch, config, window)
    if config.task == "ssl":  # the same masks at every eval: comparable val losses
      batch = with_mask(batch, config, jax.random.key(config.seed + 104729))
      with sharding.tracing_mesh(mesh):
        return jnp.stack(ssl_lib.losses(*forward(nnx.merge(graphdef, params), batch, config)), -1)
    with sharding.tracing_mesh(mesh):
      return forward(nnx.merge(graphdef, params), batch, config)

  return train_step, eval_step


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


# ------------------------------------------------------------------------------------------------
# Train and evaluate
# ------------------------------------------------------------------------------------------------


def evaluate(eval_fn, params, data_dir, split, config, manifest, mesh) -> dict[str, float]:
  """Flat metrics of the model on `split`: MP2 per-region regression metrics; MP3 forecast
  metrics (overall and per-region MAE) of the forecast window."""
  if config.task == "mp3":
    return forecast_lib.model_metrics(eval_fn, params, data_dir, split, config, manifest, mesh)
  if config.task == "ssl":
    return ssl_metrics(eval_fn, params, data_dir, split, config, mesh)
  parts = {k: [] for k in ("pred", "mp2", "mp2_weight", "region_ids", "record", "valid")}
  ds = pipeline.make_dataset(data_dir, split, cfg=config.input, augment=None, seed=config.seed,
                             train=False)
  for batch in ds:
    parts["pred"].append(pipeline.to_host(eval_fn(params, pipeline.to_global(batch, mesh)), mesh))
    for k in parts.keys() - {"pred"}:
      parts[k].append(batch[k])
  if not parts["pred"]:
    return {}
  # Every process's outputs with their own targets, in record order: the metrics are the same
  # whatever the number of processes.
  rows = pipeline.gather_rows({k: np.concatenate(v, 0) for k, v in parts.items()})
  real = np.flatnonzero(rows["valid"] > 0)
  order = real[np.argsort(rows["record"][real], kind="stable")]
  return metrics_lib.per_region(rows["pred"][order], rows["mp2"][order],
                                rows["mp2_weight"][order], rows["region_ids"][order],
                                manifest["regions"])


def ssl_metrics(eval_fn, params, data_dir, split, config, mesh) -> dict[str, float]:
  """SSL on `split` (fixed masks): loss, InfoNCE, reconstruction MSE, contrastive accuracy,
  averaged over clips; every process joins, the figures are global."""
  parts = {"pred": [], "valid": []}
  ds = pipeline.make_dataset(data_dir, split, cfg=config.input, augment=None, seed=config.seed,
                             train=False)
  for batch in ds:
    parts["pred"].append(pipeline.to_host(eval_fn(params, pipeline.to_global(batch, mesh)), mesh))
    parts["valid"].append(batch["valid"])
  if not parts["pred"]:
    return {}
  rows = pipeline.gather_rows({k: np.concatenate(v, 0) for k, v in parts.items()})
  pred = rows["pred"][rows["valid"] > 0].astype(np.float64)
  nce, mse, acc = pred.mean(0)
  return {"loss": float(nce + config.ssl.recon_weight * mse), "nce": float(nce),
          "mse": float(mse), "acc": float(acc), "n": float(len(pred))}


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains until config.total_steps (resuming from WORKDIR/checkpoints); returns final eval."""
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  jit_options = cpu_lib.setup()  # XLA:CPU options on the CPU backend; None elsewhere
  is_main = jax.process_index() == 0
  if is_main:  # what mpjax.export rebuilds the model from
    atomic.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  log = summary.MetricLogger(workdir, tensorboard=config.tensorboard, is_main=is_main)

  # 1. Data ---------------------------------------------------------------------------------
  data_dir = config.data_dir
  manifest = pipeline.load_manifest(data_dir)
  if config.task == "mp3":
    w, o = forecast_lib.window_of(config, manifest), config.mp3.get("origins", 0)
    if w + o > int(manifest["horizon"]) or w <= config.mp3.prefix_steps:
      raise ValueError(f"config.mp3: window {w} + origins {o} must fit the dataset's horizon "
                       f"{manifest['horizon']} ({data_dir}), and the window exceed prefix_steps "
                       f"{config.mp3.prefix_steps}; build with --horizon {w + o} or lower them")
  n_dev = config.get("num_devices") or len(jax.devices())
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:n_dev])
  if is_main:
    print(f"mesh {dict(mesh.shape)} over {mesh.devices.size} devices, {jax.process_count()} "
          f"process(es); global batch {config.input.batch_size} "
          f"({config.input.batch_size // jax.process_count()} per process)", flush=True)
  train_ds = pipeline.make_dataset(data_dir, "train", cfg=config.input, augment=config.augment,
                                   seed=config.seed, train=True)
  train_iter = iter(train_ds)
  batch_size = config.input.batch_size

  # 2. Model: abstract shapes, shardings, jitted init ----------------------------------------
  cfg = model_config(config)

  # Start the head at the train split's mean target (manifest statistics: the same value, so
  # the same program, on every process): the first steps learn structure, not the offset.
  head_bias = 0.0
  if config.task != "ssl":
    stats = pipeline.target_stats(data_dir, manifest)
    head_bias = stats["mp2_mean" if config.task == "mp2" else "series_mean"] or 0.0

  make_model = lambda seed: build_model(config, manifest, seed=seed, head_bias=head_bias)  # noqa: E731

  abstract = nnx.eval_shape(lambda: make_model(config.seed))
  graphdef, abs_params = nnx.split(abstract, nnx.Param)
  rules = [tuple(r) for r in config.sharding_rules]
  param_sh = sharding.param_shardings(abs_params, mesh, rules)
  tx = make_optimizer(config, abs_params, cfg.depth)

  def init_state(seed):
    params = nnx.state(make_model(seed), nnx.Param)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  abs_state = jax.eval_shape(lambda: init_state(config.seed))
  state_sh = {"params": param_sh,
              "opt_state": _follow_params(abs_state["opt_state"], abs_params, param_sh, mesh),
              "step": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())}
  with jax.set_mesh(mesh):
    state = jax.jit(init_state, static_argnums=0, out_shardings=state_sh)(config.seed)

  # 3/4. Steps ------------------------------------------------------------------------------
  train_step, eval_step = make_steps(
      graphdef, tx, mesh, config,
      window=forecast_lib.window_of(config, manifest) if config.task == "mp3" else None)
  batch_sh = sharding.batch_sharding(mesh)
  train_step = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, None), donate_argnums=0,
                       compiler_options=jit_options)
  eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh), out_shardings=batch_sh)
  finite_fn = jax.jit(all_finite)

  # 5. Restore or init_from -----------------------------------------------------------------
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             keep_latest=config.checkpoint.keep_latest,
                             keep_best=config.checkpoint.keep_best,
                             best_metric=config.checkpoint.best_metric,
                             best_mode=config.checkpoint.best_mode,
                             use_async=config.checkpoint.use_async)
  if ck.latest_step() is not None:
    # Into this run's mesh, whatever mesh or process count wrote it; the data position is
    # translated from the step when the process count changed.
    local_batch = batch_size // jax.process_count()
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
    state["params"] = jax.device_put(nnx.state(model, nnx.Param), param_sh)
    logging.info("init_from %s: %d loaded; re-initialised (shape differs): %s; fresh: %s",
                 config.init_from, len(report["loaded"]), report["reinit"], report["absent"])
    if is_main:
      print(f"init_from {config.init_from}: {len(report['loaded'])} parameters loaded, "
            f"{len(report['reinit'])} re-initialised (shape differs), "
            f"{len(report['absent'])} fresh", flush=True)

  # 6. Loop ---------------------------------------------------------------------------------
  stop = {"sigterm": False}
  # SIGTERM (preemption, time limit): checkpoint and exit 0. With several processes every one
  # must save at the same step: JAX's preemption service (jax.distributed) catches SIGTERM on
  # any host and picks that step (reached_preemption_sync_point, host-side, every step).
  sync_preemption = jax.process_count() > 1
  prev_handler = signal.getsignal(signal.SIGTERM)
  if not sync_preemption:
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("sigterm", True))
  step = int(jax.device_get(state["step"]))
  flops = None
  t_last, step_last = time.time(), step
  t_start, step_start = t_last, step
  losses = []
  final = {}
  try:
    while step < config.total_steps:
      batch = next(train_iter)
      gb = pipeline.to_global(batch, mesh)
      if flops is None:
        flops = _step_flops(train_step, state, gb)
      state, out = train_step(state, gb)
      step += 1
      if sync_preemption and multihost_utils.reached_preemption_sync_point(step):
        stop["sigterm"] = True
      losses.append(out)
      if step % config.log_every == 0 or step == config.total_steps:
        vals = jax.device_get(losses)
        losses = []
        if not all(bool(v["finite"]) for v in vals):
          bad = [v for v in vals if not bool(v["finite"])][0]
          what = (f"loss {float(bad['loss'])}" if not math.isfinite(float(bad["loss"]))
                  else f"gradient norm {float(bad['grad_norm'])} (loss {float(bad['loss']):.4g})")
          raise TrainingDiverged(
              f"non-finite {what} by step {step}; {_last_good(ck)}. Lower optim.lr or check "
              "the data.")
        now = time.time()
        sps = (step - step_last) / max(now - t_last, 1e-9)
        eta = (config.total_steps - step) / max((step - step_start) / max(now - t_start, 1e-9), 1e-9)
        row = {"loss": float(np.mean([v["loss"] for v in vals])),
               "grad_norm": float(vals[-1]["grad_norm"]), "steps_per_s": sps,
               "examples_per_s": sps * batch_size,
               "tflops_per_s": (flops or 0) * sps / 1e12,
               "lr": float(lr_schedule(config)(step)), "eta_min": eta / 60}
        log.write(step, row, prefix="train/")
        if is_main:
          print(f"step {step:6d}/{config.total_steps}  loss {row['loss']:.4f}  "
                f"{row['steps_per_s']:.2f} steps/s  {row['examples_per_s']:.1f} ex/s  "
                f"{row['tflops_per_s']:.3f} TFLOP/s  lr {row['lr']:.2e}  ETA {eta / 60:.1f} min",
                flush=True)
        t_last, step_last = now, step
      evaluated = None
      if step % config.eval_every == 0 or step == config.total_steps:
        evaluated = evaluate(eval_fn, state["params"], data_dir, "val", config, manifest, mesh)
        log.write(step, evaluated, prefix="val/")
        final = {f"val/{k}": v for k, v in evaluated.items()}
        if is_main:
          print(f"eval  {step:6d}  val " + _headline(evaluated, config), flush=True)
      if (step % config.checkpoint.every == 0 or step == config.total_steps or stop["sigterm"]
          or evaluated is not None):
        if not bool(finite_fn(state["params"])):
          raise TrainingDiverged(f"non-finite parameters at step {step}; not saved; "
                                 f"{_last_good(ck)}.")
        metrics = {f"val/{k}": v for k, v in (evaluated or {}).items()} or None
        ck.save(step, state, train_iter, metrics=metrics, force=True)
      if stop["sigterm"]:
        ck.wait()
        print(f"SIGTERM: checkpoint saved at step {step}; exiting.", flush=True)
        break
    if step >= config.total_steps and not stop["sigterm"]:
      if not final:  # resumed at the end (e.g. killed during the test eval): val as well
        final = {f"val/{k}": v for k, v in
                 evaluate(eval_fn, state["params"], data_dir, "val", config, manifest, mesh).items()}
      test = evaluate(eval_fn, state["params"], data_dir, "test", config, manifest, mesh)
      log.write(step, test, prefix="test/")
      final.update({f"test/{k}": v for k, v in test.items()})
      if is_main and test:
        print(f"test  {step:6d}  " + _headline(test, config) + f"  (n={int(test['n'])})",
              flush=True)
      if config.task == "mp3":
        # 7. Model vs every baseline on the test split: JSON, markdown table, fan charts
        # (every process evaluates its share; process 0 writes).
        table = forecast_lib.report(eval_fn, state["params"], data_dir, config, manifest, mesh,
                                    os.path.join(workdir, "forecast"))
        if is_main:
          print(table, flush=True)
      if is_main:
        # 8. The mark of a finished run (launch/sweep.py skips points that have it).
        atomic.write_json(os.path.join(workdir, "final_metrics.json"),
                          {"step": step, "metrics": final}, indent=2, sort_keys=True)
  finally:
    if not sync_preemption and prev_handler is not None:  # None: a handler set outside Python
      signal.signal(signal.SIGTERM, prev_handler)
    ck.close()
    log.close()
  return final


def _last_good(ck) -> str:
  step = ck.latest_step()
  return (f"the last good checkpoint is step {step} in {ck.directory}" if step is not None
          else f"no checkpoint yet in {ck.directory}")


def _headline(m: dict, config) -> str:
  nan = float("nan")
  if config.task == "ssl":
    return (f"loss {m.get('loss', nan):.4f}  nce {m.get('nce', nan):.4f}  "
            f"mse {m.get('mse', nan):.4f}  acc {m.get('acc', nan):.3f}")
  if config.task == "mp2":
    return (f"r2 {m.get('r2', nan):.4f}  mse {m.get('mse', nan):.4f}  "
            f"spearman {m.get('spearman', nan):.4f}")
  return (f"mae {m.get('mae', nan):.4f}  rmse {m.get('rmse', nan):.4f}  "
          f"pinball {m.get('pinball', nan):.4f}  coverage {m.get('coverage', nan):.3f}")


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
