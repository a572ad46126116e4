"""Audio Spectrogram Transformer (AST) encoder in Flax NNX.

The AST of Gong et al. (2021), as the official code and HF's `ASTModel`: a 16x16 conv patch
embedding over the (frequency, time) plane with strides (fstride, tstride), a cls and a
distillation token, learned position embeddings, pre-LN transformer blocks with exact (erf)
GELU, a final LayerNorm, and the pooled output `(cls + dist) / 2`.

Input: log-mel fbank frames `[batch, time, mel]` (`mpjax.audio.fbank`), already normalised.
Token order is frequency-major, as in the official code: patch (fi, ti) is token `fi * Tp + ti`.

Speed is configuration (`ASTConfig`), never hand-written derivatives here:
  attention      auto | xla | cudnn | splash (`mpjax.ops.attention`; auto = per platform,
                 chosen when the program is lowered; 'cpu' is a deprecated alias of xla)
  scan           the blocks as one `jax.lax.scan` over stacked parameters (compile time does not
                 grow with depth); parameter paths `blocks/...` with a leading depth axis
  remat_policy   none | full | dots_saveable | dots_with_no_batch_dims_saveable, per block
  dtype          compute dtype of every dense layer and attention; parameters, LayerNorms and
                 the residual stream stay float32
  patchout_time, patchout_freq
                 PaSST structured patchout while training: that fraction of the patch grid's
                 time columns / frequency rows is dropped (same for the whole batch), their
                 position embeddings with them; off when no `patchout_key` is given (eval)

Weight conversion and files (`load`, `from_hf_state_dict`, `from_deit_state_dict`, ...) live in
`mpjax.models.ast_weights` and are re-exported here.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mpjax.ops import attention as attention_ops

# (hidden, depth, heads); mlp = 4 * hidden. DeiT/ViT sizes, head dim 64.
VARIANTS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ASTConfig:
  """Static shape and speed settings of an AST."""

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
  dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
  attention: str = "auto"
  scan: bool = False
  remat_policy: str = "none"
  patchout_time: float = 0.0
  patchout_freq: float = 0.0

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
    if self.attention not in attention_ops.IMPLEMENTATIONS + tuple(attention_ops.DEPRECATED):
      bad("attention", f"choose one of {attention_ops.IMPLEMENTATIONS}")
    # A deprecated name becomes what it stands for (with a warning), so that every later
    # comparison of configs sees one spelling.
    object.__setattr__(self, "attention", attention_ops.check_implementation(self.attention))
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"choose one of {tuple(REMAT_POLICIES)}")
    for f in ("patchout_time", "patchout_freq"):
      if not 0.0 <= getattr(self, f) < 1.0:
        bad(f, "must be in [0, 1): the fraction of patch columns/rows dropped while training")

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

  @property
  def patchout_grid(self) -> tuple[int, int]:
    """(frequency rows, time columns) of patches kept while training with patchout."""
    f, t = self.grid
    return (max(1, f - round(f * self.patchout_freq)), max(1, t - round(t * self.patchout_time)))


def config_for(variant: str = "base", **overrides) -> ASTConfig:
  """ASTConfig for a named size ('tiny', 'small', 'base') with field overrides."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown AST variant {variant!r}; known: {sorted(VARIANTS)}")
  hidden, depth, heads = VARIANTS[variant]
  kw = dict(hidden=hidden, depth=depth, heads=heads, mlp_dim=4 * hidden)
  kw.update(overrides)
  return ASTConfig(**kw)


_init = nnx.initializers.truncated_normal(stddev=0.02)


def _dense(din, dout, cfg, rngs, use_bias=True):
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.float32, kernel_init=_init, rngs=rngs)


def _norm(cfg, rngs):
  return nnx.LayerNorm(cfg.hidden, epsilon=cfg.ln_eps, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=rngs)


