"""Regions: one model serves many chart regions.

Two ways to tell the model which region a prediction is for (`mode`):
- `cls_token`: a learned token per region, prepended to the audio tokens. Several may be
  prepended at once, so one forward pass scores several regions; the encoder's attention mask
  keeps each region token's output independent of which other regions ride along.
- `embedding`: a learned vector per region added to every audio token; one pass per region.
- `none`: the ablation; every region gets the same prediction.

Region codes are the kworb country codes (`us`, `global`, ...); the vocabulary (code -> id) is
stored in the dataset manifest. `encode_regions` maps codes to ids and names any unknown code.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MODES = ("cls_token", "embedding", "none")


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"unknown region mode {mode!r}; choose one of {MODES}")
  return mode


def encode_regions(codes: Sequence[str] | np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
  """Region codes (any shape) -> int32 ids in `vocabulary`. Unknown codes raise, named."""
  index = {c: i for i, c in enumerate(vocabulary)}
  codes = np.asarray(codes)
  unknown = sorted({str(c) for c in codes.ravel() if str(c) not in index})
  if unknown:
    raise ValueError(f"unknown region(s) {unknown}; the model knows {list(vocabulary)}")
  return np.vectorize(lambda c: index[str(c)], otypes=[np.int32])(codes) if codes.size else (
      np.zeros(codes.shape, np.int32))


def check_region_ids(ids, num_regions: int):
  """Range check for concrete ids (a traced array under jit cannot be checked; skipped)."""
  if isinstance(ids, jax.core.Tracer):
    return
  ids = np.asarray(ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"region ids must be integers, got dtype {ids.dtype}; "
                     "map codes with regions.encode_regions")
  bad = ids[(ids < 0) | (ids >= num_regions)]
  if bad.size:
    raise ValueError(f"unknown region id(s) {sorted(set(bad.tolist()))[:8]}; "
                     f"the model has {num_regions} regions (ids 0..{num_regions - 1})")


class RegionTable(nnx.Module):
  """A learned vector per region: ids [...] -> [..., D].

  The same table serves both modes; the model decides how it is used (prepended as CLS
  tokens, or added to every audio token).
  """

  def __init__(self, num_regions: int, hidden: int, *, rngs: nnx.Rngs):
    self.num_regions = num_regions
    self.table = nnx.Param(nnx.initializers.truncated_normal(0.02)(
        rngs.params(), (num_regions, hidden)))

  def __call__(self, ids):
    check_region_ids(ids, self.num_regions)
    return jnp.take(self.table[...], ids, axis=0)
