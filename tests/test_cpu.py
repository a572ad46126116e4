"""mpjax.cpu: the XLA:CPU jit options compile and leave results unchanged; malloc tuning."""
import jax
import jax.numpy as jnp
import numpy as np

from mpjax import cpu


def test_jit_options_only_on_cpu():
  assert cpu.jit_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": "",
                                    "xla_disable_hlo_passes": "tree_reduction_rewriter"}
  assert cpu.jit_options("gpu") is None
  assert cpu.jit_options("tpu") is None


def test_tree_reduction_rewrite_is_really_off():
  """Without YNNPACK, XLA:CPU splits a long row reduction into reduce-window + reduce; with
  the options it stays one reduce (a misspelt pass name would be ignored silently)."""
  x = jnp.zeros((64, 514), jnp.float32)
  f = lambda a: jnp.max(a, axis=-1)
  no_ynn = {"xla_cpu_experimental_ynn_fusion_type": ""}
  default = jax.jit(f, compiler_options=no_ynn).lower(x).compile().as_text()
  ours = jax.jit(f, compiler_options=cpu.jit_options("cpu")).lower(x).compile().as_text()
  assert "reduce-window" in default
  assert "reduce-window" not in ours


def test_jit_with_cpu_options_same_result():
  x = jnp.asarray(np.random.RandomState(0).randn(64, 96), jnp.float32)
  f = lambda a: jnp.tanh(a @ a.T).sum(axis=0)
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(f)(x)
    got = jax.jit(f, compiler_options=cpu.jit_options())(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_tune_malloc_reports_settings():
  out = cpu.tune_malloc()
  assert out is None or out == {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}
  import platform
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    assert out is not None
