"""MP3: encoder-decoder forecaster of a song's chart curve after its debut, per region.

`model(fbank [B, T, F], regions [B, R], prefix [B, R, k], prefix_mask [B, R, k],
       prefix_known [B, R, k], weekday [B, R]) -> [B, R, H, Q]`: Q quantiles (or Q = 1, a point
forecast) of log1p(streams) for the H = horizon - k steps k .. horizon-1 after the debut, given
the first k steps (k = 0: audio only). prefix_mask: 1 = observed on the chart; prefix_known:
1 = the chart of that step exists, so known and unobserved = off the chart, unknown = missing
(None: every step known); weekday: of the debut, 0 = Monday, -1 unknown (with `weekday=True`);
origin: steps from the debut to the first prefix step (with `max_origin` > 0; None = 0).

Encoder: the MP2 AST (+ region CLS tokens / region embedding, `mpjax.models.mp2` semantics),
with the same parameter paths as `MP2` (`encoder/...`, `regions/table`) so `init_from` an MP2
checkpoint loads it. Its output tokens are the decoder's memory: for region mode `cls_token`
the region's own CLS token followed by the audio tokens (cls, dist, patches); for `embedding`
the tokens of the region-conditioned pass; for `none` the audio tokens.
`audio=False` drops the encoder (chart-only data): the decoder then sees the prefix and the
region only.

Decoder: direct multi-horizon decoding, one learned query per forecast step (step embedding +
region vector + debut-weekday embedding), plus one token per prefix step (its value, observed
and off-chart flags, projected, plus a prefix-position embedding). Pre-LN blocks: self-attention over prefix + query tokens
(bidirectional), cross-attention from all of them to the memory, MLP. Each query token's
output goes through LayerNorm + Linear(Q).
Why direct rather than autoregressive: the targets are censored (off-chart steps have no value
to feed back), all steps train in parallel with no exposure bias, and quantile outputs need no
sampling to roll forward.

Dtype: the decoder blocks compute in `cfg.dtype` like the encoder; parameters, the residual
stream and the output projection (forecast offsets in log streams) stay float32.

Output level: every forecast is `anchor + offset`, anchor = the last observed prefix value
(the curve's current level; for k = 0 or no observed prefix step, a learned per-region level
initialised at the training mean). Quantiles are monotone by construction: the lowest is
free, every next one adds softplus(.) >= 0.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mpjax.models import ast as ast_lib
from mpjax.models import regions as regions_lib

_init = nnx.initializers.truncated_normal(stddev=0.02)


class DecoderBlock(nnx.Module):
  """Pre-LN: x += SelfAttn(LN x); x += CrossAttn(LN x, memory); x += MLP(LN x)."""

  def __init__(self, hidden: int, heads: int, mlp_dim: int, *, cross: bool, dtype, rngs: nnx.Rngs):
    mha = lambda: nnx.MultiHeadAttention(heads, hidden, qkv_features=hidden, decode=False,
                                         kernel_init=_init, dtype=dtype, rngs=rngs)
    norm = lambda: nnx.LayerNorm(hidden, dtype=dtype, rngs=rngs)
    self.norm1 = norm()
    self.self_attn = mha()
    self.norm2 = norm() if cross else None
    self.cross_attn = mha() if cross else None
    self.norm3 = norm()
    self.fc1 = nnx.Linear(hidden, mlp_dim, kernel_init=_init, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, hidden, kernel_init=_init, dtype=dtype, rngs=rngs)

  def __call__(self, x, memory=None):
    """x: float32 residual stream [B * R, L, D]; memory: `MP3.memory`'s (series, shared) pair.
    The sublayers compute in the block's dtype."""
    h = self.norm1(x)
    x = x + self.self_attn(h, h, h).astype(jnp.float32)
    if self.cross_attn is not None and memory is not None:
      x = x + self.cross(self.norm2(x), *memory).astype(jnp.float32)
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm3(x)), approximate=False)).astype(jnp.float32)

  def cross(self, h, series, shared):
    """`self.cross_attn(h, memory, memory)` for memory = [series tokens, shared tokens repeated
    for each of a clip's R series], computed per clip: the R series' queries attend together
    to [every series token, the shared tokens], masked so that a series sees only its own
    series tokens. The shared (audio) keys and values are projected and stored once per clip,
    not R times. h: [B * R, L, D]; series: [B * R, S, D] or None; shared: [B, M, D] or None."""
    a = self.cross_attn
    if shared is None:
      return a(h, series, series)
    b, m = shared.shape[:2]
    r, length = h.shape[0] // b, h.shape[1]
    per_clip = lambda t: t.reshape(b, -1, *t.shape[2:])  # [B * R, n, ...] -> [B, R * n, ...]
    q, k, v = per_clip(a.query(h)), a.key(shared), a.value(shared)
    mask = None
    if series is not None:
      s = series.shape[1]
      k = jnp.concatenate([per_clip(a.key(series)), k], axis=1)
      v = jnp.concatenate([per_clip(a.value(series)), v], axis=1)
      own = (jnp.arange(r * length)[:, None] // length) == (jnp.arange(r * s)[None, :] // s)
      mask = jnp.concatenate([own, jnp.ones((r * length, m), bool)], axis=1)
    out = nnx.dot_product_attention(q, k, v, mask=mask, dtype=a.dtype, precision=a.precision)
    return a.out(out.reshape(b * r, length, *out.shape[2:]))


class MP3(nnx.Module):

  def __init__(self, cfg: ast_lib.ASTConfig, num_regions: int, region_mode: str = "cls_token",
               *, horizon: int, prefix_steps: int = 0, quantiles: Sequence[float] | None = (0.1, 0.5, 0.9),
               audio: bool = True, dec_depth: int = 2, dec_heads: int | None = None,
               freeze_encoder: bool = False, level_init: float = 0.0, weekday: bool = False,
               max_origin: int = 0, num_extrinsic: int = 0, floor_input: bool = False,
               rngs: nnx.Rngs):
    """cfg: the encoder's AST config (its `hidden` is the decoder width, audio or not).
    horizon: series length T of the dataset; forecasts cover steps prefix_steps..T-1.
    quantiles: increasing levels in (0, 1), or None for a point forecast (MSE).
    freeze_encoder: no gradient flows into the encoder (its memory is a constant), so its
      backward pass is not computed; the optimizer must leave it alone too (the train loop does).
    level_init: initial per-region level for k = 0 (e.g. the training mean of the series).
    weekday: condition every token on the debut's weekday (daily charts: release-day effects).
    max_origin: > 0: forecasts may start up to this many steps after the debut (training on
      later origins); every token is conditioned on the origin (0 = from the debut).
    num_extrinsic: > 0: every token is also conditioned on the F debut-time features
      (`extrinsic` [B, R, F], sign(x) log1p|x| then a linear map).
    floor_input: each prefix step also carries that day's chart floor relative to the last
      observed value (`prefix_floor` [B, R, k], log1p; <= 0 = unknown, read as 0): how far the
      song is above the point where it drops off the chart."""
    regions_lib.check_mode(region_mode)
    if num_regions < 1:
      raise ValueError(f"num_regions={num_regions}: need at least one region")
    if not 0 <= prefix_steps < horizon:
      raise ValueError(f"prefix_steps={prefix_steps}: must be in [0, horizon={horizon})")
    if quantiles is not None:
      q = [float(v) for v in quantiles]
      if not q or any(not 0 < v < 1 for v in q) or any(b <= a for a, b in zip(q, q[1:])):
        raise ValueError(f"quantiles={list(quantiles)}: need strictly increasing levels in (0, 1)")
      if 0.5 not in q:
        raise ValueError(f"quantiles={list(quantiles)}: must include 0.5 (the point forecast)")
    if dec_depth < 1:
      raise ValueError(f"dec_depth={dec_depth}: need at least one decoder block")
    d = cfg.hidden
    heads = dec_heads or cfg.heads
    if d % heads:
      raise ValueError(f"dec_heads={heads} must divide hidden={d}")
    self.cfg = cfg
    self.region_mode = region_mode
    self.num_regions = num_regions
    self.horizon = horizon
    self.prefix_steps = prefix_steps
    self.quantiles = tuple(float(v) for v in quantiles) if quantiles is not None else None
    self.audio = audio
    self.freeze_encoder = freeze_encoder
    self.floor_input = floor_input
    self.encoder = ast_lib.AST(cfg, rngs=rngs) if audio else None
    self.regions = (regions_lib.RegionTable(num_regions, d, rngs=rngs)
                    if region_mode != "none" else None)
    n_out = horizon - prefix_steps
    self.step_embed = nnx.Param(_init(rngs.params(), (n_out, d)))
    if prefix_steps:
      self.prefix_proj = nnx.Linear(4 if floor_input else 3, d, kernel_init=_init, rngs=rngs)
      self.prefix_pos = nnx.Param(_init(rngs.params(), (prefix_steps, d)))
    else:
      self.prefix_proj = self.prefix_pos = None
    # Row 0: weekday unknown; rows 1..7: Monday..Sunday.
    self.weekday_embed = nnx.Param(_init(rngs.params(), (8, d))) if weekday else None
    self.origin_embed = (nnx.Param(_init(rngs.params(), (max_origin + 1, d))) if max_origin
                         else None)
    self.extrinsic_proj = (nnx.Linear(num_extrinsic, d, kernel_init=_init, rngs=rngs)
                           if num_extrinsic else None)
    self.level = nnx.Param(jnp.full((num_regions,), level_init, jnp.float32))
    dtype = jnp.dtype(cfg.dtype)
    self.blocks = nnx.List([DecoderBlock(d, heads, 4 * d, cross=audio, dtype=dtype, rngs=rngs)
                            for _ in range(dec_depth)])
    self.out_norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, len(self.quantiles or (0.5,)),
                          kernel_init=nnx.initializers.zeros_init(), dtype=jnp.float32, rngs=rngs)

  @property
  def num_outputs(self) -> int:
    return self.horizon - self.prefix_steps

  # -- encoder ---------------------------------------------------------------------------------

  def memory(self, fbank, regions, patchout_key=None):
    """The decoder's memory as (series [B * R, S, D] | None, shared [B, M, D] | None): each
    series (example, region) attends to its own series tokens followed by its clip's shared
    tokens (`DecoderBlock.cross`). None without audio."""
    if not self.audio:
      return None
    b, r = regions.shape
    enc = lambda x, **kw: self.encoder.encode(x, patchout_key=patchout_key, **kw)
    if self.region_mode == "cls_token":  # the region's own CLS token, then the audio tokens
      tokens = enc(fbank, prefix_tokens=self.regions(regions))  # [B, R+2+N, D]
      return tokens[:, :r].reshape(b * r, 1, -1), tokens[:, r:]
    if self.region_mode == "embedding":  # one region-conditioned pass per series
      emb = self.regions(regions).reshape(b * r, 1, -1)
      x = jnp.repeat(fbank, r, axis=0) if r > 1 else fbank
      return enc(x, token_bias=emb), None
    return None, enc(fbank)

  # -- forward ---------------------------------------------------------------------------------

  def __call__(self, fbank, regions, prefix=None, prefix_mask=None, patchout_key=None, *,
               prefix_known=None, weekday=None, origin=None, extrinsic=None, prefix_floor=None):
    if regions.ndim == 1:
      regions = regions[:, None]
    b, r = regions.shape
    if fbank is not None and fbank.shape[0] != b:
      raise ValueError(f"regions must be [batch={fbank.shape[0]}, R] ids, got {tuple(regions.shape)}")
    regions_lib.check_region_ids(regions, self.num_regions)
    k = self.prefix_steps
    if k:
      if prefix is None or prefix_mask is None:
        raise ValueError(f"this MP3 forecasts from the first {k} steps: pass prefix and "
                         f"prefix_mask of shape [batch, R, {k}]")
      if prefix.shape[-1] != k or prefix.shape[:2] != (b, r) or prefix_mask.shape != prefix.shape:
        raise ValueError(f"prefix/prefix_mask must be [batch={b}, R={r}, k={k}], got "
                         f"{tuple(prefix.shape)} / {tuple(prefix_mask.shape)}")
    memory = self.memory(fbank, regions, patchout_key)
    if memory is not None and self.freeze_encoder:
      memory = jax.tree.map(jax.lax.stop_gradient, memory)
    d = self.cfg.hidden
    level = jnp.take(self.level[...], regions, axis=0)  # [B, R]
    anchor = level
    queries = jnp.broadcast_to(self.step_embed[...], (b, r, self.num_outputs, d))
    if self.regions is not None:
      queries = queries + self.regions(regions)[:, :, None, :]
    context = 0.0
    if self.weekday_embed is not None:
      wd = jnp.full((b, r), -1, jnp.int32) if weekday is None else weekday.reshape(b, r)
      context = jnp.take(self.weekday_embed[...], jnp.clip(wd + 1, 0, 7), axis=0)[:, :, None, :]
    if self.origin_embed is not None:
      o = jnp.zeros((b, r), jnp.int32) if origin is None else origin.reshape(b, r)
      n = self.origin_embed.shape[0]
      context = context + jnp.take(self.origin_embed[...], jnp.clip(o, 0, n - 1),
                                   axis=0)[:, :, None, :]
    if self.extrinsic_proj is not None:
      if extrinsic is None:
        raise ValueError("this MP3 is conditioned on extrinsic features: pass extrinsic [B, R, F]")
      x = extrinsic.astype(jnp.float32)
      context = context + self.extrinsic_proj(jnp.sign(x) * jnp.log1p(jnp.abs(x)))[:, :, None, :]
    queries = queries + context
    tokens = queries
    if k:
      pm = prefix_mask.astype(jnp.float32)
      # The curve's current level: the last observed prefix value (the learned level if none).
      idx = jnp.where(pm > 0, jnp.arange(k), -1).max(-1)  # [B, R]
      last = jnp.take_along_axis(prefix, jnp.maximum(idx, 0)[..., None], -1)[..., 0]
      anchor = jnp.where(idx >= 0, last, level)
      rel = jnp.where(pm > 0, prefix - anchor[..., None], 0.0)
      known = 1.0 if prefix_known is None else prefix_known.astype(jnp.float32)
      off = known * (1.0 - pm)  # off the chart; 0 for a day with no chart in the data
      feats = [rel, pm, off]
      if self.floor_input:
        if prefix_floor is None:
          raise ValueError("this MP3 reads the chart floor: pass prefix_floor [B, R, k]")
        feats.append(jnp.where(prefix_floor > 0, prefix_floor - anchor[..., None], 0.0))
      feats = jnp.stack(feats, axis=-1)  # [B, R, k, 3 or 4]
      ptok = self.prefix_proj(feats) + self.prefix_pos[...] + context
      tokens = jnp.concatenate([ptok, queries], axis=2)
    x = tokens.reshape(b * r, tokens.shape[2], d)
    for blk in self.blocks:
      x = blk(x, memory)
    raw = self.out(self.out_norm(x[:, k:]).astype(jnp.float32))  # [B*R, H, Q]
    if raw.shape[-1] > 1:  # monotone quantiles: lowest free, then + softplus steps
      raw = jnp.concatenate([raw[..., :1], raw[..., :1] + jnp.cumsum(
          jax.nn.softplus(raw[..., 1:]), axis=-1)], axis=-1)
    out = raw.reshape(b, r, self.num_outputs, -1)
    return anchor[..., None, None].astype(jnp.float32) + out.astype(jnp.float32)

  def point(self, out):
    """Point forecast [B, R, H] from `__call__`'s output: the 0.5 quantile."""
    return out[..., median_index(self.quantiles)]


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def median_index(quantiles) -> int:
  """Index of the 0.5 level (the point forecast); 0 for a point model (quantiles None)."""
  return list(quantiles).index(0.5) if quantiles else 0