class PatchEmbed(nnx.Module):
  """Conv2d(1, hidden, kernel=patch, stride=(fstride, tstride)), written as patch extraction and
  one matmul: the input never needs a gradient, so the extraction is a static gather (a reshape
  when the strides equal the patch size)."""

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.kernel = nnx.Param(_init(rngs.params(), (cfg.patch, cfg.patch, cfg.hidden)))
    self.bias = nnx.Param(jnp.zeros((cfg.hidden,), jnp.float32))

  def patches(self, x):
    """[B, T, F] -> [B, Fp, Tp, patch_f, patch_t]."""
    c = self.cfg
    fp, tp = c.grid
    x = jnp.swapaxes(x, 1, 2)  # [B, F, T], the official layout
    if c.fstride == c.patch and c.tstride == c.patch:
      x = x[:, :fp * c.patch, :tp * c.patch]
      x = x.reshape(x.shape[0], fp, c.patch, tp, c.patch)
      return x.transpose(0, 1, 3, 2, 4)
    fidx = np.arange(fp)[:, None] * c.fstride + np.arange(c.patch)[None, :]  # [Fp, pf]
    tidx = np.arange(tp)[:, None] * c.tstride + np.arange(c.patch)[None, :]  # [Tp, pt]
    return x[:, fidx[:, None, :, None], tidx[None, :, None, :]]

  def __call__(self, x):
    """[B, T, F] -> [B, Fp * Tp, hidden] (float32)."""
    dtype = jnp.dtype(self.cfg.dtype)
    p = self.patches(x.astype(dtype))
    b, fp, tp = p.shape[:3]
    p = p.reshape(b, fp * tp, self.cfg.patch * self.cfg.patch)
    k = self.kernel[...].astype(dtype).reshape(-1, self.cfg.hidden)
    return (p @ k).astype(jnp.float32) + self.bias[...]


def _rows(layer, x):
  """`layer(x)` on x viewed as [tokens, features], a free reshape: XLA:CPU computes a 3-D dense
  layer's weight gradient with extra transposed copies (README, "CPU")."""
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class Attention(nnx.Module):

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.qkv = _dense(cfg.hidden, 3 * cfg.hidden, cfg, rngs, use_bias=cfg.qkv_bias)
    self.proj = _dense(cfg.hidden, cfg.hidden, cfg, rngs)

  def __call__(self, x, prefix=0):
    qkv = _rows(self.qkv, x)  # [B, N, 3D]; timm/official order: q, k, v blocks, heads-major
    out = attention_ops.attention(qkv, self.cfg.heads, prefix=prefix,
                                  implementation=self.cfg.attention)
    return _rows(self.proj, out)


class Mlp(nnx.Module):

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.fc1 = _dense(cfg.hidden, cfg.mlp_dim, cfg, rngs)
    self.fc2 = _dense(cfg.mlp_dim, cfg.hidden, cfg, rngs)

  def __call__(self, x):
    return _rows(lambda y: self.fc2(jax.nn.gelu(self.fc1(y), approximate=False)), x)


class Block(nnx.Module):
  """Pre-LN transformer block. The residual stream stays float32."""

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.norm1 = _norm(cfg, rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm2 = _norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x, prefix=0):
    x = x + self.attn(self.norm1(x), prefix).astype(jnp.float32)
    return x + self.mlp(self.norm2(x)).astype(jnp.float32)


