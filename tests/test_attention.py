"""mpjax.ops.attention: every implementation equals the masked XLA reference (region-token
prefix included), `auto` is chosen per platform when the program is lowered, and a training
step lowered on this CPU host is right for cpu (XLA only), cuda and tpu (splash)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import mp2 as configs_mp2
from mpjax import sharding, train
from mpjax.models import factory
from mpjax.models import ast, mp2
from mpjax.ops import attention as attn


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def reference(qkv, heads, prefix):
  """Textbook masked attention in float64 numpy."""
  qkv = np.asarray(qkv, np.float64)
  b, n, d3 = qkv.shape
  dh = d3 // (3 * heads)
  t = qkv.reshape(b, n, 3, heads, dh)
  s = np.einsum("bnhd,bmhd->bhnm", t[:, :, 0], t[:, :, 1]) / np.sqrt(dh)
  s = np.where(attn.prefix_mask(n, prefix), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhnm,bmhd->bnhd", p, t[:, :, 2]).reshape(b, n, heads * dh)


def xla_core(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def splash_interpreted(monkeypatch):
  monkeypatch.setattr(attn, "_SPLASH_INTERPRET", True)
  return lambda qkv, heads, prefix: attn._fused(attn._splash, qkv, heads, prefix)


IMPLS = {
    "xla": lambda qkv, heads, prefix: attn.attention(qkv, heads, prefix=prefix,
                                                     implementation="xla"),
    # The unmasked-core + XLA-prefix decomposition the cuDNN and splash branches use.
    "fused_prefix": lambda qkv, heads, prefix: attn._fused(xla_core, qkv, heads, prefix),
    "auto": lambda qkv, heads, prefix: attn.attention(qkv, heads, prefix=prefix),
}


@pytest.mark.parametrize("impl", ["xla", "fused_prefix", "auto", "splash"])
@pytest.mark.parametrize("b,n,heads,dh,prefix", [(2, 37, 2, 16, 0), (2, 70, 3, 32, 3),
                                                  (1, 130, 1, 64, 1)])
def test_every_implementation_equals_masked_reference(impl, b, n, heads, dh, prefix, monkeypatch):
  fn = splash_interpreted(monkeypatch) if impl == "splash" else IMPLS[impl]
  rs = np.random.RandomState(n + prefix)
  qkv = jnp.asarray(rs.randn(b, n, 3 * heads * dh) * 0.7, jnp.float32)
  g = jnp.asarray(rs.randn(b, n, heads * dh), jnp.float32)
  out = jax.jit(lambda x: fn(x, heads, prefix))(qkv)
  assert out.shape == (b, n, heads * dh)
  assert rel_err(out, reference(qkv, heads, prefix)) <= 1e-5
  # Gradients equal autodiff of the XLA reference with the explicit mask.
  grad = jax.jit(jax.grad(lambda x: jnp.sum(fn(x, heads, prefix) * g)))(qkv)
  ref = jax.grad(lambda x: jnp.sum(IMPLS["xla"](x, heads, prefix) * g))(qkv)
  assert rel_err(grad, ref) <= 1e-4


def test_prefix_mask_is_what_the_region_tokens_need():
  m = attn.prefix_mask(5, 2)
  assert m[0].tolist() == [True, False, True, True, True]   # region token 0: itself + audio
  assert m[1].tolist() == [False, True, True, True, True]
  assert m[3].tolist() == [False, False, True, True, True]  # audio: audio only


def test_bad_arguments_are_named():
  qkv = jnp.zeros((1, 4, 3 * 16), jnp.float32)
  with pytest.raises(ValueError, match="model.attention='flash'"):
    attn.attention(qkv, 1, implementation="flash")
  with pytest.raises(ValueError, match="prefix=4"):
    attn.attention(qkv, 1, prefix=4)
  with pytest.raises(ValueError, match="bfloat16 or float16"):
    attn.attention(qkv, 1, implementation="cudnn")


def test_cpu_is_a_deprecated_alias_of_xla():
  """'cpu' named the removed C++ kernel; saved configs still say it: it warns and means xla."""
  qkv = jnp.asarray(np.random.RandomState(0).randn(1, 6, 3 * 16), jnp.float32)
  with pytest.warns(DeprecationWarning, match="now means 'xla'"):
    out = attn.attention(qkv, 1, prefix=1, implementation="cpu")
  np.testing.assert_array_equal(out, attn.attention(qkv, 1, prefix=1, implementation="xla"))
  with pytest.warns(DeprecationWarning, match="C\\+\\+ CPU attention kernel was removed"):
    cfg = ast.config_for("tiny", attention="cpu", **CFG)
  assert cfg.attention == "xla" and cfg == ast.config_for("tiny", attention="xla", **CFG)


def test_explicit_cudnn_is_used_or_says_why():
  """Where jax can trace cuDNN attention (a CUDA host) the cuda lowering calls it; elsewhere an
  explicit 'cudnn' fails naming the reason."""
  qkv = jnp.zeros((1, 4, 48), jnp.bfloat16)
  f = lambda x: attn.attention(x, 1, implementation="cudnn")
  if attn._cudnn_unusable(1, 4, 1, 16, "bfloat16") is None:
    text = jax.jit(f).trace(qkv).lower(lowering_platforms=("cuda",)).as_text()
    assert any("cudnn" in c for c in custom_calls(text))
  else:
    with pytest.raises(RuntimeError, match="model.attention='cudnn' cannot be traced"):
      f(qkv)


# ------------------------------------------------------------------------------------------------
# Lowering: one traced step, right for every platform
# ------------------------------------------------------------------------------------------------

CFG = dict(depth=2, input_fdim=32, input_tdim=64, fstride=16, tstride=16)


def mp2_step_lowered(platform, dtype, attention="auto", batch=2):
  """The MP2 train step (train.make_steps: loss, gradients, AdamW) traced on this host and
  lowered for `platform`; StableHLO text."""
  config = configs_mp2.get_config("demo")
  config.model.update(dtype=dtype, attention=attention, depth=2, input_tdim=64, input_fdim=32)
  cfg = factory.model_config(config)
  targets = factory.mp2_targets(config)
  model = mp2.MP2(cfg, 3, "cls_token", num_targets=len(targets), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = train.make_optimizer(config, params, cfg.depth)
  step, _ = train.make_steps(graphdef, tx, None, config)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  batch = {"fbank": jnp.zeros((batch, 64, 32), jnp.float32),
           "region_ids": jnp.zeros((batch, 2), jnp.int32),
           **{k: jnp.zeros((batch, 2), jnp.float32) for k in targets},
           **{f"{k}_weight": jnp.ones((batch, 2)) for k in targets}}
  return jax.jit(step).trace(state, batch).lower(lowering_platforms=(platform,)).as_text()


def custom_calls(text):
  return set(re.findall(r"custom_call @([\w$.]+)", text))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_auto_step_is_xla_on_cpu_and_splash_on_tpu(dtype):
  """One traced step: XLA attention on cpu (no custom call at all), splash on tpu, and on
  cuda cuDNN only where this host can trace it (never here without CUDA)."""
  assert not custom_calls(mp2_step_lowered("cpu", dtype))
  tpu = custom_calls(mp2_step_lowered("tpu", dtype))
  assert "tpu_custom_call" in tpu
  cuda = custom_calls(mp2_step_lowered("cuda", dtype))
  assert "tpu_custom_call" not in cuda
  if dtype == "float32" or attn._cudnn_unusable(2, 2, 3, 64, dtype) is not None:
    assert not any("cudnn" in c for c in cuda), cuda


def test_xla_attention_lowers_without_custom_calls_anywhere():
  for platform in ("cpu", "cuda", "tpu"):
    calls = custom_calls(mp2_step_lowered(platform, "bfloat16", attention="xla"))
    assert not any(c == "tpu_custom_call" or "cudnn" in c
                   for c in calls), (platform, calls)


def test_splash_under_a_mesh_runs_per_shard_and_matches_one_device(monkeypatch):
  """Traced under the mesh (as the train step is), an opaque fused kernel (splash, run in the
  Pallas interpreter here) runs on each device's batch slice (shard_map: no all-gather of its
  operands) and the gradients equal one device's."""
  monkeypatch.setattr(attn, "_SPLASH_INTERPRET", True)
  assert len(jax.devices()) == 8
  heads, n, dh = 1, 20, 16
  qkv = jnp.asarray(np.random.RandomState(6).randn(8, n, 3 * heads * dh), jnp.float32)
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  f = lambda x: jnp.sum(attn._fused(attn._splash, x, heads, 1) ** 2)

  def on_mesh(x):
    with sharding.tracing_mesh(mesh):
      return f(x)

  one = jax.jit(jax.grad(f))(qkv)
  xs = jax.device_put(qkv, sharding.batch_sharding(mesh))
  grad = jax.jit(jax.grad(on_mesh))
  assert "all-gather" not in grad.lower(xs).compile().as_text()
  assert rel_err(grad(xs), one) <= 1e-5
