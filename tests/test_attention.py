"""mpjax.ops.attention: every implementation equals the masked XLA reference (region-token
prefix included), `auto` is chosen per platform when the program is lowered, and a training
step lowered on this CPU host for cuda / tpu carries no CPU kernel."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import mp2 as configs_mp2
from mpjax import sharding, train
from mpjax.models import ast, mp2
from mpjax.ops import attention as attn
from mpjax.ops import cpu_attention

HAVE_COMPILER = cpu_attention._compiler() is not None


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
    "cpu": lambda qkv, heads, prefix: attn.attention(qkv, heads, prefix=prefix,
                                                     implementation="cpu"),
}


@pytest.mark.parametrize("impl", ["xla", "fused_prefix", "cpu", "splash"])
@pytest.mark.parametrize("b,n,heads,dh,prefix", [(2, 37, 2, 16, 0), (2, 70, 3, 32, 3),
                                                  (1, 130, 1, 64, 1)])
def test_every_implementation_equals_masked_reference(impl, b, n, heads, dh, prefix, monkeypatch):
  if impl == "cpu" and not HAVE_COMPILER:
    pytest.skip("no C++ compiler: the CPU kernel cannot be built here")
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
  with pytest.raises(ValueError, match="float32 with a head dim"):
    attn.attention(qkv.astype(jnp.bfloat16), 1, implementation="cpu")


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
  cfg = train.model_config(config)
  graphdef, params = nnx.split(mp2.MP2(cfg, 3, "cls_token", rngs=nnx.Rngs(0)), nnx.Param)
  tx = train.make_optimizer(config, params, cfg.depth)
  step, _ = train.make_steps(graphdef, tx, None, config)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  batch = {"fbank": jnp.zeros((batch, 64, 32), jnp.float32),
           "region_ids": jnp.zeros((batch, 2), jnp.int32),
           "mp2": jnp.zeros((batch, 2), jnp.float32), "mp2_weight": jnp.ones((batch, 2))}
  return jax.jit(step).trace(state, batch).lower(lowering_platforms=(platform,)).as_text()


def custom_calls(text):
  return set(re.findall(r"custom_call @([\w$.]+)", text))


@pytest.fixture
def kernel_registered():
  if not HAVE_COMPILER:
    pytest.skip("no C++ compiler: the CPU kernel cannot be built here")
  assert cpu_attention.register() is None
  assert cpu_attention.registered()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_lowered_for_cuda_and_tpu_has_no_cpu_kernel(dtype, kernel_registered):
  cpu_text = mp2_step_lowered("cpu", dtype)
  cuda = custom_calls(mp2_step_lowered("cuda", dtype))
  tpu = custom_calls(mp2_step_lowered("tpu", dtype))
  assert not any(c.startswith("mpjax_") for c in cuda | tpu), (cuda, tpu)
  assert "tpu_custom_call" in tpu  # auto took splash attention on TPU
  if dtype == "float32":  # the kernel is float32-only; bf16 on CPU stays on XLA
    assert {"mpjax_attention_fwd", "mpjax_attention_bwd"} <= custom_calls(cpu_text)
  else:
    assert not any(c.startswith("mpjax_") for c in custom_calls(cpu_text))


def test_unregistered_kernel_is_not_used_by_auto(monkeypatch):
  """A process that never set up the CPU (a GPU/TPU host) traces no CPU kernel at all."""
  monkeypatch.setenv("MPJAX_CPU_KERNELS", "0")
  assert not cpu_attention.registered()
  assert not any(c.startswith("mpjax_") for c in custom_calls(mp2_step_lowered("cpu", "float32")))


def test_xla_attention_lowers_without_custom_calls_anywhere():
  for platform in ("cpu", "cuda", "tpu"):
    calls = custom_calls(mp2_step_lowered(platform, "bfloat16", attention="xla"))
    assert not any(c.startswith("mpjax_") or c == "tpu_custom_call" or "cudnn" in c
                   for c in calls), (platform, calls)


def test_auto_gives_the_cpu_kernel_on_cpu_and_agrees_with_xla(kernel_registered):
  cfg = ast.config_for("tiny", **CFG)
  m_auto = ast.init(cfg, seed=1)
  m_xla = ast.init(ast.config_for("tiny", attention="xla", **CFG), seed=1)
  x = np.random.RandomState(0).randn(2, 64, 32).astype(np.float32)
  prefix = jnp.asarray(np.random.RandomState(1).randn(2, 2, cfg.hidden), jnp.float32)
  loss = lambda m: jnp.sum(m.encode(x, prefix_tokens=prefix) ** 3)
  jaxpr = str(jax.make_jaxpr(lambda m: nnx.grad(loss)(m))(m_auto))
  assert "mpjax_attention_fwd" in jaxpr and "platform_index" in jaxpr
  ga, gx = nnx.grad(loss)(m_auto), nnx.grad(loss)(m_xla)
  for a, b in zip(jax.tree.leaves(nnx.state(ga)), jax.tree.leaves(nnx.state(gx))):
    assert rel_err(a, b) <= 1e-4


def test_kernel_under_a_mesh_runs_per_shard_and_matches_one_device(kernel_registered):
  """Traced under the mesh (as the train step is) the CPU kernel runs on each device's batch
  slice (shard_map: no all-gather of its operands) and the gradients equal one device's."""
  assert len(jax.devices()) == 8
  cfg = ast.config_for("tiny", depth=1, input_fdim=32, input_tdim=48, fstride=8, tstride=8)
  graphdef, params = nnx.split(ast.init(cfg, seed=5))
  x = np.random.RandomState(6).randn(8, 48, 32).astype(np.float32)
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])

  def loss(params, x):
    return jnp.mean(nnx.merge(graphdef, params)(x) ** 2)

  def loss_on_mesh(params, x):
    with sharding.tracing_mesh(mesh):
      return loss(params, x)

  one = jax.jit(jax.grad(loss))(params, x)
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  ps = jax.device_put(params, jax.NamedSharding(mesh, jax.P()))
  grad = jax.jit(jax.grad(loss_on_mesh))
  hlo = grad.lower(ps, xs).compile().as_text()
  assert "mpjax_attention_fwd" in hlo and "all-gather" not in hlo
  # Without the mesh context XLA gathers the kernel's operands (correct, not sharded).
  assert "all-gather" in jax.jit(jax.grad(loss)).lower(ps, xs).compile().as_text()
  sharded = grad(ps, xs)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sharded)):
    assert rel_err(b, a) <= 1e-5
