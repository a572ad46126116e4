"""mpjax.cpu: the XLA:CPU jit options compile and leave results unchanged; malloc tuned before
JAX starts stops the per-step page faults; nothing changes on a GPU/TPU process."""
import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpjax import cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jit_options_only_on_cpu():
  assert cpu.jit_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert cpu.jit_options("gpu") is None
  assert cpu.jit_options("tpu") is None


def test_setup_gives_options_on_the_cpu_backend_only(monkeypatch):
  assert cpu.setup() == cpu.jit_options("cpu")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert cpu.setup() is None


def test_setup_says_once_when_malloc_was_not_tuned(monkeypatch, caplog):
  monkeypatch.setitem(cpu._state, "malloc", None)
  monkeypatch.setitem(cpu._state, "warned", False)
  with caplog.at_level("WARNING", logger="mpjax.cpu"):
    cpu.setup()
    cpu.setup()
  said = [r for r in caplog.records if "malloc is not tuned" in r.getMessage()]
  assert len(said) == 1 and "prepare_process" in said[0].getMessage()


def test_cpu_only_reads_jax_platforms_and_plugins(monkeypatch):
  import importlib.metadata
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert cpu.cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not cpu.cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not cpu.cpu_only()
  monkeypatch.delenv("JAX_PLATFORMS")
  plugin = importlib.metadata.EntryPoint("xla_cuda12", "jax_cuda12_plugin", "jax_plugins")
  monkeypatch.setattr(importlib.metadata, "entry_points",
                      lambda group=None: [plugin] if group == "jax_plugins" else [])
  assert not cpu.cpu_only()


def test_prepare_process_changes_nothing_off_cpu(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  monkeypatch.setattr(cpu, "tune_malloc", lambda: pytest.fail("tuned malloc on a GPU process"))
  assert cpu.prepare_process() is None


def test_jit_with_cpu_options_same_result():
  x = jnp.asarray(np.random.RandomState(0).randn(64, 96), jnp.float32)
  f = lambda a: jnp.tanh(a @ a.T).sum(axis=0)
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(f)(x)
    got = jax.jit(f, compiler_options=cpu.jit_options())(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


# A jitted function whose temporaries (~200 MB) XLA:CPU allocates on a worker thread at every
# call, as it does a train step's; prints the fewest minor page faults of calls 4..8 (tuned, the
# heap may still grow in the first calls while it settles; untuned, every call faults).
_FAULTS = textwrap.dedent("""
    import resource, sys
    from mpjax import cpu
    tuned = cpu.prepare_process() if sys.argv[1] == "prepared" else None
    import jax, jax.numpy as jnp
    x = jnp.ones((3072, 3072), jnp.float32)
    f = jax.jit(lambda a: jnp.tanh(a @ a + 1.0) @ jnp.exp(-a) + jnp.sin(a @ a.T))
    faults = []
    for _ in range(8):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(f(x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(tuned is not None, min(faults[3:]))
""")


def faults_per_call(mode):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=REPO)
  env.pop("GLIBC_TUNABLES", None)
  out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc malloc tuning: Linux/glibc only")
def test_malloc_tuned_before_jax_stops_the_per_call_page_faults():
  """Untuned, the worker thread's arena maps the temporaries afresh at every call (a page fault
  per 4 KiB page: tens of thousands, every call); prepared before JAX starts, freed memory is
  reused (no faults once the heap has settled)."""
  tuned, prepared = faults_per_call("prepared")
  _, untuned = faults_per_call("plain")
  assert tuned
  pages = 3 * 3072 * 3072 * 4 // 4096  # three temporaries of the function's size at least
  assert untuned > pages // 2, f"control: {untuned} faults untuned; the test measures nothing"
  assert prepared < pages // 20, f"{prepared} page faults in every call with malloc tuned"