def pinball(pred, target, quantiles):
  """Elementwise pinball loss [..., Q] for quantile predictions [..., Q] and targets [...]."""
  q = jnp.asarray(quantiles, jnp.float32)
  err = target[..., None] - pred
  return jnp.maximum(q * err, (q - 1) * err)


def forecast_loss(out, series, series_mask, *, prefix_steps: int, quantiles, censored_weight=0.0,
                  series_known=None, series_floor=None, per_series=False):
  """Masked loss over the observed forecast steps, plus an optional censoring term.

  out: [B, R, H, Q]; series, series_mask: [B, R, horizon]. Pinball (quantiles) or MSE (point),
  averaged over observed (example, region, step) points only: unobserved steps contribute zero
  loss and zero gradient. censored_weight > 0 adds, for off-chart steps, a hinge
  `relu(median - floor)`: the track was below the chart's floor there. floor = that step's
  `series_floor` [B, R, horizon] (log1p of the chart's lowest streams) where it is > 0 (0 or NaN
  = unknown), else the proxy: the lowest observed value of that series (the floor is at most its
  lowest charted value; records built before series_floor have only the proxy). Off-chart =
  unobserved where `series_known` is 1 (the chart exists in the data), also after the last
  observed step; a step with no chart in the data is missing and never counts. Without
  `series_known` only gaps before the series' last observed step count (the data may end
  earlier). per_series: every series with an observed forecast step weighs the same (its points
  share a weight of 1; the metric MAE/series), instead of every observed point.
  """
  k = prefix_steps
  y = series[..., k:]
  m = series_mask[..., k:].astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  if quantiles is not None:
    per = pinball(out, y, quantiles).mean(-1)
    mid = out[..., median_index(quantiles)]
  else:
    per = (out[..., 0] - y) ** 2
    mid = out[..., 0]
  if per_series:
    w = m / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    loss = jnp.sum(jnp.where(m > 0, per * w, 0.0)) / jnp.maximum((m.sum(-1) > 0).sum(), 1.0)
  else:
    loss = jnp.sum(jnp.where(m > 0, per, 0.0)) / n
  if censored_weight:
    full = series_mask.astype(jnp.float32)
    t = jnp.arange(full.shape[-1])
    floor = jnp.where(full > 0, series, jnp.inf).min(-1, keepdims=True)
    if series_floor is not None:  # the chart's own floor that step, where the data has it
      real = series_floor[..., k:]
      floor = jnp.where(real > 0, real, floor)
    if series_known is None:
      last_obs = jnp.where(full > 0, t, -1).max(-1, keepdims=True)
      off = (m == 0) & (t[k:] < last_obs) & jnp.isfinite(floor)
    else:
      off = (m == 0) & (series_known[..., k:] > 0) & jnp.isfinite(floor)
    hinge = jnp.where(off, jax.nn.relu(mid - jnp.where(jnp.isfinite(floor), floor, 0.0)), 0.0)
    loss = loss + censored_weight * hinge.sum() / jnp.maximum(off.sum(), 1.0)
  return loss
