"""The C++ CPU attention kernel (mpjax/ops/cpu_attention.*): numerics against float64
references, the region-token mask, the fallback to XLA, build errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpjax.models import ast
from mpjax.ops import attention as attention_ops
from mpjax.ops import cpu_attention

if cpu_attention._compiler() is None:  # pragma: no cover - machines without any C++ compiler
  pytest.skip("no C++ compiler ($CXX, c++, g++, clang++): the CPU kernel cannot be built here",
              allow_module_level=True)


@pytest.fixture(autouse=True)
def kernels_enabled(monkeypatch):
  """These tests test the kernels: a compiler is present, so the build must succeed, and an
  outer MPJAX_CPU_KERNELS=0 must not turn them into tests of the fallback."""
  monkeypatch.setenv("MPJAX_CPU_KERNELS", "1")
  why = cpu_attention.register()
  assert why is None, f"CPU kernels failed to build although a compiler exists: {why}"


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def reference_probs(qkv, heads, prefix):
  """float64 numpy: q, k, v [B, N, H, Dh] and the softmax(q k^T / sqrt(dh)) probabilities
  [B, H, N, N] under AST.encode's prefix mask."""
  qkv = np.asarray(qkv, np.float64)
  b, n, d3 = qkv.shape
  dh = d3 // (3 * heads)
  t = qkv.reshape(b, n, 3, heads, dh)
  q, k, v = t[:, :, 0], t[:, :, 1], t[:, :, 2]
  s = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(dh)
  i, j = np.arange(n)[:, None], np.arange(n)[None, :]
  s = np.where((j >= prefix) | (i == j), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return q, k, v, p / p.sum(-1, keepdims=True)


def reference_attention(qkv, heads, prefix=0):
  """float64 numpy attention output [B, N, H * Dh]."""
  q, k, v, p = reference_probs(qkv, heads, prefix)
  b, n, h, dh = q.shape
  return np.einsum("bhnm,bmhd->bnhd", p, v).reshape(b, n, h * dh)


def reference_vjp(qkv, heads, prefix, g):
  """float64 numpy gradient of sum(attention * g) w.r.t. qkv (textbook softmax backward)."""
  q, k, v, p = reference_probs(qkv, heads, prefix)
  b, n, h, dh = q.shape
  go = np.asarray(g, np.float64).reshape(b, n, h, dh)
  dv = np.einsum("bhnm,bnhd->bmhd", p, go)
  dp = np.einsum("bnhd,bmhd->bhnm", go, v)
  ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) / np.sqrt(dh)
  dq = np.einsum("bhnm,bmhd->bnhd", ds, k)
  dk = np.einsum("bhnm,bnhd->bmhd", ds, q)
  return np.stack([dq, dk, dv], axis=2).reshape(b, n, 3 * h * dh)


@pytest.mark.parametrize("b,n,heads,dh,prefix,scale", [
    (2, 514, 3, 64, 0, 0.5),   # AST-tiny tokens: n not a multiple of 16, last query block of 2
    (1, 37, 2, 16, 0, 1.0),    # shorter than one query block
    (2, 100, 3, 64, 3, 0.5),   # region-token prefix mask
    (1, 5, 1, 32, 1, 3.0),     # tiny, large scores
    (3, 16, 2, 48, 0, 1.0),    # n exactly 16, dh 48
    (1, 130, 4, 64, 4, 4.0),   # large logits: softmax far from uniform
])
def test_attention_matches_float64_reference(b, n, heads, dh, prefix, scale):
  rs = np.random.RandomState(n + dh)
  qkv = (rs.randn(b, n, 3 * heads * dh) * scale).astype(np.float32)
  g = rs.randn(b, n, heads * dh).astype(np.float32)
  assert cpu_attention.supports(jnp.asarray(qkv), heads)
  out = jax.jit(lambda x: cpu_attention.attention(x, heads, prefix))(qkv)
  assert rel_err(out, reference_attention(qkv, heads, prefix)) <= 1e-5
  grad = jax.jit(jax.grad(lambda x: jnp.sum(cpu_attention.attention(x, heads, prefix) * g)))(qkv)
  assert rel_err(grad, reference_vjp(qkv, heads, prefix, g)) <= 1e-5
  # and the XLA implementation agrees with the same reference
  xla = jax.jit(lambda x: attention_ops.attention(x, heads, prefix=prefix, implementation="xla"))(qkv)
  assert rel_err(out, xla) <= 1e-5


def test_attention_is_sensitive_to_every_input():
  """Perturbing one key of one head in one batch row changes exactly that row/head's output."""
  rs = np.random.RandomState(0)
  b, n, heads, dh = 2, 40, 2, 16
  qkv = rs.randn(b, n, 3 * heads * dh).astype(np.float32)
  f = jax.jit(lambda x: cpu_attention.attention(x, heads))
  base = np.asarray(f(qkv))
  bumped = qkv.copy()
  bumped[1, 7, heads * dh + dh + 3] += 1.0  # k of head 1, token 7, batch row 1
  diff = np.abs(np.asarray(f(bumped)) - base)
  assert diff[0].max() == 0.0 and diff[1, :, :dh].max() == 0.0
  assert diff[1, :, dh:].max() > 1e-3


