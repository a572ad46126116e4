"""Audio Spectrogram Transformer (AST) encoder in Flax NNX, and weight conversion.

The model is the AST of Gong et al. (2021) exactly as the official code and HF's `ASTModel`:
a 16x16 conv patch embedding over the (frequency, time) plane with strides (fstride, tstride),
a cls and a distillation token, learned position embeddings, pre-LN transformer blocks with
exact (erf) GELU, a final LayerNorm, and the pooled output `(cls + dist) / 2`.

Input: log-mel fbank frames `[batch, time, mel]` (see `mpjax.audio.fbank`), already normalised.
Token order is frequency-major, as in the official code: patch (fi, ti) is token `fi * Tp + ti`.

Weight conversion (public API, other tooling calls these names):
  from_hf_state_dict(state_dict, hf_config)   HF ASTModel / ASTForAudioClassification, both
                                               the hub checkpoints' naming and transformers 5.x's
  from_deit_state_dict(state_dict, input_fdim, input_tdim, fstride, tstride)
                                               timm DeiT/ViT (and official AST) by the official rule
  load(path, ...)                              .safetensors / .pth (weights_only) / .bin / .npz

Implementation note (speed): the patch "conv" is done as patch extraction + one matmul. The
input spectrogram never needs a gradient, so the extraction is a plain gather (or a reshape
when the strides equal the patch size) and the kernel gradient is a single matmul; XLA's CPU
convolution with 16x16 kernels and large strides was the slow part of a naive port.
The rest is tuned for XLA:CPU (benchmarks/ast_step.py has the measurements), same math as the
straightforward version (float32 parity with HF stays ~1e-7 to 1e-6 relative, forward and
gradients):
  - on the CPU backend in float32, attention and the dense layers' weight/bias gradients run
    in C++ kernels (`mpjax.kernels.cpu_kernels`, compiled on first use; `MPJAX_CPU_KERNELS=0`
    or no C++ compiler: the XLA versions below). Attention takes the fused qkv projection and
    does forward and backward flash-attention style (blocks of 64 queries, probabilities
    recomputed from the saved log-sum-exp); the region-token mask is built in (`prefix`);
  - otherwise on CPU attention is a hand-written custom_vjp from the fused qkv projection
    (`softmax_attention`): no [N, N] probability tensor in the backward pass, the softmax-row
    term from rowsum(do * o), row sums from the value matmul, d(qkv) in one tensor. Other
    backends keep `jax.nn.dot_product_attention` (cuDNN where available);
  - dense layers see 2-D [rows, features] views, so each weight gradient is one matmul
    (on [B, N, D] XLA:CPU added a transposed copy of an activation per dense layer); bias and
    LayerNorm-parameter gradients are matrix-vector products (XLA's column reductions were slow);
  - exact GELU and LayerNorm with hand-written derivatives (fewer passes than autodiff's).
Settings outside this module matter as much on CPU; the train step makes them
(`mpjax.cpu`): XLA:CPU compiler options (no YNNPACK fusions, no tree-reduction rewrite) and
glibc malloc tuned to reuse memory (XLA:CPU allocates the step's ~1 GB of temporaries per call
and glibc mmap()s them afresh: ~440k page faults per tiny step).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mpjax.kernels import cpu_kernels

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

# (hidden, depth, heads); mlp = 4 * hidden. DeiT/ViT sizes, head dim 64.
VARIANTS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


@dataclasses.dataclass(frozen=True)
class ASTConfig:
  """Static shape of an AST. `dtype` is the compute dtype; parameters stay float32."""

  hidden: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  patch: int = 16
  fstride: int = 10
  tstride: int = 10
  input_fdim: int = 128  # mel bins
  input_tdim: int = 1024  # frames
  ln_eps: float = 1e-6  # 1e-6 official/timm, 1e-12 HF
  qkv_bias: bool = True
  dtype: str = "float32"  # or "bfloat16"
  remat: bool = False

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"ASTConfig.{field}={getattr(self, field)!r}: {why}")

    for f in ("hidden", "depth", "heads", "mlp_dim", "patch", "fstride", "tstride",
              "input_fdim", "input_tdim"):
      if not isinstance(getattr(self, f), (int, np.integer)) or getattr(self, f) <= 0:
        bad(f, "must be a positive integer")
    if self.hidden % self.heads:
      bad("heads", f"must divide hidden={self.hidden}")
    if self.input_fdim < self.patch:
      bad("input_fdim", f"shorter than one patch ({self.patch})")
    if self.input_tdim < self.patch:
      bad("input_tdim", f"shorter than one patch ({self.patch})")
    if not self.ln_eps > 0:
      bad("ln_eps", "must be > 0")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      bad("dtype", "must be float32, bfloat16 or float16")

  @property
  def grid(self) -> tuple[int, int]:
    """(frequency patches, time patches), as the official code computes them."""
    f = (self.input_fdim - self.patch) // self.fstride + 1
    t = (self.input_tdim - self.patch) // self.tstride + 1
    return f, t

  @property
  def num_patches(self) -> int:
    f, t = self.grid
    return f * t


def config_for(variant: str = "base", **overrides) -> ASTConfig:
  """ASTConfig for a named size ('tiny', 'small', 'base') with field overrides."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown AST variant {variant!r}; known: {sorted(VARIANTS)}")
  hidden, depth, heads = VARIANTS[variant]
  kw = dict(hidden=hidden, depth=depth, heads=heads, mlp_dim=4 * hidden)
  kw.update(overrides)
  return ASTConfig(**kw)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

