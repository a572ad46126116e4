"""Hand-written XLA:CPU kernels (cpu_kernels.cc, C++) called through the XLA FFI, float32:

  attention(qkv, heads, prefix)  fused multi-head softmax attention, forward and backward
  dense_grad(x, g)               x^T g and column sums of g: a dense layer's weight/bias grads

Why: they were the speed gap of the AST train step to PyTorch on CPU (benchmarks/ast_step.py;
numbers in README). XLA:CPU runs attention unfused (batched [N, N] dots at 110-190 GFLOP/s, then
softmax passes over [N, N] tensors) and ran the transposed, long-contraction weight-gradient
dot at 150-200 GFLOP/s where torch reached ~300. The attention kernel works on blocks of 64
query rows, flash-attention style: the probabilities are recomputed in the backward pass from
the saved log-sum-exp, never stored (AST-tiny at batch 8 keeps ~25 MB less per layer), and q,
k, v are read straight from the fused projection's layout.

The library is compiled on first use with the system C++ compiler (`$CXX`, else c++ / g++ /
clang++) against the installed jaxlib's FFI headers (`jax.ffi.include_dir()`) with
`-O3 -march=native` (a few seconds), and cached under `$MPJAX_CACHE_DIR` (default
`~/.cache/mpjax/kernels`), keyed by source, jax version, flags, compiler and CPU flags. If there
is no compiler or the build fails, `available()` is False, the reason is logged once, and
`mpjax.models.ast` uses its XLA implementations: same math, slower. `MPJAX_CPU_KERNELS=0` turns
the kernels off (to compare, or to rule them out).

Under a mesh of several CPU devices XLA all-gathers the kernels' operands and runs each call
whole on every device: correct (tests/test_cpu_kernels.py checks sharded == one device), not
sharded. (`register_ffi_target_as_batch_partitionable` did not stop the all-gather with this
jax.) CPU training is one device; GPUs/TPUs never take these kernels.
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

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
_FWD, _BWD, _DENSE = "mpjax_attention_fwd", "mpjax_attention_bwd", "mpjax_dense_grad"
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
  lib = os.path.join(out_dir, f"cpu_kernels_{key}.so")
  if os.path.exists(lib):
    return lib
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
  (print if verbose else _log.info)("compiling the mpjax CPU kernels (once; cached): " + " ".join(cmd))
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


@functools.cache
def _register_once() -> str | None:
  try:
    import ctypes
    lib = ctypes.cdll.LoadLibrary(build())
    _LOADED.append(lib)  # keep the library referenced while XLA holds its handlers
    for name, sym in ((_FWD, lib.MpjaxAttentionFwd), (_BWD, lib.MpjaxAttentionBwd),
                      (_DENSE, lib.MpjaxDenseGrad)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(sym), platform="cpu")
  except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path, say why once
    _log.warning("mpjax CPU kernels unavailable, using the XLA implementations: %s", e)
    return f"{type(e).__name__}: {e}"
  return None


def _register() -> str | None:
  """Builds and registers the FFI targets once per process (thread-safe). Returns None, or why
  they could not be."""
  with _REGISTER_LOCK:
    return _register_once()


def available() -> bool:
  """True when the kernels are enabled (MPJAX_CPU_KERNELS) and built and registered."""
  return enabled_by_env() and _register() is None


def supports(qkv, heads: int) -> bool:
  """Whether `attention(qkv, heads)` can take this input (else use the XLA implementation)."""
  b, n, d3 = qkv.shape
  return (qkv.dtype == jnp.float32 and d3 % (3 * heads) == 0 and (d3 // (3 * heads)) % 16 == 0
          and n >= 1 and available())


def attention(qkv, heads: int, prefix: int = 0):
  """Multi-head softmax attention from the fused projection, on the CPU kernel.

  qkv: float32 [B, N, 3 * D], q, k, v blocks heads-major (timm/official order). prefix: the
  first `prefix` tokens are region tokens, masked as `mpjax.models.ast.AST.encode` masks them
  (a prefix token sees itself and the non-prefix tokens; non-prefix tokens never see prefix
  tokens). Returns [B, N, D]. Differentiable (custom_vjp); the caller checks `supports` first.
  """
  b, n, d3 = qkv.shape
  d = d3 // 3
  dh = d // heads
  if not 0 <= prefix < n:
    raise ValueError(f"prefix={prefix} must be in [0, tokens={n})")
  why = _register()
  if why is not None:
    raise RuntimeError(f"mpjax CPU kernels unavailable: {why}")
  attrs = dict(heads=np.int64(heads), scale=np.float32(dh ** -0.5), prefix=np.int64(prefix))
  fwd_call = jax.ffi.ffi_call(_FWD, (jax.ShapeDtypeStruct((b, n, d), jnp.float32),
                                     jax.ShapeDtypeStruct((b, heads, n), jnp.float32)))
  bwd_call = jax.ffi.ffi_call(_BWD, jax.ShapeDtypeStruct((b, n, d3), jnp.float32))

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


def dense_grad(x, g):
  """(x^T g, column sums of g) for x [rows, din], g [rows, dout] float32, on the CPU kernel:
  the weight and bias gradients of `x @ w + b`. dout must be a multiple of 16."""
  why = _register()
  if why is not None:
    raise RuntimeError(f"mpjax CPU kernels unavailable: {why}")
  call = jax.ffi.ffi_call(_DENSE, (jax.ShapeDtypeStruct((x.shape[1], g.shape[1]), jnp.float32),
                                   jax.ShapeDtypeStruct((g.shape[1],), jnp.float32)))
  return call(x.astype(jnp.float32), g.astype(jnp.float32))


# The kernel keeps one partial dw per thread and adds each block of 256 rows into it; past ~1 MB
# (AST-small and -base layers are 2.4-7 MB) that partial no longer stays in a core's L2 and the
# kernel loses to XLA's blocked dot. AST-tiny's largest is 192 x 768 (0.6 MB).
DENSE_GRAD_MAX_WEIGHTS = 2**18


def dense_supported(x, w) -> bool:
  """Whether `mpjax.models.ast` computes this dense layer's weight gradient on the kernel:
  float32 2-D x, dout a multiple of 16, din * dout <= DENSE_GRAD_MAX_WEIGHTS."""
  return (x.ndim == 2 and x.dtype == jnp.float32 and w.dtype == jnp.float32
          and w.shape[1] % 16 == 0 and w.shape[0] * w.shape[1] <= DENSE_GRAD_MAX_WEIGHTS
          and available())
