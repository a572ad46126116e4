"""SSAST: self-supervised masked spectrogram patch modelling for the AST encoder.

Gong et al. (2022), "SSAST: Self-Supervised Audio Spectrogram Transformer": a share of the
patches of every clip is masked (their embedding replaced by one learned mask token, position
embeddings kept), the encoder runs over the whole sequence, and from each masked position's
output token two heads (Linear-ReLU-Linear, as the official code) predict the patch:
  discriminative  InfoNCE: the prediction must pick its own patch among all masked patches of
                  the same clip (dot products with the patches' normalised fbank values)
  generative      reconstruction: mean squared error to the patch's normalised fbank values
loss = InfoNCE + recon_weight * MSE (SSAST: 10). Masking is random or clustered (SSAST's cluster
masking: neighbouring patches masked together, so a patch cannot be read off its neighbours).

`model(fbank [B, T, F], mask_idx [B, M]) -> (contrast [B, M, P], recon [B, M, P], target [B, M, P])`
with P = patch * patch values per patch, M masked patch indices per clip (`mask_indices`;
token order of `mpjax.models.ast`: patch (fi, ti) is index fi * Tp + ti).

Parameter paths: the encoder under `encoder/...` exactly as in MP2/MP3, so `init_from` an SSL
checkpoint loads the encoder there and nothing else (`mask_token`, `contrast_head/...`,
`recon_head/...` exist only here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mpjax.models import ast as ast_lib

_init = nnx.initializers.truncated_normal(stddev=0.02)


def num_masked(cfg: ast_lib.ASTConfig, mask_ratio: float) -> int:
  """Masked patches per clip: round(mask_ratio * N), at least 2 (InfoNCE needs negatives) and
  at most N - 1 (something must stay visible)."""
  n = cfg.num_patches
  if not 0.0 < mask_ratio < 1.0:
    raise ValueError(f"mask_ratio={mask_ratio}: must be in (0, 1)")
  m = int(round(mask_ratio * n))
  if n < 3:
    raise ValueError(f"the patch grid {cfg.grid} has {n} patches: too few to mask")
  return min(max(m, 2), n - 1)


def mask_indices(keys, grid: tuple[int, int], count: int, cluster: int = 1):
  """[B, count] distinct patch indices per clip, one clip per PRNG key in `keys` [B], drawn
  uniformly (cluster 1) or in blocks of about cluster x cluster neighbouring patches (cluster > 1):
  each patch scores the largest uniform draw in its neighbourhood, so the top `count` scores
  come in blocks around local maxima; a small jitter breaks the ties inside a block. Static
  shapes, jit-friendly. One key per clip (not one per batch): a clip's mask must not depend on
  its row in the batch, which differs with the process count."""
  fp, tp = grid
  if not 0 < count < fp * tp:
    raise ValueError(f"count={count}: must be in [1, {fp * tp - 1}] for the grid {grid}")

  def one(key):
    k_score, k_jitter = jax.random.split(key)
    u = jax.random.uniform(k_score, (1, fp, tp))
    if cluster > 1:
      u = jax.lax.reduce_window(u, -jnp.inf, jax.lax.max, (1, cluster, cluster), (1, 1, 1),
                                "SAME")
      u = u + 1e-3 * jax.random.uniform(k_jitter, u.shape)
    return jax.lax.top_k(u.reshape(fp * tp), count)[1]

  return jax.vmap(one)(keys).astype(jnp.int32)


class Head(nnx.Module):
  """Linear(hidden, hidden) -> ReLU -> Linear(hidden, out), float32 (SSAST's prediction heads)."""

  def __init__(self, hidden: int, out: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(hidden, hidden, kernel_init=_init, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, out, kernel_init=_init, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))


class SSAST(nnx.Module):

  def __init__(self, cfg: ast_lib.ASTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = ast_lib.AST(cfg, rngs=rngs)
    self.mask_token = nnx.Param(_init(rngs.params(), (cfg.hidden,)))
    p = cfg.patch * cfg.patch
    self.contrast_head = Head(cfg.hidden, p, rngs=rngs)
    self.recon_head = Head(cfg.hidden, p, rngs=rngs)

  def patch_values(self, fbank):
    """[B, N, P] float32 fbank values under each patch, in token order."""
    p = self.encoder.patch_embed.patches(fbank.astype(jnp.float32))
    return p.reshape(p.shape[0], p.shape[1] * p.shape[2], -1)

  def __call__(self, fbank, mask_idx):
    b, n = fbank.shape[0], self.cfg.num_patches
    mask = jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], mask_idx].set(True)
    tokens = self.encoder.encode(fbank, patch_mask=mask, mask_token=self.mask_token[...])
    h = jnp.take_along_axis(tokens[:, 2:], mask_idx[..., None], axis=1).astype(jnp.float32)
    target = jnp.take_along_axis(self.patch_values(fbank), mask_idx[..., None], axis=1)
    return self.contrast_head(h), self.recon_head(h), target


def losses(contrast, recon, target):
  """Per clip [B]: InfoNCE over its masked patches, reconstruction MSE, and the contrastive
  accuracy (share of masked patches whose own patch scores highest)."""
  logits = jnp.einsum("bmp,bnp->bmn", contrast, target)
  m = logits.shape[-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  eye = jnp.arange(m)
  nce = -logp[:, eye, eye].mean(-1)
  acc = (jnp.argmax(logits, axis=-1) == eye).mean(-1)
  mse = ((recon - target) ** 2).mean((-1, -2))
  return nce, mse, acc


def loss(out, recon_weight: float = 10.0):
  """The training loss, averaged over the batch: InfoNCE + recon_weight * MSE."""
  nce, mse, _ = losses(*out)
  return (nce + recon_weight * mse).mean()