_init = nnx.initializers.truncated_normal(stddev=0.02)


def _dense(din, dout, cfg, rngs, use_bias=True):
  return _Linear(din, dout, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.float32, kernel_init=_init, rngs=rngs)


def _norm(cfg, rngs):
  # LayerNorm statistics in float32 whatever the compute dtype.
  return _LayerNorm(cfg.hidden, epsilon=cfg.ln_eps, dtype=jnp.float32,
                    param_dtype=jnp.float32, rngs=rngs)


# ----------------------------------------------------------------------------------------------
# Hand-written primitives (speed). Same math as the library versions, with backward passes that
# touch each large tensor as few times as possible; see the module docstring.
# ----------------------------------------------------------------------------------------------


def _column_sum(g):
  """float32 sum of a [rows, features] matrix over its rows, as a matrix-vector product."""
  return jnp.dot(jnp.ones((g.shape[0],), g.dtype), g, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _add_bias(y, b):
  return y + b


def _add_bias_fwd(y, b):
  return y + b, None


def _add_bias_bwd(_, g):
  return g, _column_sum(g.reshape(-1, g.shape[-1]))


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def _linear_cpu(x, w, b):
  """`x @ w + b` (x [rows, din], float32) whose weight and bias gradients come from the CPU
  kernel `cpu_kernels.dense_grad` (XLA:CPU ran that product 1.6-2x slower than torch)."""
  return x @ w + b


def _linear_cpu_fwd(x, w, b):
  return x @ w + b, (x, w)


def _linear_cpu_bwd(res, g):
  x, w = res
  dw, db = cpu_kernels.dense_grad(x, g)
  return g @ w.T, dw, db


_linear_cpu.defvjp(_linear_cpu_fwd, _linear_cpu_bwd)


class _Linear(nnx.Linear):
  """`nnx.Linear` (same parameters). On the CPU backend in float32 the weight and bias
  gradients come from the CPU kernel; otherwise the bias gradient is a matrix-vector product."""

  def __call__(self, x, *args, **kwargs):
    if args or kwargs or self.bias is None:
      return super().__call__(x, *args, **kwargs)
    dtype = self.dtype or jnp.float32
    w, b = self.kernel[...], self.bias[...]
    if (jax.default_backend() == "cpu" and dtype == jnp.float32
        and cpu_kernels.dense_supported(x, w)):
      return _linear_cpu(x, w, b)
    y = jax.lax.dot_general(x.astype(dtype), w.astype(dtype),
                            (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
    return _add_bias(y, b.astype(dtype))


def _flat_dense(layer, x):
  """`layer(x)` on `x` viewed as a matrix [rows, features] (a free reshape).

  With [B, N, D] activations XLA:CPU computes the weight gradient by contracting over two
  axes and inserts a transposed copy of the activation (or of its gradient) for every dense
  layer; on a 2-D view the gradient is one plain matmul."""
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@jax.custom_vjp
def _gelu(x):
  """Exact (erf) GELU, `x * (1 + erf(x / sqrt 2)) / 2` as torch's; hand-written derivative
  `cdf(x) + x * pdf(x)`, one pass over the saved input."""
  return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


def _gelu_fwd(x):
  return _gelu(x), x


def _gelu_bwd(x, g):
  cdf = 0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype))
  pdf = jnp.asarray(_INV_SQRT_2PI, x.dtype) * jnp.exp(-0.5 * x * x)
  return (g * (cdf + x * pdf),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _ln_stats(x, eps):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  xc = x - mean
  var = jnp.mean(xc * xc, axis=-1, keepdims=True)  # two-pass variance, as torch
  rstd = jax.lax.rsqrt(var + eps)
  return xc * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
  """LayerNorm over the last axis, `(x - mean) / sqrt(var + eps) * scale + bias`."""
  return _ln_stats(x, eps)[0] * scale + bias


def _layer_norm_fwd(x, scale, bias, eps):
  xhat, rstd = _ln_stats(x, eps)
  return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, dy):
  xhat, rstd, scale = res
  g = dy * scale
  dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
               - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
  d = dy.shape[-1]
  return dx, _column_sum((dy * xhat).reshape(-1, d)), _column_sum(dy.reshape(-1, d))


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class _LayerNorm(nnx.LayerNorm):
  """`nnx.LayerNorm` (same parameters) computed by `_layer_norm`: two-pass float32 statistics
  and a hand-written backward pass."""

  def __call__(self, x, *args, **kwargs):
    if (args or kwargs or self.scale is None or self.bias is None
        or self.reduction_axes not in (-1, (-1,)) or self.feature_axes not in (-1, (-1,))):
      return super().__call__(x, *args, **kwargs)
    dtype = self.dtype or jnp.float32
    return _layer_norm(x.astype(dtype), self.scale[...].astype(dtype),
                      self.bias[...].astype(dtype), self.epsilon)


def _attn_core_fwd(q, k, v, mask):
  """q (already scaled), k, v: [B, H, N, Dh]. Softmax in float32; the probabilities are
  normalised after the value product (`(e @ v) / l`), on [N, Dh] rather than [N, N], and the
  row sums l come out of that same product (v gets a column of ones), which saves XLA:CPU a
  separate reduction pass over the [N, N] scores."""
  s = jnp.einsum("bhnd,bhmd->bhnm", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    s = jnp.where(mask, s, jnp.finfo(s.dtype).min)
  e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
  dh = v.shape[-1]
  v1 = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
  ol = jnp.einsum("bhnm,bhmd->bhnd", e.astype(v.dtype), v1, preferred_element_type=jnp.float32)
  l = ol[..., dh:]
  return (ol[..., :dh] / l).astype(v.dtype), e, l


def _attn_core_bwd(q, k, v, e, l, o, do):
  """Softmax-attention backward with the probabilities p = e / l never formed. With
  dP = do @ v^T and D = rowsum(do * o) (= rowsum(dP * p)), the score gradient is
  ds = p * (dP - D) = e * (dP / l - D / l): one pass over [N, N]; dv = p^T @ do = e^T @ (do / l)."""
  f32 = jnp.float32
  dol = (do.astype(f32) / l).astype(v.dtype)
  dv = jnp.einsum("bhnm,bhnd->bhmd", e.astype(v.dtype), dol, preferred_element_type=f32)
  dp = jnp.einsum("bhnd,bhmd->bhnm", dol, v, preferred_element_type=f32)
  dsum = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True) / l
  ds = (e * (dp - dsum)).astype(q.dtype)
  dq = jnp.einsum("bhnm,bhmd->bhnd", ds, k, preferred_element_type=f32)
  dk = jnp.einsum("bhnm,bhnd->bhmd", ds, q, preferred_element_type=f32)
  return dq, dk, dv.astype(f32)


def softmax_attention(qkv, heads, mask=None):
  """Multi-head softmax attention straight from the fused projection.

  qkv: [B, N, 3 * D], the q, k, v blocks heads-major (timm/official order). mask: optional
  boolean, broadcastable to [B, heads, N, N] (True = attend). Returns [B, N, D] (heads-major).
  Same math as `jax.nn.dot_product_attention`; the backward pass is hand-written
  (flash-attention style) and returns d(qkv) in the projection's layout in one tensor.
  """
  b, n, d3 = qkv.shape
  dh = d3 // (3 * heads)
  scale = dh ** -0.5

  @jax.custom_vjp
  def attend(qkv):
    return fwd(qkv)[0]

  def fwd(qkv):
    t = qkv.reshape(b, n, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # [3, B, H, N, Dh]
    q = t[0] * jnp.asarray(scale, qkv.dtype)
    o, e, l = _attn_core_fwd(q, t[1], t[2], mask)
    return o.transpose(0, 2, 1, 3).reshape(b, n, heads * dh), (q, t[1], t[2], e, l, o)

  def bwd(res, dout):
    q, k, v, e, l, o = res
    do = dout.reshape(b, n, heads, dh).transpose(0, 2, 1, 3)
    dq, dk, dv = _attn_core_bwd(q, k, v, e, l, o, do)
    d = jnp.stack([dq * scale, dk, dv])  # [3, B, H, N, Dh]
    return (d.transpose(1, 3, 0, 2, 4).reshape(b, n, d3).astype(qkv.dtype),)

  attend.defvjp(fwd, bwd)
  return attend(qkv)


class PatchEmbed(nnx.Module):
  """Conv2d(1, hidden, kernel=patch, stride=(fstride, tstride)) as gather + matmul."""

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.kernel = nnx.Param(_init(rngs.params(), (cfg.patch, cfg.patch, cfg.hidden)))
    self.bias = nnx.Param(jnp.zeros((cfg.hidden,), jnp.float32))

  def patches(self, x):
    """[B, T, F] -> [B, Fp, Tp, patch_f, patch_t] (static indices; no gradient needed)."""
    c = self.cfg
    fp, tp = c.grid
    x = jnp.swapaxes(x, 1, 2)  # [B, F, T], the official layout
    if c.fstride == c.patch and c.tstride == c.patch:
      x = x[:, :fp * c.patch, :tp * c.patch]
      x = x.reshape(x.shape[0], fp, c.patch, tp, c.patch)
      return x.transpose(0, 1, 3, 2, 4)
    fidx = (np.arange(fp)[:, None] * c.fstride + np.arange(c.patch)[None, :])  # [Fp, pf]
    tidx = (np.arange(tp)[:, None] * c.tstride + np.arange(c.patch)[None, :])  # [Tp, pt]
    return x[:, fidx[:, None, :, None], tidx[None, :, None, :]]

  def __call__(self, x):
    dtype = jnp.dtype(self.cfg.dtype)
    p = self.patches(x.astype(dtype))
    b, fp, tp = p.shape[:3]
    p = p.reshape(b * fp * tp, self.cfg.patch * self.cfg.patch)  # 2-D: see _flat_dense
    k = self.kernel[...].astype(dtype).reshape(-1, self.cfg.hidden)
    return ((p @ k).astype(jnp.float32) + self.bias[...]).reshape(b, fp * tp, self.cfg.hidden)


class Attention(nnx.Module):

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.qkv = _dense(cfg.hidden, 3 * cfg.hidden, cfg, rngs, use_bias=cfg.qkv_bias)
    self.proj = _dense(cfg.hidden, cfg.hidden, cfg, rngs)

  def __call__(self, x, mask=None, prefix=0):
    """mask: optional boolean [.., N, N] (True = attend). prefix > 0 says that `mask` is the
    region-token mask `AST.encode` builds for `prefix` leading tokens (the CPU kernel
    computes that mask itself)."""
    b, n, d = x.shape
    h = self.cfg.heads
    qkv = _flat_dense(self.qkv, x)  # [B, N, 3D]; timm/official order: q, k, v; heads-major
    if jax.default_backend() == "cpu":
      if (mask is None or prefix > 0) and cpu_kernels.supports(qkv, h):
        out = cpu_kernels.attention(qkv, h, prefix)  # fused C++ kernel (float32)
      else:
        out = softmax_attention(qkv, h, mask)
    else:
      # The fused backends (cuDNN flash attention on GPU) are picked here where available.
      qkv = qkv.reshape(b, n, 3, h, d // h)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      out = jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(b, n, d)
    return _flat_dense(self.proj, out)


class Mlp(nnx.Module):

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.fc1 = _dense(cfg.hidden, cfg.mlp_dim, cfg, rngs)
    self.fc2 = _dense(cfg.mlp_dim, cfg.hidden, cfg, rngs)

  def __call__(self, x):
    shape = x.shape
    x = x.reshape(-1, shape[-1])  # 2-D: see _flat_dense
    return self.fc2(_gelu(self.fc1(x))).reshape(shape)


class Block(nnx.Module):
  """Pre-LN transformer block. The residual stream stays float32."""

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.norm1 = _norm(cfg, rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm2 = _norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x, mask=None, prefix=0):
    x = x + self.attn(self.norm1(x), mask, prefix).astype(jnp.float32)
    x = x + self.mlp(self.norm2(x)).astype(jnp.float32)
    return x


class AST(nnx.Module):
  """The AST encoder. `model(fbank)` -> pooled `[batch, hidden]` (HF's `pooler_output`)."""

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.patch_embed = PatchEmbed(cfg, rngs=rngs)
    self.cls_token = nnx.Param(_init(rngs.params(), (1, 1, cfg.hidden)))
    self.dist_token = nnx.Param(_init(rngs.params(), (1, 1, cfg.hidden)))
    self.pos_embed = nnx.Param(_init(rngs.params(), (1, cfg.num_patches + 2, cfg.hidden)))
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = _norm(cfg, rngs)

  def check_input(self, fbank):
    c = self.cfg
    if fbank.ndim != 3 or fbank.shape[1] != c.input_tdim or fbank.shape[2] != c.input_fdim:
      what = "rank" if fbank.ndim != 3 else (
          "mel bins" if fbank.shape[2] != c.input_fdim else "frames")
      raise ValueError(
          f"AST expects fbank [batch, time={c.input_tdim}, mel={c.input_fdim}], got shape "
          f"{tuple(fbank.shape)} (wrong {what}); pad or cut with mpjax.audio.fbank.pad_or_cut.")

  def embed(self, fbank):
    """[B, T, F] -> [B, 2 + N, D]: cls, dist, patches, plus position embeddings."""
    self.check_input(fbank)
    x = self.patch_embed(fbank)
    b = x.shape[0]
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, self.cfg.hidden))
    dist = jnp.broadcast_to(self.dist_token[...], (b, 1, self.cfg.hidden))
    return jnp.concatenate([cls, dist, x], axis=1) + self.pos_embed[...]

  def encode(self, fbank, *, prefix_tokens=None, token_bias=None):
    """Final-normed tokens `[B, P + 2 + N, D]`.

    prefix_tokens: optional `[B, P, D]` tokens (region CLS tokens) placed before cls/dist.
      They carry no position embedding. Attention is masked so that every prefix token sees
      only itself and the audio tokens, and the audio tokens never see prefix tokens: the
      output for one prefix token is the same whether it is scored alone or with others.
    token_bias: optional `[B, 1, D]` (or broadcastable) added to every audio token (region
      embedding).
    """
    x = self.embed(fbank)
    if token_bias is not None:
      x = x + token_bias
    mask, p = None, 0
    if prefix_tokens is not None:
      p = prefix_tokens.shape[1]
      n = x.shape[1] + p
      x = jnp.concatenate([prefix_tokens.astype(x.dtype), x], axis=1)
      q = np.arange(n)[:, None]
      k = np.arange(n)[None, :]
      mask = jnp.asarray((k >= p) | (q == k))[None, None]  # [1, 1, n, n]
    block_fn = lambda blk, y: blk(y, mask, p)
    if self.cfg.remat:
      block_fn = nnx.remat(block_fn)
    for blk in self.blocks:
      x = block_fn(blk, x)
    return self.norm(x)

  def __call__(self, fbank):
    tokens = self.encode(fbank)
    return (tokens[:, 0] + tokens[:, 1]) / 2


def init(cfg: ASTConfig, seed: int = 0) -> AST:
  return AST(cfg, rngs=nnx.Rngs(seed))


# ----------------------------------------------------------------------------------------------
# Weight conversion helpers
# ----------------------------------------------------------------------------------------------


class WeightError(ValueError):
  """A state dict does not match the model: names the key and what is wrong."""


def _to_numpy(v) -> np.ndarray:
  if isinstance(v, np.ndarray):
    return v
  if hasattr(v, "detach"):  # torch.Tensor, without importing torch
    v = v.detach().cpu()
    if str(v.dtype) in ("torch.bfloat16", "torch.float16"):
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def _from_flat(cfg: ASTConfig, flat: Mapping[tuple, np.ndarray], source: str) -> AST:
  """Builds an AST whose parameters are `flat` (keys = NNX state paths). Checks everything."""
  abstract = nnx.eval_shape(lambda: AST(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  leaves = nnx.to_flat_state(state)
  expected = {path for path, _ in leaves}
  missing = sorted(expected - set(flat), key=str)
  if missing:
    raise WeightError(f"{source}: no value for model parameter(s) {['.'.join(map(str, p)) for p in missing[:5]]}")
  out = []
  for path, var in leaves:
    value = np.asarray(flat[path], np.float32)
    want = tuple(var.get_value().shape)
    if value.shape != want:
      raise WeightError(f"{source}: parameter {'.'.join(map(str, path))} has shape "
                        f"{value.shape}, the model needs {want}")
    out.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(out))


def _take(sd: dict, key: str, shape: tuple | None, source: str) -> np.ndarray:
  if key not in sd:
    raise WeightError(f"{source}: missing key {key!r}")
  v = sd.pop(key)
  if shape is not None and tuple(v.shape) != tuple(shape):
    raise WeightError(f"{source}: key {key!r} has shape {tuple(v.shape)}, expected {tuple(shape)}")
  return v


def _block_params(cfg, flat, i, *, norm1, qkv_w, qkv_b, proj_w, proj_b, norm2, fc1, fc2):
  """Fills block i from torch-layout (out, in) weights."""
  b = ("blocks", i)
  flat[b + ("norm1", "scale")], flat[b + ("norm1", "bias")] = norm1
  flat[b + ("attn", "qkv", "kernel")] = qkv_w.T
  if cfg.qkv_bias:
    flat[b + ("attn", "qkv", "bias")] = qkv_b
  flat[b + ("attn", "proj", "kernel")] = proj_w.T
  flat[b + ("attn", "proj", "bias")] = proj_b
  flat[b + ("norm2", "scale")], flat[b + ("norm2", "bias")] = norm2
  flat[b + ("mlp", "fc1", "kernel")] = fc1[0].T
  flat[b + ("mlp", "fc1", "bias")] = fc1[1]
  flat[b + ("mlp", "fc2", "kernel")] = fc2[0].T
  flat[b + ("mlp", "fc2", "bias")] = fc2[1]


def _leftover(sd: dict, source: str, ignore=()):
  rest = sorted(k for k in sd if not any(re.match(p, k) for p in ignore))
  if rest:
    raise WeightError(f"{source}: unexpected key(s) {rest[:8]}{' ...' if len(rest) > 8 else ''}")


# ----------------------------------------------------------------------------------------------
# HF ASTModel / ASTForAudioClassification
# ----------------------------------------------------------------------------------------------

# Hub checkpoints' naming -> transformers 5.x naming.
_HF_RENAMES = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.(layernorm_before|layernorm_after)\.", r"layers.\1.\2."),
]


def _hf_get(hf_config, name, default=None):
  if isinstance(hf_config, Mapping):
    return hf_config.get(name, default)
  return getattr(hf_config, name, default)


def ast_config_from_hf(hf_config, **overrides) -> ASTConfig:
  """ASTConfig from a transformers `ASTConfig` object or its dict (`config.json`)."""
  act = _hf_get(hf_config, "hidden_act", "gelu")
  if act != "gelu":
    raise WeightError(f"HF config hidden_act={act!r}: only exact 'gelu' is supported")
  patch = _hf_get(hf_config, "patch_size", 16)
  if isinstance(patch, (list, tuple)):
    if len(set(patch)) != 1:
      raise WeightError(f"HF config patch_size={patch!r}: only square patches are supported")
    patch = patch[0]
  head_dim = _hf_get(hf_config, "head_dim", None)
  hidden = _hf_get(hf_config, "hidden_size", 768)
  heads = _hf_get(hf_config, "num_attention_heads", 12)
  if head_dim is not None and head_dim * heads != hidden:
    raise WeightError(f"HF config head_dim={head_dim} x heads={heads} != hidden_size={hidden}")
  kw = dict(
      hidden=hidden, depth=_hf_get(hf_config, "num_hidden_layers", 12), heads=heads,
      mlp_dim=_hf_get(hf_config, "intermediate_size", 3072), patch=patch,
      fstride=_hf_get(hf_config, "frequency_stride", 10),
      tstride=_hf_get(hf_config, "time_stride", 10),
      input_fdim=_hf_get(hf_config, "num_mel_bins", 128),
      input_tdim=_hf_get(hf_config, "max_length", 1024),
      ln_eps=_hf_get(hf_config, "layer_norm_eps", 1e-12),
      qkv_bias=_hf_get(hf_config, "qkv_bias", True))
  kw.update(overrides)
  return ASTConfig(**kw)


def from_hf_state_dict(state_dict: Mapping[str, Any], hf_config, **overrides) -> AST:
  """AST equal to HF `ASTModel` (its `pooler_output`) with the same weights.

  state_dict: an `ASTModel` or `ASTForAudioClassification` state dict (torch tensors or numpy
    arrays), in the released hub checkpoints' naming (`encoder.layer.N.attention.attention.
    query`...) or transformers 5.x's (`layers.N.attention.q_proj`...). The classifier head
    (`classifier.*`) is ignored: use `hf_classifier_params` to get it.
  hf_config: transformers `ASTConfig` or its dict. `overrides` replace ASTConfig fields
    (e.g. dtype='bfloat16'); shapes must still match the weights.
  """
  source = "HF AST state dict"
  cfg = ast_config_from_hf(hf_config, **overrides)
  sd = {}
  for k, v in state_dict.items():
    k = k.removeprefix("audio_spectrogram_transformer.")
    for pat, rep in _HF_RENAMES:
      k = re.sub(pat, rep, k)
    sd[k] = _to_numpy(v)
  d, fp_tp = cfg.hidden, cfg.num_patches
  flat = {}
  flat[("cls_token",)] = _take(sd, "embeddings.cls_token", (1, 1, d), source)
  flat[("dist_token",)] = _take(sd, "embeddings.distillation_token", (1, 1, d), source)
  flat[("pos_embed",)] = _take(sd, "embeddings.position_embeddings", (1, fp_tp + 2, d), source)
  w = _take(sd, "embeddings.patch_embeddings.projection.weight", (d, 1, cfg.patch, cfg.patch), source)
  flat[("patch_embed", "kernel")] = w[:, 0].transpose(1, 2, 0)  # [D,1,kf,kt] -> [kf,kt,D]
  flat[("patch_embed", "bias")] = _take(sd, "embeddings.patch_embeddings.projection.bias", (d,), source)
  lin = lambda n, i, o: (_take(sd, n + ".weight", (o, i), source), _take(sd, n + ".bias", (o,), source))
  ln = lambda n: (_take(sd, n + ".weight", (d,), source), _take(sd, n + ".bias", (d,), source))
  for i in range(cfg.depth):
    p = f"layers.{i}."
    ws, bs = [], []
    for name in ("q_proj", "k_proj", "v_proj"):
      ws.append(_take(sd, p + f"attention.{name}.weight", (d, d), source))
      if cfg.qkv_bias:
        bs.append(_take(sd, p + f"attention.{name}.bias", (d,), source))
    _block_params(
        cfg, flat, i, norm1=ln(p + "layernorm_before"),
        qkv_w=np.concatenate(ws, 0), qkv_b=np.concatenate(bs, 0) if bs else None,
        proj_w=_take(sd, p + "attention.o_proj.weight", (d, d), source),
        proj_b=_take(sd, p + "attention.o_proj.bias", (d,), source),
        norm2=ln(p + "layernorm_after"),
        fc1=lin(p + "mlp.fc1", d, cfg.mlp_dim), fc2=lin(p + "mlp.fc2", cfg.mlp_dim, d))
  flat[("norm", "scale")], flat[("norm", "bias")] = ln("layernorm")
  _leftover(sd, source, ignore=(r"^classifier\.", r"^embeddings\.position_ids$"))
  return _from_flat(cfg, flat, source)


def hf_classifier_params(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The `ASTForAudioClassification` head (layernorm + dense) as numpy arrays, if present."""
  return {k.removeprefix("classifier."): _to_numpy(v) for k, v in state_dict.items()
          if k.startswith("classifier.")}


# ----------------------------------------------------------------------------------------------
# timm DeiT / ViT (and official AST checkpoints) by the official rule
# ----------------------------------------------------------------------------------------------


def _resize_linear_torch(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  """1-D linear resize along `axis` with torch `interpolate(align_corners=False)` semantics."""
  n = x.shape[axis]
  if n == size:
    return x
  # float32 arithmetic in torch's order, so the result matches torch bit for bit (nearly).
  scale = np.float32(n) / np.float32(size)
  src = scale * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))  # torch clamps negative source coordinates to 0
  i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
  i1 = np.minimum(i0 + 1, n - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = size
  lam = lam.reshape(shape)
  x = x.astype(np.float32)
  return (np.float32(1) - lam) * np.take(x, i0, axis=axis) + lam * np.take(x, i1, axis=axis)


def _center_cut(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  n = x.shape[axis]
  start = n // 2 - size // 2  # int(n/2) - int(size/2), as the official code
  return np.take(x, np.arange(start, start + size), axis=axis)


def adapt_pos_grid(grid: np.ndarray, f_dim: int, t_dim: int) -> np.ndarray:
  """Official AST rule for a [D, H, W] position grid (H = frequency, W = time).

  Time axis first: centre-cut when t_dim <= W, else bilinear resize to (H, t_dim); then
  frequency: centre-cut when f_dim <= H, else bilinear resize to (f_dim, t_dim). Bilinear =
  torch `F.interpolate(mode='bilinear', align_corners=False)`, which is separable.
  """
  _, h, w = grid.shape
  grid = _center_cut(grid, 2, t_dim) if t_dim <= w else _resize_linear_torch(grid, 2, t_dim)
  grid = _center_cut(grid, 1, f_dim) if f_dim <= h else _resize_linear_torch(grid, 1, f_dim)
  return grid


def _strip_wrappers(state_dict: Mapping[str, Any]) -> dict:
  sd = dict(state_dict)
  for wrapper in ("model", "state_dict", "model_ema"):
    if wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = dict(sd[wrapper])
      break
  out = {}
  for k, v in sd.items():
    k = k.removeprefix("module.")
    k = k.removeprefix("v.")  # official AST checkpoints: module.v.*
    out[k] = v
  return out


def from_deit_state_dict(state_dict: Mapping[str, Any], input_fdim: int = 128,
                         input_tdim: int = 1024, fstride: int = 10, tstride: int = 10, *,
                         num_heads: int | None = None, source_grid: tuple[int, int] | None = None,
                         ln_eps: float = 1e-6, **overrides) -> AST:
  """AST initialised from a timm DeiT/ViT state dict by the official AST rule.

  - patch conv: the RGB input channels are summed into one (a 1-channel conv, e.g. an
    official AST checkpoint, is taken as is);
  - position grid (24x24 for 384 inputs; `source_grid` when not square, e.g. (12, 101) for an
    official AST AudioSet checkpoint): adjusted time axis first, then frequency, centre-cut
    when the target is smaller, else bilinear with torch semantics; cls/dist rows kept first.
  - a ViT without a distillation token: the cls token (and its position row) is duplicated
    as the distillation token, so the pooled output starts as the ViT's cls output.
  - heads: not stored in weights; default hidden // 64 (all DeiT/ViT sizes), else `num_heads`.
  Heads (`head.*`, `head_dist.*`, official AST `mlp_head.*`) are ignored.
  """
  source = "DeiT/ViT state dict"
  sd = {k: _to_numpy(v) for k, v in _strip_wrappers(state_dict).items()}
  w = _take(sd, "patch_embed.proj.weight", None, source)
  if w.ndim != 4 or w.shape[2] != w.shape[3]:
    raise WeightError(f"{source}: key 'patch_embed.proj.weight' has shape {w.shape}, expected [D, C, p, p]")
  d, chans, patch, _ = w.shape
  depth = 0
  while f"blocks.{depth}.norm1.weight" in sd:
    depth += 1
  if depth == 0:
    raise WeightError(f"{source}: missing key 'blocks.0.norm1.weight'")
  heads = num_heads or (d // 64 if d % 64 == 0 else None)
  if not heads:
    raise WeightError(f"{source}: cannot infer heads for hidden={d}; pass num_heads")
  mlp_dim = sd[f"blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 4 * d
  qkv_bias = "blocks.0.attn.qkv.bias" in sd
  cfg = ASTConfig(hidden=d, depth=depth, heads=heads, mlp_dim=mlp_dim, patch=patch,
                  fstride=fstride, tstride=tstride, input_fdim=input_fdim,
                  input_tdim=input_tdim, ln_eps=ln_eps, qkv_bias=qkv_bias, **overrides)
  flat = {}
  kernel = w.sum(axis=1)  # [D, p, p]; official rule: sum the RGB channels
  flat[("patch_embed", "kernel")] = kernel.transpose(1, 2, 0)
  flat[("patch_embed", "bias")] = _take(sd, "patch_embed.proj.bias", (d,), source)

  cls = _take(sd, "cls_token", (1, 1, d), source)
  has_dist = "dist_token" in sd
  dist = _take(sd, "dist_token", (1, 1, d), source) if has_dist else cls.copy()
  pos = _take(sd, "pos_embed", None, source)
  n_prefix = 2 if has_dist else 1
  if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d:
    raise WeightError(f"{source}: key 'pos_embed' has shape {pos.shape}, expected [1, N, {d}]")
  n_grid = pos.shape[1] - n_prefix
  if source_grid is None:
    side = int(round(np.sqrt(n_grid)))
    if side * side != n_grid:
      raise WeightError(f"{source}: key 'pos_embed' has {n_grid} patch rows, not a square grid; "
                        "pass source_grid=(freq, time)")
    source_grid = (side, side)
  if source_grid[0] * source_grid[1] != n_grid:
    raise WeightError(f"{source}: key 'pos_embed' has {n_grid} patch rows, source_grid={source_grid}")
  grid = pos[0, n_prefix:].T.reshape(d, *source_grid)
  f_dim, t_dim = cfg.grid
  grid = adapt_pos_grid(grid, f_dim, t_dim).reshape(d, f_dim * t_dim).T
  prefix = pos[:, :n_prefix]
  if not has_dist:
    prefix = np.concatenate([prefix, prefix], axis=1)
  flat[("cls_token",)] = cls
  flat[("dist_token",)] = dist
  flat[("pos_embed",)] = np.concatenate([prefix, grid[None]], axis=1)

  lin = lambda n, i, o: (_take(sd, n + ".weight", (o, i), source), _take(sd, n + ".bias", (o,), source))
  ln = lambda n: (_take(sd, n + ".weight", (d,), source), _take(sd, n + ".bias", (d,), source))
  for i in range(depth):
    p = f"blocks.{i}."
    _block_params(
        cfg, flat, i, norm1=ln(p + "norm1"),
        qkv_w=_take(sd, p + "attn.qkv.weight", (3 * d, d), source),
        qkv_b=_take(sd, p + "attn.qkv.bias", (3 * d,), source) if qkv_bias else None,
        proj_w=_take(sd, p + "attn.proj.weight", (d, d), source),
        proj_b=_take(sd, p + "attn.proj.bias", (d,), source),
        norm2=ln(p + "norm2"), fc1=lin(p + "mlp.fc1", d, mlp_dim), fc2=lin(p + "mlp.fc2", mlp_dim, d))
  flat[("norm", "scale")], flat[("norm", "bias")] = ln("norm")
  _leftover(sd, source, ignore=(r"^head\.", r"^head_dist\.", r"^mlp_head\."))
  return _from_flat(cfg, flat, source)


# ----------------------------------------------------------------------------------------------
# big_vision / vit_jax .npz -> timm naming
# ----------------------------------------------------------------------------------------------


def big_vision_to_timm(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Maps a big_vision (or vit_jax) ViT param dict with '/'-joined keys to timm names.

  Handles per-layer `Transformer/encoderblock_N/...` and scanned `Transformer/encoderblock/...`
  (leading layer axis). Position embeddings without a cls row (big_vision `pos_embedding`)
  get a zero cls row: big_vision adds no position embedding to the cls token.
  """
  source = "big_vision npz"
  p = {k.removeprefix("params/"): np.asarray(v) for k, v in params.items()}
  if "embedding/kernel" not in p:
    raise WeightError(f"{source}: missing key 'embedding/kernel'")
  out = {}
  k = p.pop("embedding/kernel")  # [p, p, C, D] (HWIO)
  out["patch_embed.proj.weight"] = k.transpose(3, 2, 0, 1)
  out["patch_embed.proj.bias"] = _take(p, "embedding/bias", None, source)
  d = k.shape[-1]
  cls = p.pop("cls", None)
  if cls is None:
    raise WeightError(f"{source}: missing key 'cls' (only cls-token ViTs can become an AST)")
  out["cls_token"] = cls.reshape(1, 1, d)
  if "Transformer/posembed_input/pos_embedding" in p:  # vit_jax: includes the cls row
    out["pos_embed"] = p.pop("Transformer/posembed_input/pos_embedding")
  else:
    pe = _take(p, "pos_embedding", None, source)
    out["pos_embed"] = np.concatenate([np.zeros((1, 1, d), pe.dtype), pe.reshape(1, -1, d)], 1)

  def blocks():
    if any(key.startswith("Transformer/encoderblock/") for key in p):
      scanned = {key[len("Transformer/encoderblock/"):]: p.pop(key) for key in list(p)
                 if key.startswith("Transformer/encoderblock/")}
      n = next(iter(scanned.values())).shape[0]
      return [{key: v[i] for key, v in scanned.items()} for i in range(n)]
    res, i = [], 0
    while any(key.startswith(f"Transformer/encoderblock_{i}/") for key in p):
      pre = f"Transformer/encoderblock_{i}/"
      res.append({key[len(pre):]: p.pop(key) for key in list(p) if key.startswith(pre)})
      i += 1
    return res

  for i, b in enumerate(blocks()):
    t = f"blocks.{i}."
    src = f"{source} block {i}"
    out[t + "norm1.weight"] = _take(b, "LayerNorm_0/scale", None, src)
    out[t + "norm1.bias"] = _take(b, "LayerNorm_0/bias", None, src)
    out[t + "norm2.weight"] = _take(b, "LayerNorm_1/scale", None, src)
    out[t + "norm2.bias"] = _take(b, "LayerNorm_1/bias", None, src)
    att = "MultiHeadDotProductAttention_0/"
    qkv_w = [_take(b, att + n + "/kernel", None, src).reshape(d, d).T for n in ("query", "key", "value")]
    qkv_b = [_take(b, att + n + "/bias", None, src).reshape(d) for n in ("query", "key", "value")]
    out[t + "attn.qkv.weight"] = np.concatenate(qkv_w, 0)
    out[t + "attn.qkv.bias"] = np.concatenate(qkv_b, 0)
    out[t + "attn.proj.weight"] = _take(b, att + "out/kernel", None, src).reshape(d, d).T
    out[t + "attn.proj.bias"] = _take(b, att + "out/bias", None, src)
    out[t + "mlp.fc1.weight"] = _take(b, "MlpBlock_0/Dense_0/kernel", None, src).T
    out[t + "mlp.fc1.bias"] = _take(b, "MlpBlock_0/Dense_0/bias", None, src)
    out[t + "mlp.fc2.weight"] = _take(b, "MlpBlock_0/Dense_1/kernel", None, src).T
    out[t + "mlp.fc2.bias"] = _take(b, "MlpBlock_0/Dense_1/bias", None, src)
    _leftover(b, src)
  out["norm.weight"] = _take(p, "Transformer/encoder_norm/scale", None, source)
  out["norm.bias"] = _take(p, "Transformer/encoder_norm/bias", None, source)
  _leftover(p, source, ignore=(r"^head/", r"^pre_logits/", r"^MAPHead_0/"))
  return out


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: str) -> dict[str, Any]:
  """Reads weights without unpickling untrusted data: safetensors, torch (weights_only), npz."""
  ext = os.path.splitext(path)[1].lower()
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if ext in (".pth", ".pt", ".bin", ".ckpt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0), "
                        "or convert it to .safetensors") from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
      raise WeightError(f"{path}: not loadable with torch.load(weights_only=True) "
                        f"(refusing to unpickle arbitrary objects): {e}") from e
    if not isinstance(obj, Mapping):
      raise WeightError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  raise WeightError(f"{path}: unknown weights format {ext!r} "
                    "(use .safetensors, .pth/.pt/.bin (torch) or .npz (big_vision))")


def load(path: str, *, input_fdim: int = 128, input_tdim: int = 1024, fstride: int = 10,
         tstride: int = 10, hf_config=None, **kwargs) -> AST:
  """AST from a weights file, whatever its origin.

  - HF AST (keys `embeddings.patch_embeddings...`, optionally prefixed
    `audio_spectrogram_transformer.`): shapes come from `hf_config` (object, dict, or path of a
    config.json; default: `config.json` next to the weights). Its own strides/lengths apply.
  - timm DeiT/ViT or official AST (`patch_embed.proj.weight`): the official conversion to the
    given input size and strides (`from_deit_state_dict`; kwargs go there).
  - big_vision/vit_jax `.npz`: mapped to timm names, then as above.
  """
  sd = read_state_dict(path)
  keys = set(sd)
  if any(k.removeprefix("audio_spectrogram_transformer.").startswith("embeddings.patch_embeddings")
         for k in keys):
    if hf_config is None:
      cand = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
      if not os.path.exists(cand):
        raise WeightError(f"{path}: HF AST weights need hf_config (or a config.json beside them)")
      hf_config = cand
    if isinstance(hf_config, (str, os.PathLike)):
      with open(hf_config) as f:
        hf_config = json.load(f)
    return from_hf_state_dict(sd, hf_config, **kwargs)
  if any(k.removeprefix("params/") == "embedding/kernel" for k in keys):
    sd = big_vision_to_timm(sd)
  return from_deit_state_dict(sd, input_fdim, input_tdim, fstride, tstride, **kwargs)
