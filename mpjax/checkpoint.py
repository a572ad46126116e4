"""Orbax checkpoints: train state + Grain iterator state, latest-N and best-N preservation.

A checkpoint step directory holds two items:
  state  the train-state pytree (model params, optimizer state, step), sharded arrays
  data   the Grain iterator state, so a resumed run reads the same examples in the same order
Saving is asynchronous (training continues while arrays are written); `wait()` blocks.

`init_from(model, source)` starts a model from other weights: a previous mpjax checkpoint
directory, or converted DeiT/ViT/AST weights (`mpjax.models.ast.load`). Parameters whose path
and shape match are copied; those that differ (e.g. a head or region table of another size) keep
their fresh initialisation, and the lists are returned for the log.
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class Checkpointer:

  def __init__(self, directory: str, *, keep_latest: int = 3, keep_best: int = 2,
               best_metric: str = "val/r2", best_mode: str = "max", use_async: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"config.checkpoint.best_mode={best_mode!r}: choose 'max' or 'min'")
    if keep_latest < 1:
      raise ValueError(f"config.checkpoint.keep_latest={keep_latest}: must be >= 1")
    policies = [pp.LatestN(n=keep_latest)]
    if keep_best:
      policies.append(pp.BestN(get_metric_fn=lambda m: float(m[best_metric]),
                               reverse=best_mode == "min", n=keep_best,
                               keep_checkpoints_without_metrics=False))
    self.best_metric = best_metric
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=use_async, create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iter=None, metrics: dict | None = None,
           force: bool = False) -> bool:
    import grain

    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    metrics = None if metrics is None or self.best_metric not in metrics else {
        k: float(v) for k, v in metrics.items()}
    return self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

  def restore(self, abstract_state: Any, data_iter=None, step: int | None = None, *,
              data_state_at=None):
    """Restores the state (to the shardings of `abstract_state`, i.e. into this run's mesh,
    whatever mesh wrote it) and the iterator in place.

    The Grain item holds one iterator state per process (`process_I-of-N.json`). When this run
    has another process count, `data_state_at(step)` gives the iterator's state instead
    (`mpjax.input.pipeline.iterator_state_at`); without it that is an error.
    """
    import grain

    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    data_dir = os.path.join(self.directory, str(step), "data")
    own = os.path.join(data_dir, f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    same_layout = os.path.exists(own)
    if data_iter is not None and same_layout:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    elif data_iter is not None and data_state_at is None:
      written = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
      raise ValueError(f"{data_dir}: no data-iterator state for process {jax.process_index()} "
                       f"of {jax.process_count()} (written: {written}); pass data_state_at to "
                       "resume with another process count")
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_iter is not None and not same_layout:
      data_iter.set_state(data_state_at(step))
      logging.warning("%s: data position for %d process(es) derived from step %d (the "
                      "checkpoint was written by another process count)", self.directory,
                      jax.process_count(), step)
    return step, out["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _flat_params(tree) -> dict[str, np.ndarray]:
  from mpjax import sharding
  return {sharding.path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def read_checkpoint_params(directory: str, step: int | None = None) -> dict[str, np.ndarray]:
  """Params of an mpjax checkpoint as {path: array}, without knowing its model config."""
  mgr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"),
                              options=ocp.CheckpointManagerOptions(read_only=True),
                              item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"init_from: no checkpoint in {directory}")
  # Onto this process's first device, whatever mesh and process count wrote it (restoring
  # into the saved shardings fails on another topology).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  tree = mgr.item_metadata(step)["state"].tree
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  mgr.close()
  params = state["params"] if isinstance(state, dict) and "params" in state else state
  # Each nnx Variable is stored (and restored from the metadata tree) as a {'value': array} dict.
  return {k.removesuffix("/value"): np.asarray(v) for k, v in _flat_params(params).items()}


def init_from(model: nnx.Module, source: str, *, encoder_attr: str = "encoder",
              step: int | None = None, **load_kw) -> dict[str, list[str]]:
  """Copies matching parameters into `model` in place. Returns {'loaded', 'reinit', 'absent'}.

  source: an mpjax checkpoint directory (params matched by full path), or a weights file
    (.pth/.safetensors/.npz) converted by `ast.load(**load_kw)` into `model.<encoder_attr>`.
  The encoder's blocks are converted to the model's layout (per layer, or stacked for
  `model.scan`) whichever layout the source has.
  """
  from mpjax.models import ast as ast_lib

  if os.path.isdir(source):
    src = read_checkpoint_params(source, step)
    prefix = ""
  else:
    enc = ast_lib.load(source, **load_kw)
    src = {k: np.asarray(v) for k, v in _flat_params(nnx.state(enc, nnx.Param)).items()}
    prefix = encoder_attr + "/"
  encoder = getattr(model, encoder_attr, None)
  if encoder is not None and hasattr(encoder, "cfg"):
    root = "blocks/" if prefix else f"{encoder_attr}/blocks/"
    convert = ast_lib.stack_blocks if encoder.cfg.scan else ast_lib.unstack_blocks
    src = convert(src, root=root)
  state = nnx.state(model, nnx.Param)
  report = {"loaded": [], "reinit": [], "absent": []}

  def take(path, leaf):
    from mpjax import sharding
    name = sharding.path_str(path)
    key = name[len(prefix):] if prefix and name.startswith(prefix) else (None if prefix else name)
    if key is None or key not in src:
      report["absent"].append(name)
      return leaf
    value = src[key]
    if tuple(value.shape) != tuple(leaf.shape):
      report["reinit"].append(f"{name} {tuple(value.shape)} -> {tuple(leaf.shape)}")
      return leaf
    report["loaded"].append(name)
    sharding_ = getattr(leaf, "sharding", None)
    arr = np.asarray(value, dtype=leaf.dtype)
    return jax.device_put(arr, sharding_) if sharding_ is not None else jax.numpy.asarray(arr)

  nnx.update(model, jax.tree_util.tree_map_with_path(take, state))
  if not report["loaded"]:
    raise ValueError(f"init_from {source}: no parameter matched the model (wrong file?)")
  return report
