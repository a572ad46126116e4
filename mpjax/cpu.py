"""CPU-only tuning, in one place (measured: benchmarks/ast_step.py, figures in README).

`setup()` applies it when the process's default backend is CPU and does nothing elsewhere (a
GPU/TPU host never changes its allocator or builds the CPU kernel):
  * registers the C++ attention kernel (`mpjax.ops.cpu_attention`), which
    `model.attention='auto'` then uses on the CPU platform;
  * `tune_malloc()`;
  * returns `jit_options()` for the hot step's `jax.jit(..., compiler_options=...)`.
  * `jit_options()`: `compiler_options` for `jax.jit` of the hot step.
    - `xla_cpu_experimental_ynn_fusion_type=""`: this jaxlib routes dots and reductions through
      YNNPACK fusions; for the AST step they ran the dense matmuls slower than Eigen's
      (60-110 against 105-160 GFLOP/s when first measured) and gave no step gain since.
    The tree-reduction rewrite stays on: with the bias and LayerNorm-parameter gradients
    left to XLA (column sums over all tokens) turning it off made the step slower (README).
  * `tune_malloc()`: glibc `mallopt(M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1)`,
    process-wide. XLA:CPU allocates a step's temporaries (1.1 GB for AST-tiny, batch 8) afresh
    at every call and glibc serves them with fresh mmap()s: every step page-faulted ~440k pages
    (1.4 s of kernel time per step on 2 cores). With the settings freed memory is reused.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
}


def setup() -> dict | None:
  """CPU backend: registers the C++ attention kernel, tunes malloc, returns the XLA:CPU jit
  options. Any other backend: nothing, None."""
  import jax
  if jax.default_backend() != "cpu":
    return None
  from mpjax.ops import cpu_attention
  cpu_attention.register()  # on failure it logs why once; attention then stays on XLA
  tune_malloc()
  return jit_options("cpu")


def jit_options(backend: str | None = None) -> dict | None:
  """`compiler_options` for `jax.jit` on the CPU backend, else None."""
  import jax
  backend = backend or jax.default_backend()
  return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else None


def tune_malloc(no_trim: bool = False) -> dict | None:
  """glibc only: keep freed memory for reuse instead of unmapping it. Returns what was set.

  `no_trim=True` sets M_TRIM_THRESHOLD=-1 ("disables trimming completely", mallopt(3)) instead
  of 2**31-1. The cap matters: XLA:CPU's per-call temp block (1.13 GB for AST-tiny, batch 8)
  plus what was freed next to it left > 2 GiB free at the heap top, so glibc still gave ~2.2 GB
  back with brk() after every step and the next step page-faulted it in again (~110-220k minor
  faults, ~0.6 s of kernel time per step on 2 cores; with -1: 0 faults, ~0 s)."""
  if platform.system() != "Linux":
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
  trim = -1 if no_trim else 2**31 - 1
  ok = (mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, trim))
  return dict(M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=trim) if all(ok) else None
