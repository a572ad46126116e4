"""MP2: AST encoder + regions + regression head -> log1p(streams over the first N weeks).

`model(fbank [B, T, F], regions [B, R] int) -> [B, R]`, one prediction per requested region;
`model.all_targets(...) -> [B, R, num_targets]` when the head predicts several targets (the
first is the one `model(...)` returns; config.mp2.targets names them).
How the region enters depends on `region_mode` (see `mpjax.models.regions`):
- cls_token: region tokens are prepended; the head reads each region token's output.
- embedding: the region vector is added to every audio token; the head reads the pooled
  (cls + dist) / 2 output; R regions cost R encoder passes (the batch is tiled).
- none: the head reads the pooled output, broadcast to every requested region.
The head is the AST paper's: LayerNorm (computed in `cfg.dtype`) then Linear(hidden, 1) in
float32: the output is log streams (~10-15), where bfloat16's spacing is 0.06, and its bias
would move in steps far larger than the updates.
`patchout_key` (training only): PaSST patchout in the encoder, see `mpjax.models.ast`.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mpjax.models import ast as ast_lib
from mpjax.models import regions as regions_lib


class MP2(nnx.Module):

  def __init__(self, cfg: ast_lib.ASTConfig, num_regions: int, region_mode: str = "cls_token",
               *, rngs: nnx.Rngs, encoder: ast_lib.AST | None = None, head_bias=0.0,
               num_targets: int = 1):
    """encoder: an AST to use (e.g. converted weights from `ast.load`); else a fresh one.
    head_bias: initial output (e.g. the training-set mean target) so training starts centred; a
    number, or one per target. num_targets: outputs of the head per (example, region).
    """
    if num_targets < 1:
      raise ValueError(f"num_targets={num_targets}: need at least one target")
    regions_lib.check_mode(region_mode)
    if num_regions < 1:
      raise ValueError(f"num_regions={num_regions}: need at least one region")
    if encoder is not None and encoder.cfg != cfg:
      raise ValueError(f"encoder config {encoder.cfg} differs from the MP2 config {cfg}")
    self.cfg = cfg
    self.region_mode = region_mode
    self.num_regions = num_regions
    self.encoder = encoder if encoder is not None else ast_lib.AST(cfg, rngs=rngs)
    self.regions = (regions_lib.RegionTable(num_regions, cfg.hidden, rngs=rngs)
                    if region_mode != "none" else None)
    dtype = jnp.dtype(cfg.dtype)
    self.head_norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.ln_eps, dtype=dtype, rngs=rngs)
    bias = jnp.broadcast_to(jnp.asarray(head_bias, jnp.float32), (num_targets,))
    self.head = nnx.Linear(cfg.hidden, num_targets, kernel_init=nnx.initializers.zeros_init(),
                           bias_init=lambda key, shape, dtype=jnp.float32: bias.astype(dtype),
                           dtype=jnp.float32, rngs=rngs)

  def features(self, fbank, regions, patchout_key=None):
    """[B, R, hidden] features the head reads, one per (example, region)."""
    if regions.ndim == 1:
      regions = regions[:, None]
    if regions.ndim != 2 or regions.shape[0] != fbank.shape[0]:
      raise ValueError(f"regions must be [batch={fbank.shape[0]}, R] (or [batch]) ids, got "
                       f"shape {tuple(regions.shape)}")
    b, r = regions.shape
    if self.region_mode == "cls_token":
      tokens = self.encoder.encode(fbank, prefix_tokens=self.regions(regions),
                                   patchout_key=patchout_key)
      return tokens[:, :r]
    if self.region_mode == "embedding":
      emb = self.regions(regions).reshape(b * r, 1, -1)
      x = jnp.repeat(fbank, r, axis=0) if r > 1 else fbank
      tokens = self.encoder.encode(x, token_bias=emb, patchout_key=patchout_key)
      return ((tokens[:, 0] + tokens[:, 1]) / 2).reshape(b, r, -1)
    regions_lib.check_region_ids(regions, self.num_regions)
    pooled = self.encoder(fbank, patchout_key)
    return jnp.broadcast_to(pooled[:, None], (b, r, pooled.shape[-1]))

  def all_targets(self, fbank, regions, patchout_key=None):
    """[B, R, num_targets]: every target's prediction."""
    features = self.features(fbank, regions, patchout_key)
    return self.head(self.head_norm(features).astype(jnp.float32))

  def __call__(self, fbank, regions, patchout_key=None):
    """[B, R]: the first target's prediction."""
    return self.all_targets(fbank, regions, patchout_key)[..., 0]
