"""Multi-head softmax attention with one knob, `model.attention`:

  auto    chosen per platform when the program is lowered (`jax.lax.platform_dependent`):
          cuda: cuDNN fused (flash) attention for bfloat16/float16 where this host can trace it,
                else XLA; tpu: Pallas splash attention; cpu and anything else: XLA.
  xla     `jax.nn.dot_product_attention(implementation='xla')` on every platform (portable:
          what an exported program should carry).
  cudnn   cuDNN on cuda (an error where it cannot be used), XLA on other platforms.
  splash  splash attention on tpu, XLA on other platforms.
  cpu     deprecated alias of `xla` (it named a C++ CPU kernel, removed: CPU attention is XLA's).

Every choice is the same math, so one traced step is right on cpu, cuda and tpu.

Region tokens (`prefix` > 0, see `mpjax.models.ast.AST.encode`): each of the first `prefix`
tokens attends to itself and to the audio tokens; audio tokens never attend to prefix tokens.
XLA takes that as a boolean mask. The fused kernels need no mask: the audio tokens' attention is
plain attention over the audio tokens, and the few prefix queries are computed beside it in XLA
([prefix, N] scores).
"""
from __future__ import annotations

import functools
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
# Old names still accepted (saved configs of earlier runs carry them), each with a warning.
DEPRECATED = {"cpu": "xla"}
_log = logging.getLogger(__name__)


def check_implementation(name: str) -> str:
  """The implementation `name` stands for; a clear error for unknown names."""
  if name in DEPRECATED:
    warnings.warn(f"model.attention={name!r} is deprecated and now means "
                  f"{DEPRECATED[name]!r}: the C++ CPU attention kernel was removed (CPU "
                  f"attention is XLA's). Use 'auto' or 'xla'.", DeprecationWarning, stacklevel=3)
    return DEPRECATED[name]
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention={name!r}: choose one of {IMPLEMENTATIONS}")
  return name


def prefix_mask(n: int, prefix: int) -> np.ndarray:
  """[n, n] boolean (True = attend) for `prefix` region tokens in front of n - prefix tokens."""
  q, k = np.arange(n)[:, None], np.arange(n)[None, :]
  return (k >= prefix) | (q == k)


def attention(qkv, heads: int, *, prefix: int = 0, implementation: str = "auto"):
  """qkv: [B, N, 3 * D], the fused projection (q, k, v blocks, heads-major: timm/official
  order). Returns [B, N, D] in qkv's dtype (softmax statistics in float32)."""
  implementation = check_implementation(implementation)
  b, n, d3 = qkv.shape
  if d3 % (3 * heads):
    raise ValueError(f"attention: qkv width {d3} is not 3 x heads ({heads}) x head_dim")
  if not 0 <= prefix < n:
    raise ValueError(f"attention: prefix={prefix} must be in [0, tokens={n})")
  branches = {}
  if implementation in ("auto", "cudnn"):
    fn = _cudnn_branch(qkv, heads, prefix, required=implementation == "cudnn")
    if fn is not None:
      branches["cuda"] = fn
  if implementation in ("auto", "splash"):
    branches["tpu"] = lambda x: _fused(_splash, x, heads, prefix)
  xla = lambda x: _xla(x, heads, prefix)
  if not branches:
    return xla(qkv)
  return jax.lax.platform_dependent(qkv, default=xla, **branches)


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------


