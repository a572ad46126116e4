"""Mesh construction and regex partition rules on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mpjax import sharding
from mpjax.models import ast


def test_make_mesh_sizes_and_errors():
  assert len(jax.devices()) == 8
  m = sharding.make_mesh([("data", -1), ("fsdp", 2)])
  assert dict(m.shape) == {"data": 4, "fsdp": 2}
  assert dict(sharding.make_mesh([("data", 1), ("fsdp", 1)], devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1}
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh([("data", -1), ("fsdp", -1)])
  with pytest.raises(ValueError, match="do not divide 8 devices"):
    sharding.make_mesh([("data", 3), ("fsdp", -1)])
  with pytest.raises(ValueError, match="uses 4 devices"):
    sharding.make_mesh([("data", 2), ("fsdp", 2)])


def test_param_rules_on_ast_state():
  cfg = ast.config_for("tiny", depth=2, input_fdim=32, input_tdim=48, fstride=8, tstride=8)
  state = nnx.state(nnx.eval_shape(lambda: ast.AST(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  sh = sharding.param_shardings(state, mesh)
  flat = {sharding.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(sh)}
  assert flat["blocks/0/attn/qkv/kernel"] == P(None, "fsdp")  # [192, 576]: largest dim split
  assert flat["blocks/0/attn/qkv/bias"] == P()
  assert flat["cls_token"] == P()
  assert flat["pos_embed"] == P(None, None, "fsdp")  # [1, 14, 192]: 14 is odd -> hidden dim
  custom = sharding.param_shardings(state, mesh, [(r".*fc1/kernel", ("fsdp", None)), (r".*", "replicated")])
  cflat = {sharding.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(custom)}
  assert cflat["blocks/1/mlp/fc1/kernel"] == P("fsdp", None)
  assert cflat["blocks/1/mlp/fc2/kernel"] == P()
  with pytest.raises(ValueError, match="unknown spec 'tensor'"):
    sharding.param_shardings(state, mesh, [(".*", "tensor")])


def test_global_batch_placement():
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = jax.device_put(x, sharding.batch_sharding(mesh))
  assert g.sharding.spec == P(("data", "fsdp"))
  assert len(g.addressable_shards) == 8 and g.addressable_shards[0].data.shape == (2, 3)
  y = jax.jit(lambda a: sharding.constrain_batch(a * 2, mesh))(g)
  np.testing.assert_array_equal(y, x * 2)


def _batch(b=8, tdim=16, mel=8, regions=2):
  """A host-local batch shaped like the input pipeline's (mpjax.input.pipeline)."""
  rng = np.random.default_rng(0)
  return {"fbank": rng.normal(size=(b, tdim, mel)).astype(np.float32),
          "region_ids": rng.integers(0, 3, size=(b, regions)).astype(np.int32),
          "series": rng.normal(size=(b, regions, 5)).astype(np.float32),
          "record": np.arange(b, dtype=np.int32), "valid": np.ones(b, np.float32)}


def test_to_global_on_eight_devices():
  assert jax.device_count() == 8
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
  b = _batch()
  g = sharding.to_global(b, mesh)
  for k, v in b.items():
    assert g[k].shape == v.shape and g[k].dtype == v.dtype, k
    assert g[k].sharding.spec == P(("data", "fsdp"), *([None] * (v.ndim - 1))), k
    np.testing.assert_array_equal(np.asarray(g[k]), v)
  shards = g["fbank"].addressable_shards
  assert len(shards) == 8 and all(s.data.shape == (1, 16, 8) for s in shards)
  # Data axis only: 4-way split, replicated over fsdp.
  g = sharding.to_global(b, mesh, P("data"))
  assert g["fbank"].sharding.spec == P("data", None, None)
  assert {s.data.shape[0] for s in g["fbank"].addressable_shards} == {2}
  with pytest.raises(ValueError, match="not divisible"):
    sharding.to_global({"x": np.zeros((6, 2))}, mesh)
  with pytest.raises(ValueError, match=r"names axes \['model'\] not in the mesh"):
    sharding.to_global(b, mesh, P("model"))
  with pytest.raises(ValueError, match="leading batch axis"):
    sharding.to_global({"x": np.float32(1.0)}, mesh)


def test_to_host_inverts_to_global_and_gather_rows_is_identity_on_one_process():
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  b = _batch()
  g = sharding.to_global(b, mesh)
  out = jax.jit(lambda x: x * 2)(g["series"])
  np.testing.assert_array_equal(sharding.to_host(out, mesh), b["series"] * 2)
  np.testing.assert_array_equal(sharding.to_host(g["record"], mesh), b["record"])
  rows = {"record": b["record"], "series": b["series"]}
  assert sharding.gather_rows(rows) is rows  # one process: unchanged