class AST(nnx.Module):
  """The AST encoder. `model(fbank)` -> pooled `[batch, hidden]` (HF's `pooler_output`)."""

  def __init__(self, cfg: ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.patch_embed = PatchEmbed(cfg, rngs=rngs)
    self.cls_token = nnx.Param(_init(rngs.params(), (1, 1, cfg.hidden)))
    self.dist_token = nnx.Param(_init(rngs.params(), (1, 1, cfg.hidden)))
    self.pos_embed = nnx.Param(_init(rngs.params(), (1, cfg.num_patches + 2, cfg.hidden)))
    if cfg.scan:  # one Block whose parameters carry a leading depth axis
      self.blocks = nnx.vmap(lambda r: Block(cfg, rngs=r))(rngs.split(cfg.depth))
    else:
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

  def embed(self, fbank, patchout_key=None, patch_mask=None, mask_token=None):
    """[B, T, F] -> [B, 2 + N, D]: cls, dist, patches, plus position embeddings. With a
    `patchout_key` and patchout configured, N = the kept rows x columns of the patch grid.
    patch_mask: optional [B, N] bool; a masked patch's embedding is replaced by `mask_token`
    [D] before the position embedding is added (masked patch modelling, `mpjax.models.ssl`)."""
    self.check_input(fbank)
    c = self.cfg
    pos = self.pos_embed[...]
    x = self.patch_embed(fbank)
    if patch_mask is not None:
      x = jnp.where(patch_mask[..., None], mask_token.astype(x.dtype), x)
    x = x + pos[:, 2:]
    if patchout_key is not None and (c.patchout_time or c.patchout_freq):
      x = self.patchout(x, patchout_key)
    b = x.shape[0]
    cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (b, 1, c.hidden))
    dist = jnp.broadcast_to(self.dist_token[...] + pos[:, 1:2], (b, 1, c.hidden))
    return jnp.concatenate([cls, dist, x], axis=1)

  def patchout(self, x, key):
    """Keeps a random sorted subset of frequency rows and time columns of the patch grid."""
    fp, tp = self.cfg.grid
    keep_f, keep_t = self.cfg.patchout_grid
    kf, kt = jax.random.split(key)
    rows = jnp.sort(jax.random.permutation(kf, fp)[:keep_f])
    cols = jnp.sort(jax.random.permutation(kt, tp)[:keep_t])
    x = x.reshape(x.shape[0], fp, tp, -1)[:, rows][:, :, cols]
    return x.reshape(x.shape[0], keep_f * keep_t, -1)

  def encode(self, fbank, *, prefix_tokens=None, token_bias=None, patchout_key=None,
             patch_mask=None, mask_token=None, layers: bool = False):
    """Final-normed tokens `[B, P + 2 + N, D]`; with layers=True, (those tokens, every block's
    output tokens `[depth, B, P + 2 + N, D]` before the final norm), for probes of what each
    layer holds (`mpjax.analysis.probes`).

    prefix_tokens: optional `[B, P, D]` tokens (region CLS tokens) placed before cls/dist.
      They carry no position embedding. Each sees only itself and the audio tokens, and the
      audio tokens never see them (`mpjax.ops.attention`): the output for one prefix token is
      the same whether it is scored alone or with others.
    token_bias: optional `[B, 1, D]` (or broadcastable) added to every audio token (region
      embedding).
    patchout_key: a PRNG key while training with patchout; None (eval) keeps every patch.
    patch_mask, mask_token: masked patches (see `embed`).
    """
    x = self.embed(fbank, patchout_key, patch_mask, mask_token)
    if token_bias is not None:
      x = x + token_bias
    prefix = 0
    if prefix_tokens is not None:
      prefix = prefix_tokens.shape[1]
      x = jnp.concatenate([prefix_tokens.astype(x.dtype), x], axis=1)

    policy = REMAT_POLICIES[self.cfg.remat_policy]

    def block(graphdef, params, x):
      return nnx.merge(graphdef, params)(x, prefix)

    if self.cfg.remat_policy != "none":
      block = jax.checkpoint(block, policy=policy, static_argnums=(0,))
    if self.cfg.scan:
      graphdef, params = nnx.split(self.blocks)

      def step(y, p):
        y = block(graphdef, p, y)
        return y, (y if layers else None)

      x, per_layer = jax.lax.scan(step, x, params)
    else:
      per_layer = []
      for blk in self.blocks:
        x = block(*nnx.split(blk), x)
        per_layer.append(x)
      per_layer = jnp.stack(per_layer) if layers else None
    return (self.norm(x), per_layer) if layers else self.norm(x)

  def __call__(self, fbank, patchout_key=None):
    tokens = self.encode(fbank, patchout_key=patchout_key)
    return (tokens[:, 0] + tokens[:, 1]) / 2


def init(cfg: ASTConfig, seed: int = 0) -> AST:
  return AST(cfg, rngs=nnx.Rngs(seed))


# Weight conversion and files: the public API lives in `mpjax.models.ast_weights` and is
# re-exported here (`ast.load`, `ast.from_hf_state_dict`, ...), imported on first use.
_WEIGHTS_API = ("WeightError", "adapt_pos_grid", "ast_config_from_hf", "big_vision_to_timm",
                "from_deit_state_dict", "from_hf_state_dict", "hf_classifier_params", "load",
                "read_state_dict", "stack_blocks", "unstack_blocks")


def __getattr__(name):
  if name in _WEIGHTS_API:
    from mpjax.models import ast_weights
    return getattr(ast_weights, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
