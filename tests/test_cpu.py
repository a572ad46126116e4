"""mpjax.cpu: the XLA:CPU jit options compile and leave results unchanged; malloc tuning."""
import jax
import jax.numpy as jnp
import numpy as np

from mpjax import cpu


def test_jit_options_only_on_cpu():
  assert cpu.jit_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert cpu.jit_options("gpu") is None
  assert cpu.jit_options("tpu") is None


def test_setup_registers_the_kernel_on_the_cpu_backend_only(monkeypatch):
  from mpjax.ops import cpu_attention
  calls = []
  monkeypatch.setattr(cpu_attention, "register", lambda: calls.append("register"))
  monkeypatch.setattr(cpu, "tune_malloc", lambda **kw: calls.append("malloc"))
  assert cpu.setup() == cpu.jit_options("cpu")
  assert calls == ["register", "malloc"]
  calls.clear()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert cpu.setup() is None and calls == []


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
