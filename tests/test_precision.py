"""bf16 compute (model.dtype) end to end: a training step's gradients through the MP2 head and
the MP3 decoder are finite and within a stated tolerance of float32 on the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpjax.models import ast, mp2, mp3

# bf16 vs float32, relative L2 error: the loss and whole gradient (5%), each parameter (30%: a
# few, e.g. the head norm bias, are batch sums of residuals that nearly cancel).
TOL_TOTAL, TOL_PARAM = 0.05, 0.3
KW = dict(depth=2, input_tdim=32, input_fdim=32, fstride=16, tstride=16)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def batch(seed=0):
  rs = np.random.RandomState(seed)
  return dict(fbank=jnp.asarray(rs.randn(3, 32, 32), jnp.float32),
              ids=jnp.asarray(rs.randint(0, 3, (3, 2)), jnp.int32),
              y=jnp.asarray(rs.randn(3, 2) + 4, jnp.float32),
              series=jnp.asarray(10 + rs.randn(3, 2, 6), jnp.float32),
              mask=jnp.asarray(rs.rand(3, 2, 6) > 0.2, jnp.float32))


def make(task, dtype):
  cfg = ast.config_for("tiny", dtype=dtype, **KW)
  if task == "mp2":
    m = mp2.MP2(cfg, 3, "cls_token", rngs=nnx.Rngs(0), head_bias=4.0)
    m.head.kernel[...] = jax.random.normal(jax.random.key(1), m.head.kernel.shape) * 0.1
  else:
    m = mp3.MP3(cfg, 3, "cls_token", horizon=6, prefix_steps=2, rngs=nnx.Rngs(0),
                level_init=10.0)
    m.out.kernel[...] = jax.random.normal(jax.random.key(1), m.out.kernel.shape) * 0.1
  return m


def loss(m, b, task):
  if task == "mp2":
    return jnp.mean((m(b["fbank"], b["ids"]) - b["y"]) ** 2)
  out = m(b["fbank"], b["ids"], b["series"][..., :2], b["mask"][..., :2])
  return mp3.forecast_loss(out, b["series"], b["mask"], prefix_steps=2,
                           quantiles=m.quantiles)


@pytest.mark.parametrize("task", ["mp2", "mp3"])
def test_bf16_step_close_to_float32(task):
  b = batch()
  f32, bf16 = make(task, "float32"), make(task, "bfloat16")
  grad = nnx.jit(nnx.value_and_grad(lambda m: loss(m, b, task)))
  l32, g32 = grad(f32)
  l16, g16 = grad(bf16)
  assert l16.dtype == jnp.float32 and np.isfinite(float(l16))
  assert abs(float(l16) - float(l32)) <= TOL_TOTAL * abs(float(l32))
  assert float(l16) != float(l32)  # really computed in bf16
  leaves32 = jax.tree_util.tree_leaves_with_path(nnx.state(g32, nnx.Param))
  leaves16 = dict(jax.tree_util.tree_leaves_with_path(nnx.state(g16, nnx.Param)))
  assert len(leaves32) == len(leaves16)
  diff2 = norm2 = 0.0
  for path, a in leaves32:
    g = leaves16[path]
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))), path
    d, n = float(jnp.sum((g - a) ** 2)), float(jnp.sum(a ** 2))
    diff2, norm2 = diff2 + d, norm2 + n
    if n > 1e-12:
      assert (d / n) ** 0.5 <= TOL_PARAM, (jax.tree_util.keystr(path), (d / n) ** 0.5)
  assert (diff2 / norm2) ** 0.5 <= TOL_TOTAL
  # The head norm / decoder blocks compute in bf16; parameters and the output layer float32.
  layer = bf16.head_norm if task == "mp2" else bf16.blocks[0].fc1
  assert layer.dtype == jnp.bfloat16
  out = bf16.head if task == "mp2" else bf16.out
  assert out.dtype == jnp.float32 and out.kernel[...].dtype == jnp.float32
