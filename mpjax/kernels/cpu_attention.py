"""Fused softmax attention for XLA:CPU: a C++ kernel (attention_cpu.cc) called through the XLA FFI.

Why: on XLA:CPU the unfused attention (batched [N, N] dots, then softmax passes over [N, N]
tensors) was the whole speed gap of the AST train step to PyTorch's fused CPU attention
(benchmarks/ast_step.py; numbers in README). The kernel computes forward and backward a block of
64 query rows at a time, flash-attention style: the probabilities are recomputed in the backward
pass from the saved log-sum-exp, never stored (so the step also keeps ~25 MB less per layer for
AST-tiny at batch 8), and q, k, v are read straight from the fused projection's layout.

The kernel is compiled on first use with the system C++ compiler (`$CXX`, else `c++`/`g++`)
against the installed jaxlib's FFI headers (`jax.ffi.include_dir()`), `-O3 -march=native`, and
cached under `$MPJAX_CACHE_DIR` (default `~/.cache/mpjax`) keyed by source, jax version, flags
and CPU. If there is no compiler or the build fails, `available()` is False, the reason is
logged once, and callers use the XLA implementation (`mpjax.models.ast.softmax_attention`): same
math, slower. `MPJAX_CPU_ATTENTION=0` turns the kernel off (e.g. to compare the two).

Contract: float32 only, head_dim a multiple of 16, the CPU backend. Under a mesh the call is
partitioned along the batch axis (`register_ffi_target_as_batch_partitionable`).
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

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attention_cpu.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
_FWD, _BWD, _DENSE = "mpjax_attention_fwd", "mpjax_attention_bwd", "mpjax_dense_grad"
_log = logging.getLogger(__name__)


def enabled_by_env() -> bool:
  return os.environ.get("MPJAX_CPU_ATTENTION", "1").strip().lower() not in ("0", "false", "no", "off")


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
  lib = os.path.join(out_dir, f"attention_cpu_{key}.so")
  if os.path.exists(lib):
    return lib
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
  if verbose:
    print(" ".join(cmd))
  try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
      raise RuntimeError(f"compiling {SOURCE} failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
    os.replace(tmp, lib)  # atomic: concurrent builders never load a half-written library
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return lib


@functools.cache
def _register() -> str | None:
  """Builds and registers the FFI targets once. Returns None, or why it could not."""
  if jax.default_backend() != "cpu" and not any(d.platform == "cpu" for d in jax.devices("cpu")):
    return "no CPU backend"
  try:
    import ctypes
    lib = ctypes.cdll.LoadLibrary(build())
    for name, sym in ((_FWD, lib.MpjaxAttentionFwd), (_BWD, lib.MpjaxAttentionBwd)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(sym), platform="cpu")
      jax.ffi.register_ffi_target_as_batch_partitionable(name)
    # Not batch-partitionable: its outputs sum over the rows (XLA replicates it under a mesh).
    jax.ffi.register_ffi_target(_DENSE, jax.ffi.pycapsule(lib.MpjaxDenseGrad), platform="cpu")
  except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path, say why once
    _log.warning("mpjax CPU attention kernel unavailable, using the XLA implementation: %s", e)
    return f"{type(e).__name__}: {e}"
  return None


def available() -> bool:
  """True when the kernel is enabled (MPJAX_CPU_ATTENTION) and built and registered."""
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
    raise RuntimeError(f"mpjax CPU attention kernel unavailable: {why}")
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


def dense_supported(x, w) -> bool:
  """Whether `mpjax.models.ast` may compute this dense layer's weight gradient on the kernel."""
  return (x.ndim == 2 and x.dtype == jnp.float32 and w.dtype == jnp.float32
          and w.shape[1] % 16 == 0 and available())
