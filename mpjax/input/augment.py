"""Training-time augmentation of one example (numpy, on the host, inside Grain workers).

Everything here is per example and deterministic given a `numpy.random.Generator`, so the input
pipeline stays reproducible and resumable (Grain derives the generator from the seed and the
element's index). Nothing runs on the accelerator.

The spectrogram `x` is a log-mel fbank `[frames, mel]`, normally already normalised by the
pipeline: `(fbank - mean) / (2 std)`. Augmentations that are defined in log-mel units (gain,
timbre) take `log_scale`, the factor that turns a log-mel difference into a normalised one:
`1 / (2 std)` after normalisation, 1.0 on raw log-mel. Applying an additive log-mel shift `d`
before normalisation is exactly the same as adding `d * log_scale` after it, so the pipeline
normalises first and augments after. Only the first `frames` rows are real audio; rows after
that are the crop's padding and are left untouched (a gain does not make padding louder, a roll
does not move padding into the middle of the clip).

Augmentations (config fields; each one is off, and exactly a no-op, at 0):

  mixup_alpha, mixup_prob   mixup for regression (`mixup`): lambda ~ Beta(alpha, alpha), with
                            probability mixup_prob per example (the pipeline fetches the partner).
  roll                      time roll of the real frames by a random shift in
                            [-roll * frames, roll * frames]; True = 1.0 (anywhere, as AST does).
  gain_db                   random gain g in [-gain_db, gain_db] dB: additive in log-mel,
                            log(a^2) = g ln(10) / 10 for amplitude factor a = 10^(g/20).
                            (Bins at the fbank floor log(eps) move too; a real waveform gain
                            would leave exact silence at the floor. Harmless in practice.)
  tilt_db                   timbre: a random smooth EQ curve over the mel bins (a spectral tilt
                            plus three low-order cosine bumps), |curve| <= tilt_db dB, additive
                            in log-mel.
  pitch_bins                "pitch" shift of the MEL SPECTROGRAM along the frequency axis by a
                            random s in [-pitch_bins, pitch_bins] bins, linear interpolation,
                            edge bins replicated. Mel-domain approximation, NOT a waveform pitch
                            shift: mel bins are not equally spaced in pitch, so harmonic spacing
                            is not preserved exactly; cheap and good enough as a perturbation.
  specaug.freq_masks/freq_width, specaug.time_masks/time_width
                            SpecAugment: that many masks per axis, each width drawn uniformly in
                            [0, max width] and, independently, its start uniformly among the
                            positions where it fits (time masks only over the real frames).
                            Masked cells are set to 0, i.e. the dataset mean after
                            normalisation (as official AST, which masks after normalising).

Fixed order in `apply`: mixup -> roll -> gain -> timbre -> pitch -> frequency masks -> time
masks. Mixup comes first (as AST mixes waveforms before computing its fbank), masks come last so
that masked cells are exactly 0. Each augmentation draws from its own child generator, so turning
one on or off never changes the random draws of the others.

AST's AudioSet recipe for reference (128 bins x 1024 frames): freq_masks=1, freq_width=48,
time_masks=1, time_width=192, roll=True, mixup 0.5.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

# dB -> natural-log power: 10 log10(P) = dB  =>  ln(P) = dB * ln(10) / 10.
DB_TO_LOG = math.log(10.0) / 10.0

_DEFAULTS = {
    "specaug": {"freq_masks": 0, "freq_width": 0, "time_masks": 0, "time_width": 0},
    "roll": 0.0,
    "gain_db": 0.0,
    "tilt_db": 0.0,
    "pitch_bins": 0.0,
    "mixup_alpha": 0.0,
    "mixup_prob": 0.5,
}
_ORDER = ("mixup", "roll", "gain", "timbre", "pitch", "freq_masks", "time_masks")


def default_config():
  """An ml_collections.ConfigDict with every augmentation off (all strengths 0)."""
  import ml_collections
  return ml_collections.ConfigDict(_copy(_DEFAULTS))


def _copy(d):
  return {k: _copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _as_dict(cfg) -> dict:
  if cfg is None:
    return {}
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict (resolves FieldReferences)
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise TypeError(f"augment config must be a dict or ConfigDict, got {type(cfg).__name__}")
  return {k: _as_dict(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
          for k, v in cfg.items()}


def check_config(cfg, prefix: str = "augment") -> dict:
  """Validated plain dict with defaults filled in. Unknown or bad fields raise, named
  (`augment.specaug.freq_mask: unknown field`), because a typo would silently turn an
  augmentation off."""
  user = _as_dict(cfg)
  out = _copy(_DEFAULTS)

  def merge(dst, src, path):
    for k, v in src.items():
      name = f"{path}.{k}"
      if k not in dst:
        raise ValueError(f"{name}: unknown field; known: {sorted(dst)}")
      if isinstance(dst[k], dict):
        if not isinstance(v, Mapping):
          raise ValueError(f"{name}: expected a group of fields {sorted(dst[k])}, got {v!r}")
        merge(dst[k], v, name)
      else:
        dst[k] = v

  merge(out, user, prefix)
  s = out["specaug"]
  for k in ("freq_masks", "freq_width", "time_masks", "time_width"):
    v = s[k]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
      raise ValueError(f"{prefix}.specaug.{k}={v!r}: must be an integer >= 0")
    s[k] = int(v)
  roll = out["roll"]
  roll = 1.0 if roll is True else 0.0 if roll is False or roll is None else roll
  if not isinstance(roll, (int, float)) or not 0 <= roll <= 1:
    raise ValueError(f"{prefix}.roll={out['roll']!r}: a bool or a fraction of the clip in [0, 1]")
  out["roll"] = float(roll)
  for k in ("gain_db", "tilt_db", "pitch_bins", "mixup_alpha"):
    v = out[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
      raise ValueError(f"{prefix}.{k}={v!r}: must be a finite number >= 0 (0 = off)")
    out[k] = float(v)
  p = out["mixup_prob"]
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
    raise ValueError(f"{prefix}.mixup_prob={p!r}: must be a probability in [0, 1]")
  out["mixup_prob"] = float(p)
  return out


def enabled(cfg) -> bool:
  """True when any augmentation would change an example."""
  c = check_config(cfg)
  s = c["specaug"]
  return bool((s["freq_masks"] and s["freq_width"]) or (s["time_masks"] and s["time_width"])
              or c["roll"] or c["gain_db"] or c["tilt_db"] or c["pitch_bins"]
              or (c["mixup_alpha"] and c["mixup_prob"]))


# ------------------------------------------------------------------------------------------------
# The augmentations, each deterministic given its parameters (tests call these directly)
# ------------------------------------------------------------------------------------------------


def draw_masks(rng: np.random.Generator, size: int, count: int, max_width: int):
  """[(start, width)] for `count` masks on an axis of `size`: width ~ U{0..min(max_width, size)},
  then, independently, start ~ U{0..size - width} (the mask always lies inside the axis)."""
  out = []
  for _ in range(count):
    w = int(rng.integers(0, min(max_width, size) + 1))
    start = int(rng.integers(0, size - w + 1))
    out.append((start, w))
  return out


def mask(x: np.ndarray, masks, axis: int, value: float = 0.0) -> np.ndarray:
  """Sets [start, start + width) along `axis` (0 = time, 1 = mel) to `value`, in place."""
  for start, w in masks:
    if w:
      if axis == 0:
        x[start:start + w] = value
      else:
        x[:, start:start + w] = value
  return x


def time_roll(x: np.ndarray, shift: int, frames: int | None = None) -> np.ndarray:
  """Circular shift of the first `frames` rows by `shift` (padding rows stay where they are)."""
  n = x.shape[0] if frames is None else frames
  if shift % max(n, 1):
    x[:n] = np.roll(x[:n], shift, axis=0)
  return x


def gain(x: np.ndarray, db: float, log_scale: float = 1.0, frames: int | None = None) -> np.ndarray:
  """Adds a gain of `db` decibels: + db ln(10)/10 in log-mel, times `log_scale`."""
  n = x.shape[0] if frames is None else frames
  if db:
    x[:n] += np.float32(db * DB_TO_LOG * log_scale)
  return x


def tilt_curve(rng: np.random.Generator, bins: int, tilt_db: float) -> np.ndarray:
  """A smooth random EQ curve in dB over `bins` mel bins, |curve| <= tilt_db.

  0.5 tilt_db s u + 0.5 tilt_db (1/3) sum_k c_k cos(pi k (u + 1) / 2), u in [-1, 1] across
  the bins, s and c_k ~ U(-1, 1): a straight tilt plus broad bumps, never a narrow notch.
  """
  u = np.linspace(-1.0, 1.0, bins)
  s = rng.uniform(-1.0, 1.0)
  c = rng.uniform(-1.0, 1.0, size=3)
  k = np.arange(1, 4)[:, None]
  bumps = (c[:, None] * np.cos(np.pi * k * (u[None] + 1.0) / 2.0)).sum(0) / 3.0
  return (0.5 * tilt_db * (s * u + bumps)).astype(np.float32)


def timbre(x: np.ndarray, curve_db: np.ndarray, log_scale: float = 1.0,
           frames: int | None = None) -> np.ndarray:
  """Adds an EQ curve (dB per mel bin) to every real frame, in log-mel units times log_scale."""
  n = x.shape[0] if frames is None else frames
  x[:n] += (np.asarray(curve_db, np.float64) * DB_TO_LOG * log_scale).astype(np.float32)
  return x


def _shift_bins(x: np.ndarray, s: int) -> np.ndarray:
  """out[:, f] = x[:, clip(f - s, 0, F - 1)]: an integer shift with the edge bins replicated."""
  f = x.shape[1]
  out = np.empty_like(x)
  if s >= f:
    out[:] = x[:, :1]
  elif s > 0:
    out[:, s:] = x[:, :f - s]
    out[:, :s] = x[:, :1]
  elif s <= -f:
    out[:] = x[:, -1:]
  elif s < 0:
    out[:, :f + s] = x[:, -s:]
    out[:, f + s:] = x[:, -1:]
  else:
    out[:] = x
  return out


def pitch_shift(x: np.ndarray, bins: float, frames: int | None = None) -> np.ndarray:
  """Shifts the mel spectrogram up by `bins` mel bins (negative: down), linear interpolation.

  out[:, f] = x at position f - bins, interpolated linearly between the neighbouring bins;
  positions outside the axis take the edge bin. An integer shift moves every spectral peak by
  exactly that many bins. (Computed as a blend of two integer shifts: slices, no gather.)
  """
  if not bins:
    return x
  n = x.shape[0] if frames is None else frames
  s0 = math.floor(bins)
  w = np.float32(bins - s0)  # position f - bins lies between bins f - s0 - 1 (weight w) and f - s0
  part = x[:n]
  out = _shift_bins(part, s0)
  if w:
    out *= np.float32(1.0) - w
    nxt = _shift_bins(part, s0 + 1)
    nxt *= w
    out += nxt
  x[:n] = out
  return x


def mix_log1p(a, b, lam: float):
  """log1p(lam expm1(a) + (1 - lam) expm1(b)): mixing log1p(streams) in the LINEAR stream
  domain (mixing the logs would be a geometric mean, biased low). NaN in either -> NaN."""
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.log1p(lam * np.expm1(a64) + (1.0 - lam) * np.expm1(b64)).astype(np.float32)


def mixup(a: Mapping[str, Any], b: Mapping[str, Any], lam: float) -> dict:
  """Mixup for regression: `a` weighted lam, `b` weighted 1 - lam. Returns a new example.

  Spectrograms (same shape): lam x_a + (1 - lam) x_b; `frames` = the longer of the two.
  Regions: the mix is defined only for the regions both examples charted in (`regions` ids;
  examples without `regions` are treated as having the same region list), per region:
    mp2, series          mixed in the linear stream domain (`mix_log1p`)
    longevity            lam a + (1 - lam) b (a slope, not a stream count)
    series_mask          observed only where both are observed
    series_known         known only where both are known
    series_floor         `mix_log1p` of each one's value where observed, floor where not: the
                         mix is off the chart where either is, and then below that (NaN where
                         either is unknown)
    weekday, debut       a's
    mp2_observed_steps   the minimum of the two
    extrinsic            lam a + (1 - lam) b (the features are counts/positions; a linear mix
                         is the only consistent choice)
  and the other regions are dropped. Labels (e.g. tiktok) survive where both agree, else -1
  (unknown). With no region in common the example is returned unchanged (mixup_lambda 1):
  mixing a spectrogram whose target is undefined would only add noise.
  """
  lam = float(lam)
  out = dict(a)
  if "regions" in a and "regions" in b:
    ra, rb = np.asarray(a["regions"]), np.asarray(b["regions"])
    pos_b = {int(r): j for j, r in enumerate(rb)}
    ia = np.array([i for i, r in enumerate(ra) if int(r) in pos_b], np.int64)
    ib = np.array([pos_b[int(ra[i])] for i in ia], np.int64)
    if not len(ia):
      out["mixup_lambda"] = np.float32(1.0)
      return out
    out["regions"] = ra[ia]
  else:
    n = len(np.asarray(a.get("mp2", [])))
    ia = ib = np.arange(n)
  fa, fb = np.asarray(a["fbank"]), np.asarray(b["fbank"])
  if fa.shape != fb.shape:
    raise ValueError(f"mixup: spectrogram shapes differ {fa.shape} vs {fb.shape}; crop first")
  out["fbank"] = (lam * fa + (1.0 - lam) * fb).astype(fa.dtype)
  if "frames" in a or "frames" in b:
    out["frames"] = max(int(a.get("frames", fa.shape[0])), int(b.get("frames", fb.shape[0])))
  for key in ("mp2", "series"):
    if key in a and key in b:
      out[key] = mix_log1p(np.asarray(a[key])[ia], np.asarray(b[key])[ib], lam)
  if "longevity" in a and "longevity" in b:
    la, lb = np.asarray(a["longevity"], np.float64)[ia], np.asarray(b["longevity"])[ib]
    out["longevity"] = (lam * la + (1.0 - lam) * lb).astype(np.float32)
  if "series_mask" in a and "series_mask" in b:
    ma, mb = np.asarray(a["series_mask"])[ia], np.asarray(b["series_mask"])[ib]
    out["series_mask"] = (ma.astype(bool) & mb.astype(bool)).astype(ma.dtype)
  if "series_known" in a and "series_known" in b:
    ka, kb = np.asarray(a["series_known"])[ia], np.asarray(b["series_known"])[ib]
    out["series_known"] = (ka.astype(bool) & kb.astype(bool)).astype(ka.dtype)
  if all(k in a and k in b for k in ("series_floor", "series", "series_mask")):
    bound = lambda x, i: np.where(np.asarray(x["series_mask"])[i].astype(bool),  # noqa: E731
                                  np.asarray(x["series"])[i], np.asarray(x["series_floor"])[i])
    out["series_floor"] = mix_log1p(bound(a, ia), bound(b, ib), lam)
  if "weekday" in a:
    out["weekday"] = np.asarray(a["weekday"])[ia]
  if "debut" in a:
    out["debut"] = [a["debut"][i] for i in ia]
  if "mp2_observed_steps" in a and "mp2_observed_steps" in b:
    out["mp2_observed_steps"] = np.minimum(np.asarray(a["mp2_observed_steps"])[ia],
                                           np.asarray(b["mp2_observed_steps"])[ib])
  if "extrinsic" in a and "extrinsic" in b:
    ea, eb = np.asarray(a["extrinsic"])[ia], np.asarray(b["extrinsic"])[ib]
    out["extrinsic"] = (lam * ea.astype(np.float64) + (1.0 - lam) * eb).astype(ea.dtype)
  if "labels" in a and "labels" in b:
    la, lb = np.asarray(a["labels"]), np.asarray(b["labels"])
    out["labels"] = np.where(la == lb, la, -1).astype(la.dtype)
  out["mixup_lambda"] = np.float32(lam)
  return out


# ------------------------------------------------------------------------------------------------
# Composition
# ------------------------------------------------------------------------------------------------


def wants_mixup(cfg, rng: np.random.Generator) -> bool:
  """Whether this example gets a mixup partner (draws from `rng` only when mixup is on), so the
  pipeline reads and decodes a partner only when it will be used."""
  c = check_config(cfg)
  return bool(c["mixup_alpha"] > 0 and c["mixup_prob"] > 0 and rng.random() < c["mixup_prob"])


def apply(example: Mapping[str, Any], cfg, rng: np.random.Generator, *,
          partner: Mapping[str, Any] | None = None, log_scale: float = 1.0) -> dict:
  """Augments one example; returns a new dict (the input is not modified).

  example: {'fbank': float [frames, mel], optional 'frames' (real frames; the rest is padding),
    and for mixup the target fields described in `mixup`}. partner: the second example for
    mixup (same spectrogram shape); mixed when given and mixup_alpha > 0 (the pipeline decides
    with `wants_mixup`). log_scale: see the module docstring (1 / (2 std) after normalisation).
  Order: mixup -> roll -> gain -> timbre -> pitch -> frequency masks -> time masks.
  """
  c = check_config(cfg)
  # One child generator per augmentation, drawn up front: switching one augmentation on or off
  # leaves the draws of the others unchanged.
  keys = rng.integers(0, 2**63, size=len(_ORDER))
  sub = dict(zip(_ORDER, keys))
  out = dict(example)
  if partner is not None and c["mixup_alpha"] > 0:
    lam = float(np.random.default_rng(sub["mixup"]).beta(c["mixup_alpha"], c["mixup_alpha"]))
    out = mixup(out, partner, lam)
  x = np.array(out["fbank"], dtype=np.float32, copy=True)
  if x.ndim != 2:
    raise ValueError(f"augment.apply: fbank must be [frames, mel], got shape {x.shape}")
  n = int(out.get("frames", x.shape[0]))
  n = max(0, min(n, x.shape[0]))
  if c["roll"] and n > 1:
    lim = int(c["roll"] * n)
    x = time_roll(x, int(np.random.default_rng(sub["roll"]).integers(-lim, lim + 1)), n)
  if c["gain_db"]:
    g = np.random.default_rng(sub["gain"]).uniform(-c["gain_db"], c["gain_db"])
    x = gain(x, g, log_scale, n)
  if c["tilt_db"]:
    x = timbre(x, tilt_curve(np.random.default_rng(sub["timbre"]), x.shape[1], c["tilt_db"]),
               log_scale, n)
  if c["pitch_bins"]:
    s = np.random.default_rng(sub["pitch"]).uniform(-c["pitch_bins"], c["pitch_bins"])
    x = pitch_shift(x, s, n)
  sa = c["specaug"]
  if sa["freq_masks"] and sa["freq_width"]:
    m = draw_masks(np.random.default_rng(sub["freq_masks"]), x.shape[1], sa["freq_masks"],
                   sa["freq_width"])
    mask(x[:n], m, axis=1)
  if sa["time_masks"] and sa["time_width"] and n:
    m = draw_masks(np.random.default_rng(sub["time_masks"]), n, sa["time_masks"], sa["time_width"])
    mask(x, m, axis=0)
  out["fbank"] = x
  return out
