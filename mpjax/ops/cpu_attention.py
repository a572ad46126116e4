"""The CPU attention kernel (cpu_attention.cc, C++) called through the XLA FFI, float32:
fused multi-head softmax attention, forward and backward, with the region-token prefix mask.

`mpjax.ops.attention` uses it for `model.attention = 'cpu'`, and for `'auto'` on the CPU
platform once `register()` has run in the process (`mpjax.cpu.setup()` does that on the CPU
backend only; GPU/TPU hosts never build it). Why: XLA:CPU runs attention unfused (batched
[N, N] dots at 110-190 GFLOP/s, then softmax passes over [N, N] tensors); the kernel works on
blocks of 64 query rows, flash-attention style: probabilities are recomputed in the backward
pass from the saved log-sum-exp, never stored, and q, k, v are read straight from the fused
projection's layout. Measurements: README, benchmarks/ast_step.py.

The library is compiled on first use with the system C++ compiler (`$CXX`, else c++ / g++ /
clang++) against the installed jaxlib's FFI headers (`jax.ffi.include_dir()`) with
`-O3 -march=native` (a few seconds), and cached under `$MPJAX_CACHE_DIR` (default
`~/.cache/mpjax/kernels`), keyed by source, jax version, flags, compiler and CPU flags. If there
is no compiler or the build fails, `register()` returns the reason (logged once) and attention
stays on XLA: same math, slower. `MPJAX_CPU_KERNELS=0` turns the kernel off.

Under a mesh of several CPU devices the call runs per batch shard when the step is traced
under the mesh (`mpjax.sharding.tracing_mesh`, as the train loop does); otherwise XLA gathers
its operands and runs it whole on every device (correct, not sharded).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_attention.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
FWD_TARGET, BWD_TARGET = "mpjax_attention_fwd", "mpjax_attention_bwd"
_log = logging.getLogger(__name__)


def enabled_by_env() -> bool:
  return os.environ.get("MPJAX_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> str:
  return os.environ.get("MPJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mpjax")


def _compiler() -> str | None:
  for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if c and shutil.which(c):
      return c
  return None


def _cpu_id() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def build(verbose: bool = False) -> str:
  """Compiles the kernel (if not cached) and returns the shared library's path. Raises
  RuntimeError naming the compiler and its output on failure."""
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
  with open(SOURCE, "rb") as f:
    src = f.read()
  key = hashlib.sha256(b"\0".join([src, jax.__version__.encode(), " ".join(FLAGS).encode(),
                                   cxx.encode(), _cpu_id().encode()])).hexdigest()[:16]
  out_dir = os.path.join(cache_dir(), "kernels")
  lib = os.path.join(out_dir, f"cpu_attention_{key}.so")
  if os.path.exists(lib):
    return lib
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
  (print if verbose else _log.info)("compiling the mpjax CPU attention kernel (once; cached): " + " ".join(cmd))
  try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
      errors = [l for l in r.stderr.splitlines() if "error" in l.lower()] or r.stderr.splitlines()
      raise RuntimeError(f"compiling {SOURCE} failed (exit {r.returncode}; {' '.join(cmd)}):\n"
                         + "\n".join(errors[:20]))
    os.replace(tmp, lib)  # atomic: concurrent builders never load a half-written library
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return lib


_REGISTER_LOCK = threading.Lock()
_LOADED: list = []
_REGISTERED: list = []


@functools.cache
def _register_once() -> str | None:
  try:
    import ctypes
    lib = ctypes.cdll.LoadLibrary(build())
    _LOADED.append(lib)  # keep the library referenced while XLA holds its handlers
    for name, sym in ((FWD_TARGET, lib.MpjaxAttentionFwd), (BWD_TARGET, lib.MpjaxAttentionBwd)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(sym), platform="cpu")
    _REGISTERED.append(True)
  except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path, say why once
    _log.warning("mpjax CPU attention kernel unavailable, attention stays on XLA: %s", e)
    return f"{type(e).__name__}: {e}"
  return None


def register() -> str | None:
  """Builds and registers the kernel once per process (thread-safe) unless MPJAX_CPU_KERNELS=0.
  Returns None, or why it could not be."""
  if not enabled_by_env():
    return "turned off (MPJAX_CPU_KERNELS=0)"
  with _REGISTER_LOCK:
    return _register_once()


def registered() -> bool:
  """Whether `register()` succeeded in this process (never builds anything itself)."""
  return enabled_by_env() and bool(_REGISTERED)


def supports(qkv, heads: int) -> bool:
  """Whether the kernel can take this input: float32, head dim a multiple of 16."""
  b, n, d3 = qkv.shape
  return (qkv.dtype == jnp.float32 and d3 % (3 * heads) == 0 and (d3 // (3 * heads)) % 16 == 0
          and n >= 1)


def attention(qkv, heads: int, prefix: int = 0):
  """Multi-head softmax attention from the fused projection, on the CPU kernel.

  qkv: float32 [B, N, 3 * D], q, k, v blocks heads-major (timm/official order). prefix: the
  first `prefix` tokens are region tokens, masked as `mpjax.ops.attention.prefix_mask`
  (a prefix token sees itself and the non-prefix tokens; non-prefix tokens never see prefix
  tokens). Returns [B, N, D]. Differentiable (custom_vjp). The caller checks `supports` and
  `register()`s first: tracing emits the FFI call; compiling it needs the registration.
  """
  b, n, d3 = qkv.shape
  d = d3 // 3
  dh = d // heads
  if not 0 <= prefix < n:
    raise ValueError(f"prefix={prefix} must be in [0, tokens={n})")
  attrs = dict(heads=np.int64(heads), scale=np.float32(dh ** -0.5), prefix=np.int64(prefix))
  fwd_call = jax.ffi.ffi_call(FWD_TARGET, (jax.ShapeDtypeStruct((b, n, d), jnp.float32),
                                           jax.ShapeDtypeStruct((b, heads, n), jnp.float32)))
  bwd_call = jax.ffi.ffi_call(BWD_TARGET, jax.ShapeDtypeStruct((b, n, d3), jnp.float32))

  @jax.custom_vjp
  def attend(qkv):
    return fwd_call(qkv, **attrs)[0]

  def fwd(qkv):
    out, lse = fwd_call(qkv, **attrs)
    return out, (qkv, out, lse)

  def bwd(res, dout):
    qkv, out, lse = res
    return (bwd_call(qkv, out, lse, dout.astype(jnp.float32), **attrs),)

  attend.defvjp(fwd, bwd)
  return attend(qkv)
