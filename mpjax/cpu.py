"""CPU-only settings for the demo and the tests (training runs on GPU/TPU; on CPU it is XLA's).

Two settings are kept, each because it measurably shortens the CPU train step
(`benchmarks/ast_step.py`; figures in docs/results.md):

  * `tune_malloc()`: glibc `mallopt(M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)`.
    XLA:CPU allocates a step's temporaries (over a gigabyte already for AST-tiny, batch 8)
    afresh at every call, on one of its worker threads. A thread with its own glibc arena cannot hold a block
    that large, so glibc maps it with mmap() and unmaps it after the step: every step then
    page-faults all of it in again. With one arena, no mmap and no trimming, freed memory is
    reused. glibc fixes a thread's arena at its first allocation and the arena limit at the
    first thread's, so this only works before any thread starts: `prepare_process()` is the
    first thing `mpjax.main`, the benchmarks and the tests' conftest do.
  * `jit_options()`: `compiler_options` for `jax.jit` of the hot step on the CPU backend:
    `xla_cpu_experimental_ynn_fusion_type=""` keeps dots and reductions on XLA's own (Eigen)
    code instead of YNNPACK fusions, which ran the AST step slower.

A GPU/TPU process changes nothing: `prepare_process()` decides before JAX starts, from
JAX_PLATFORMS and the installed accelerator plugins, and `setup()` from the backend.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import platform

CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
}
MALLOC_SETTINGS = {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
_MALLOPT_PARAM = {"M_TRIM_THRESHOLD": -1, "M_MMAP_MAX": -4, "M_ARENA_MAX": -8}  # malloc.h

_log = logging.getLogger(__name__)
_state = {"malloc": None, "warned": False}


def prepare_process() -> dict | None:
  """Call first, before numpy or jax are imported: tunes malloc when this process will run JAX
  on the CPU only (`cpu_only()`). Returns what was set, or None."""
  return tune_malloc() if cpu_only() else None


def cpu_only() -> bool:
  """Whether JAX will run on the CPU here, decided without starting JAX: JAX_PLATFORMS names
  only cpu, or no accelerator plugin (jax_plugins: CUDA, ROCm, ...) and no libtpu is installed."""
  platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return all(p == "cpu" for p in platforms)
  if list(importlib.metadata.entry_points(group="jax_plugins")):
    return False
  try:
    import jax_plugins  # the namespace package JAX scans for PJRT plugins; importing it is cheap
  except ImportError:
    jax_plugins = None
  if jax_plugins is not None and any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
    return False
  return importlib.util.find_spec("libtpu") is None


def tune_malloc() -> dict | None:
  """glibc only: one arena, no mmap, no trimming (see the module docstring). Returns the
  settings, or None where they cannot be made (not Linux/glibc)."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):
    return None
  if not all(mallopt(_MALLOPT_PARAM[k], v) for k, v in MALLOC_SETTINGS.items()):
    return None
  _state["malloc"] = dict(MALLOC_SETTINGS)
  return _state["malloc"]


def setup() -> dict | None:
  """The train loop's CPU setup: on the CPU backend the jit options for the hot step (and one
  log line if malloc was not tuned before JAX started); None on any other backend."""
  import jax
  if jax.default_backend() != "cpu":
    return None
  if _state["malloc"] is None and not _state["warned"]:
    _state["warned"] = True
    _log.warning("CPU: glibc malloc is not tuned, so every train step maps its temporaries "
                 "afresh (slower). Call mpjax.cpu.prepare_process() before importing numpy or "
                 "jax, as `python -m mpjax.main` does.")
  return jit_options("cpu")


def jit_options(backend: str | None = None) -> dict | None:
  """`compiler_options` for `jax.jit` on the CPU backend, else None."""
  if backend is None:
    import jax
    backend = jax.default_backend()
  return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else None