def _split_heads(qkv, heads):
  b, n, d3 = qkv.shape
  t = qkv.reshape(b, n, 3, heads, d3 // (3 * heads))
  return t[:, :, 0], t[:, :, 1], t[:, :, 2]  # [B, N, H, Dh] each


def _xla(qkv, heads, prefix):
  q, k, v = _split_heads(qkv, heads)
  b, n, h, dh = q.shape
  mask = jnp.asarray(prefix_mask(n, prefix))[None, None] if prefix else None
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  return out.reshape(b, n, h * dh)


def _fused(core, qkv, heads, prefix):
  """Unmasked fused attention `core(q, k, v) -> [B, M, H, Dh]` over the audio tokens, and the
  prefix (region) queries in XLA: each sees its own key and the audio keys."""
  q, k, v = _split_heads(qkv, heads)
  b, n, h, dh = q.shape
  audio = core(q[:, prefix:], k[:, prefix:], v[:, prefix:])
  if prefix:
    f32 = jnp.float32
    qp = q[:, :prefix].astype(f32) * dh ** -0.5
    s_audio = jnp.einsum("bphd,bnhd->bhpn", qp, k[:, prefix:].astype(f32))
    s_self = jnp.einsum("bphd,bphd->bhp", qp, k[:, :prefix].astype(f32))[..., None]
    w = jax.nn.softmax(jnp.concatenate([s_self, s_audio], axis=-1), axis=-1)
    out_p = (w[..., 0].transpose(0, 2, 1)[..., None] * v[:, :prefix].astype(f32)
             + jnp.einsum("bhpn,bnhd->bphd", w[..., 1:], v[:, prefix:].astype(f32)))
    audio = jnp.concatenate([out_p.astype(audio.dtype), audio], axis=1)
  return audio.reshape(b, n, h * dh)


def _cudnn_core(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def _cudnn_branch(qkv, heads, prefix, required):
  if qkv.dtype not in (jnp.bfloat16, jnp.float16):
    if required:
      raise ValueError(f"model.attention='cudnn' needs model.dtype bfloat16 or float16, got "
                       f"{qkv.dtype}")
    return None
  b, n, d3 = qkv.shape
  why = _cudnn_unusable(b, n - prefix, heads, d3 // (3 * heads), str(qkv.dtype))
  if why is not None:
    if required:
      raise RuntimeError(f"model.attention='cudnn' cannot be traced on this host: {why}")
    return None
  return lambda x: _fused(_cudnn_core, x, heads, prefix)


@functools.cache
def _cudnn_unusable(b, n, h, dh, dtype) -> str | None:
  """None if jax's cuDNN attention traces for these shapes here, else why. jax checks for the
  cuDNN library (and the GPU's limits) while tracing, so a host without CUDA cannot stage it
  out: 'auto' then gives the cuda platform XLA attention, and says so once."""
  x = jax.ShapeDtypeStruct((b, n, h, dh), jnp.dtype(dtype))
  try:
    jax.eval_shape(jax.grad(lambda q, k, v: _cudnn_core(q, k, v).astype(jnp.float32).sum()),
                   x, x, x)
  except (RuntimeError, NotImplementedError, ValueError) as e:
    _log.info("cuDNN attention unusable for [%d, %d, %d, %d] %s (%s): XLA attention on cuda",
              b, n, h, dh, dtype, e)
    return f"{type(e).__name__}: {e}"
  return None


def _splash(q, k, v):
  """Pallas splash attention (TPU), batched; tokens padded to a multiple of 128, the padding
  in its own segment so real queries never see it."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, n, h, dh = q.shape
  padded = -(-n // 128) * 128
  block = next(s for s in (512, 256, 128) if padded % s == 0)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  kernel = sk.make_splash_mha(sm.MultiHeadMask([sm.FullMask((padded, padded))] * h),
                              block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=_SPLASH_INTERPRET)
  seg = jnp.asarray(np.arange(padded) >= n, jnp.int32)
  layout = lambda x: jnp.pad(x, ((0, 0), (0, padded - n), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  def one_shard(q, k, v):
    out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(
        layout(q * jnp.asarray(dh ** -0.5, q.dtype)), layout(k), layout(v), sk.SegmentIds(seg, seg))
    return out.transpose(0, 2, 1, 3)[:, :n]

  return _batch_sharded(one_shard, q, k, v)


# Tests run the splash kernel in Pallas' interpreter on CPU (`interpret=True`).
_SPLASH_INTERPRET = False


def _batch_sharded(fn, *xs):
  """fn on each device's slice of the batch when a mesh is set (`jax.set_mesh`) and divides
  the batch: fused kernels (splash) are opaque to XLA's partitioner, which would otherwise
  gather the whole batch onto every device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or xs[0].shape[0] % mesh.size:
    return fn(*xs)
  spec = P(tuple(mesh.axis_names))
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(xs), out_specs=spec,
                       check_vma=False)(*xs)