def test_attention_prefix_tokens_are_independent():
  """With the region mask, a prefix token's output does not depend on the other prefix tokens,
  and no audio token's output depends on any prefix token."""
  rs = np.random.RandomState(1)
  b, n, heads, dh, p = 1, 50, 2, 16, 3
  qkv = rs.randn(b, n, 3 * heads * dh).astype(np.float32)
  f = jax.jit(lambda x: cpu_attention.attention(x, heads, p))
  base = np.asarray(f(qkv))
  other = qkv.copy()
  other[0, 1] = rs.randn(3 * heads * dh)  # replace prefix token 1 entirely
  out = np.asarray(f(other))
  np.testing.assert_array_equal(out[0, [0, 2]], base[0, [0, 2]])
  np.testing.assert_array_equal(out[0, p:], base[0, p:])
  assert np.abs(out[0, 1] - base[0, 1]).max() > 1e-3


def test_ast_uses_the_kernel_and_fallback_agrees(monkeypatch):
  """With the kernel registered the AST's jaxpr calls it ('auto' on CPU); with
  MPJAX_CPU_KERNELS=0 it does not, and loss and every parameter gradient agree."""
  cfg = ast.config_for("tiny", depth=2, input_fdim=32, input_tdim=64, fstride=8, tstride=8)
  model = ast.init(cfg, seed=3)
  x = np.random.RandomState(2).randn(2, 64, 32).astype(np.float32)
  prefix = np.random.RandomState(3).randn(2, 2, cfg.hidden).astype(np.float32)
  w = np.random.RandomState(4).randn(2, 2, cfg.hidden).astype(np.float32)

  def loss(m):
    tokens = m.encode(x, prefix_tokens=prefix)
    return jnp.sum(tokens[:, :2] * w) + jnp.mean(m(x) ** 2)

  def run():
    jaxpr = str(jax.make_jaxpr(lambda m: nnx.value_and_grad(loss)(m))(model))
    value, grads = nnx.value_and_grad(loss)(model)
    return jaxpr, float(value), jax.tree.leaves(nnx.state(grads))

  jaxpr_k, v_k, g_k = run()
  monkeypatch.setenv("MPJAX_CPU_KERNELS", "0")
  jaxpr_x, v_x, g_x = run()
  for name in ("mpjax_attention_fwd", "mpjax_attention_bwd"):
    assert name in jaxpr_k and name not in jaxpr_x
  assert abs(v_k - v_x) <= 1e-5 * abs(v_x)
  assert len(g_k) == len(g_x)
  for a, b in zip(g_k, g_x):
    assert rel_err(a, b) <= 1e-4


def test_attention_rejects_bad_prefix():
  qkv = jnp.zeros((1, 4, 3 * 16), jnp.float32)
  with pytest.raises(ValueError, match="prefix=4"):
    cpu_attention.attention(qkv, 1, prefix=4)


def test_unsupported_inputs_are_reported():
  assert not cpu_attention.supports(jnp.zeros((1, 4, 3 * 8), jnp.float32), 1)     # head_dim 8
  assert not cpu_attention.supports(jnp.zeros((1, 4, 3 * 16), jnp.bfloat16), 1)  # not float32
  assert cpu_attention.supports(jnp.zeros((1, 4, 3 * 64), jnp.float32), 1)


def test_build_failure_names_the_compiler_and_error(tmp_path, monkeypatch):
  """A compiler that fails: `build` raises naming the command and the error, and writes no
  library into the cache (a later good build is not shadowed by a broken file)."""
  bad = tmp_path / "badcxx"
  bad.write_text("#!/bin/sh\necho 'fatal error: simulated' >&2\nexit 3\n")
  bad.chmod(0o755)
  monkeypatch.setenv("CXX", str(bad))
  monkeypatch.setenv("MPJAX_CACHE_DIR", str(tmp_path / "cache"))
  with pytest.raises(RuntimeError, match="simulated") as e:
    cpu_attention.build()
  assert "exit 3" in str(e.value) and str(bad) in str(e.value)
  assert not list((tmp_path / "cache" / "kernels").glob("*.so"))


def test_no_compiler_falls_back_in_a_fresh_process(tmp_path):
  """Without any C++ compiler the AST still runs (XLA implementations) and says why once."""
  env = dict(os.environ, CXX=str(tmp_path / "missing"), PATH=str(tmp_path),
             MPJAX_CACHE_DIR=str(tmp_path / "cache"))
  code = ("import numpy as np, jax, jax.numpy as jnp\n"
          "from mpjax import cpu\n"
          "from mpjax.ops import cpu_attention\n"
          "from mpjax.models import ast\n"
          "cpu.setup()\n"
          "assert cpu_attention.register() is not None and not cpu_attention.registered()\n"
          "cfg = ast.config_for('tiny', depth=1, input_fdim=32, input_tdim=48, fstride=8, tstride=8)\n"
          "m = ast.init(cfg)\n"
          "out = m(np.zeros((1, 48, 32), np.float32))\n"
          "assert out.shape == (1, cfg.hidden) and bool(jnp.all(jnp.isfinite(out)))\n"
          "print('fallback ok')\n")
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "fallback ok" in r.stdout
  assert "no C++ compiler found" in r.stderr
