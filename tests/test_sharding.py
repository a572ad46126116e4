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
