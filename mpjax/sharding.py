"""Device mesh from the config, regex partition rules for parameters and activations, and
host <-> device transfer of batches (`to_global`, `to_host`, `gather_rows`).

config.mesh = [('data', -1), ('fsdp', 1)]: axis names and sizes; one size may be -1 (= all
remaining devices). The batch is split over every mesh axis ('data' and 'fsdp' together: FSDP
is data parallelism whose parameters are sharded too).

config.sharding_rules = [(regex, spec), ...]: the first regex that matches a parameter's path
('blocks/3/mlp/fc1/kernel') gives its spec:
  'replicated'        every device holds it
  'fsdp'              its largest dimension divisible by the 'fsdp' axis size is split over it
  ('fsdp', None)      an explicit PartitionSpec as a tuple
Unmatched parameters are replicated. Optimizer state follows its parameter (same path suffix).

    gbatch = to_global(batch, mesh)     # host-local numpy batch -> global jax.Arrays
    rows = to_host(model_out, mesh)     # this process's rows back, in its local batch's order
    rows = gather_rows(rows)            # every process's rows, in process order (a collective)
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DEFAULT_RULES = (
    # Small vectors (biases, norms, tokens) are not worth splitting.
    (r".*(bias|scale|cls_token|dist_token|table)$", "replicated"),
    (r".*", "fsdp"),
)


def make_mesh(mesh_cfg: Sequence[Sequence[Any]], devices=None) -> Mesh:
  """jax.make_mesh from [(name, size), ...]; one size may be -1."""
  devices = list(devices if devices is not None else jax.devices())
  names = [str(n) for n, _ in mesh_cfg]
  sizes = [int(s) for _, s in mesh_cfg]
  if len(set(names)) != len(names) or not names:
    raise ValueError(f"config.mesh {list(mesh_cfg)}: need distinct axis names")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {list(mesh_cfg)}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise ValueError(f"config.mesh {list(mesh_cfg)}: sizes do not divide {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh {list(mesh_cfg)} -> {sizes} uses {int(np.prod(sizes))} "
                     f"devices, but there are {len(devices)}")
  # Auto axes: XLA propagates shardings from the inputs/outputs we annotate (GSPMD style).
  return jax.make_mesh(tuple(sizes), tuple(names), devices=devices,
                       axis_types=(AxisType.Auto,) * len(names))


def batch_spec(mesh: Mesh) -> P:
  """The batch axis is split over all mesh axes."""
  return P(tuple(mesh.axis_names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(mesh))


def path_str(path) -> str:
  """'blocks/0/mlp/fc1/kernel' for a pytree path (NNX Variable wrappers' '.value' dropped)."""
  parts = []
  path = list(path)
  if path and getattr(path[-1], "name", None) == "value":
    path = path[:-1]
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _spec_for(shape, rule, mesh: Mesh) -> P:
  if rule == "replicated":
    return P()
  if rule == "fsdp":
    n = mesh.shape.get("fsdp", 1)
    if n == 1 or not shape:
      return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
      if shape[d] % n == 0:
        spec = [None] * len(shape)
        spec[d] = "fsdp"
        return P(*spec)
    return P()
  spec = tuple(rule)
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule {rule!r} has more entries than the array's rank {len(shape)}")
  return P(*spec)


def param_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs) by the regex rules."""
  compiled = [(re.compile(r), spec) for r, spec in rules]
  for _, spec in compiled:
    if isinstance(spec, str) and spec not in ("replicated", "fsdp"):
      raise ValueError(f"config.sharding_rules: unknown spec {spec!r}; use 'replicated', "
                       "'fsdp' or a tuple of mesh axis names")

  def one(path, leaf):
    name = path_str(path)
    shape = getattr(leaf, "shape", ())
    for rx, spec in compiled:
      if rx.fullmatch(name):
        return NamedSharding(mesh, _spec_for(shape, spec, mesh))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


def tracing_mesh(mesh: Mesh | None):
  """Context for tracing a step: the mesh's abstract mesh (none without a mesh), so code inside
  can `shard_map` over it (`mpjax.ops.attention`)."""
  if mesh is None:
    return contextlib.nullcontext()
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def constrain_batch(x, mesh: Mesh | None):
  """Activation constraint: keep the leading (batch) axis split over the mesh inside jit."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec(mesh)))


# ------------------------------------------------------------------------------------------------
# Host <-> device: host-local numpy batches <-> global jax.Arrays split along the batch axis
# ------------------------------------------------------------------------------------------------


def to_global(batch, mesh: Mesh, spec=None):
  """Places a host-local numpy batch on `mesh` as global jax.Arrays (batch axis sharded).

  spec: the PartitionSpec (or axis name / tuple of names) of the leading batch axis; the other
  axes are replicated. Default: split over every mesh axis, as `batch_spec` (data and fsdp
  together). Each process passes its own local batch; the global batch is the concatenation
  over processes (`jax.make_array_from_process_local_data`).
  """
  if spec is None:
    spec = batch_spec(mesh)
  elif not isinstance(spec, P):
    spec = P(spec)
  if len(spec) > 1:
    raise ValueError(f"to_global: spec {spec} must describe only the batch axis")
  axes = spec[0] if len(spec) else None
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  unknown = [a for a in names if a not in mesh.shape]
  if unknown:
    raise ValueError(f"to_global: spec {spec} names axes {unknown} not in the mesh "
                     f"{dict(mesh.shape)}")
  shards = int(np.prod([mesh.shape[a] for a in names])) if names else 1

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:
      raise ValueError("to_global: every batch leaf needs a leading batch axis")
    global_b = x.shape[0] * jax.process_count()
    if global_b % shards:
      raise ValueError(f"to_global: global batch {global_b} is not divisible by the {shards} "
                       f"devices of mesh axes {names}")
    sharding = NamedSharding(mesh, P(axes, *([None] * (x.ndim - 1))))
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def to_host(x, mesh: Mesh, spec=None) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in its local batch's order: the
  inverse of `to_global` (so eval outputs pair with the host-local batch they came from)."""
  from jax.experimental import multihost_utils

  spec = batch_spec(mesh) if spec is None else spec
  return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def gather_rows(rows: dict) -> dict:
  """{name: host-local array [n, ...]} of every process, concatenated in process order along
  axis 0 (a collective: every process calls it, with the same n). One process: unchanged."""
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return rows
  return {k: np.asarray(v) for k, v in
          multihost_utils.process_allgather(rows, tiled=True).items()}
