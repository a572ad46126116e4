"""Detectability ceilings: what an oracle audio feature recovers of each planted attribute.

The synthetic world (`data_prep.synthetic`) plants six audio attributes into every clip. A probe of
a trained encoder (how well its embedding predicts an attribute) means little without knowing
how much of the attribute can be heard at all in what the model sees. This module answers that
with one plain, rule-based feature per attribute (numpy / scipy; no fitted model inside a
feature), computed on exactly the audio the model sees at evaluation, and `ceilings` scores how
well each feature recovers its attribute across clips. `synthetic.generate` writes both into
truth.json (songs[i]["detect"] and truth["detectability"]).

The crop
--------
Evaluation feeds the model the centre crop of input_tdim = 512 Kaldi fbank frames (25 ms window,
10 ms shift, snip_edges, 16 kHz): an 8 s clip has 1 + (128000 - 400) // 160 = 798 frames, the crop
starts at frame (798 - 512) // 2 = 143 (`mpjax.input.pipeline.crop_starts(frames, tdim, 1)`), and
its frames cover samples 143 * 160 = 22880 .. 22880 + 511 * 160 + 400 = 105040, 82160 samples or
5.135 s. `crop_span` computes that range (data_prep may not import the input pipeline;
tests/test_detect.py checks that the two agree). A clip shorter than the crop is used whole.

The features (`features(x)` returns all six; each has its own function)
--------------------------------------------------------------------------
STFTs use a periodic Hann window and whole frames only: S1 = |STFT| 1024 / hop 512 (64 / 32 ms),
S2 = 2048 / 1024 (128 / 64 ms), S3 = 8192 / 4096 (512 / 256 ms).

  tempo           onset_bpm: the onset envelope is the positive spectral flux of S1's magnitude
                  below 180 Hz (bass notes on every beat, kick drum), minus its 0.5 s moving
                  mean; its autocorrelation r (normalised by overlap, r[0] = 1) scores each
                  candidate BPM on a 0.25-BPM grid over 68..172 as the mean over k = 1..8
                  (lags k T up to 3/4 of the crop) of r(k T) - max(r((k - 1/2) T), 0): beats
                  repeat at whole periods, not half periods (the penalty keeps the estimate off
                  the double tempo; the low band keeps it off half and 2/3 tempos). Returns BPM.
  brightness      harmonic_centroid_hz: median over frames of the spectral centroid (0-4 kHz)
                  of the harmonic part's magnitude^(1/2) (HPSS below). The square root keeps the
                  few strong low partials from dominating, so the centroid follows the spectral
                  tilt more than the notes' pitch.
  percussiveness  percussive_db: 10 log10(percussive / harmonic energy), 0-4 kHz. Median-filter
                  HPSS (Fitzgerald 2010) on S1's power summed in bands of two bins (31.25 Hz):
                  harmonic = median over 5 frames (160 ms) in time, percussive = median over
                  5 bands (156 Hz) in frequency (`median5`: exactly scipy.ndimage.median_filter
                  with mode "nearest", in a quarter of its time), hard mask (a cell is harmonic
                  where the harmonic median is at least the percussive one).
  loudness        rms_dbfs: 20 log10 RMS of the samples (the planted value is the RMS of the
                  whole 8 s clip; the crop's RMS differs by a few tenths of a dB).
  mode            third_contrast: per S3 frame, the bass root is the strongest pitch class of the
                  power between 40 and 125 Hz (the bass plays the chord root, and every chord of
                  a song, I, IV and V, has the song's triad quality); then (M - m) / (M + m) with
                  M, m the power of pitch classes root + 4 (major third) and root + 3 (minor
                  third) between 125 and 1000 Hz (pads and melody). The mean over frames,
                  weighted by the root's share of the bass power (a kick drum spreads over all
                  pitch classes), is in [-1, 1]; the rule says major when it is > 0.
  hook            beat_lag_similarity: the melody's onset spectrogram (positive flux of S2's
                  magnitude, 250-1600 Hz, minus each frame's median over bins, which removes the
                  broadband drum onsets) compared with itself shifted by whole beats: the cosine
                  similarity of the two overlapping parts, averaged over lags of 1, 2, ... beats
                  (at least one beat of overlap). A beat whose melody cell is the motif repeats
                  every other motif beat exactly (pitch and rhythm), and motif notes are louder,
                  so the similarity rises with how often the 1-beat cell repeats. The beat length
                  comes from this module's own tempo estimate (`tempo`), not the true BPM: the
                  feature uses only what can be heard in the crop (pass bpm= to override; the
                  true BPM gives the same ceiling, the estimate being within 1 %). The ceiling
                  is bounded well below 1: a crop holds 6-14 beats, each the motif with
                  probability 0.1 + 0.85 u, so even a perfect count of motif beats explains
                  only about 74 % of the variance of u (binomial noise; a simulation).

Cost: about 5 ms per 5 s crop on one core (three FFT passes, two small median filters), about
a quarter of what rendering the clip costs; generate() for 240 songs takes some 20-25 % longer.

Ceilings (`ceilings`)
---------------------
Per attribute: R² of the out-of-fold predictions of a monotone (isotonic, increasing or
decreasing, whichever fits the training folds better) regression of the planted value on the
feature, 5-fold cross-validation with fixed folds, pooled over clips; the planted value is u in
[0, 1] (the same R² as for BPM or dBFS, which are linear in u) and x = +1 / -1 for mode. For mode
also the accuracy of the rule (feature > 0 means major; nothing fitted) and the R² of its +1 / -1
call. A held-out feature value is predicted by linear interpolation between the training
folds' fitted steps (constant beyond their ends). Shuffled labels give R² near 0
(tests/test_detect.py). `synthetic.generate` computes the features on the rendered samples in
memory; `--raw` reads the PCM16 files, which moves the values by the 16-bit rounding only (the
ceilings by ~0.001).

    python -m data_prep.detect --raw RAW     # the ceilings JSON of an existing raw dir
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft

from data_prep import synthetic

SAMPLE_RATE = synthetic.SAMPLE_RATE
ATTRIBUTES = synthetic.ATTRIBUTES
INPUT_TDIM = 512  # the demo model's frames per example (configs: model.input_tdim)
FEATURES = {"tempo": "onset_bpm", "brightness": "harmonic_centroid_hz",
            "percussiveness": "percussive_db", "hook": "beat_lag_similarity",
            "loudness": "rms_dbfs", "mode": "third_contrast"}
FOLDS = 5

# The three STFTs (n_fft, hop) in samples at 16 kHz.
_S1, _S2, _S3 = (1024, 512), (2048, 1024), (8192, 4096)
_BPM_GRID = np.arange(68.0, 172.0 + 1e-9, 0.25)
_HPSS_FMAX = 4000.0


# ------------------------------------------------------------------------------------------------
# The crop the model sees
# ------------------------------------------------------------------------------------------------


# Kaldi fbank framing at 16 kHz (mpjax.audio.fbank.frame_params: 25 ms window, 10 ms shift,
# snip_edges). Restated, not imported: mpjax.audio.fbank imports jax, seconds of start-up that
# the generator should not pay; tests/test_detect.py checks both against fbank and the pipeline.
FBANK_WINDOW, FBANK_SHIFT = 400, 160


def crop_span(n_samples: int, input_tdim: int = INPUT_TDIM) -> tuple[int, int]:
  """(start sample, number of samples) of the evaluation crop of a 16 kHz clip of n_samples.

  The clip has frames = 1 + (n_samples - 400) // 160 fbank frames (0 below 400 samples), as
  `mpjax.audio.fbank.num_frames`; the crop starts at frame (frames - input_tdim) // 2 (0 when
  the clip is shorter), as `mpjax.input.pipeline.crop_starts(frames, input_tdim, 1)`; its
  frames i read samples 160 i .. 160 i + 400. A clip with fewer than input_tdim frames is used
  whole (the pipeline pads it); one too short for a frame, too.
  """
  n_samples, input_tdim = int(n_samples), int(input_tdim)
  frames = 1 + (n_samples - FBANK_WINDOW) // FBANK_SHIFT if n_samples >= FBANK_WINDOW else 0
  if frames == 0:
    return 0, n_samples
  start = max(frames - input_tdim, 0) // 2
  return start * FBANK_SHIFT, (min(frames, input_tdim) - 1) * FBANK_SHIFT + FBANK_WINDOW


def centre_crop(x: np.ndarray, input_tdim: int = INPUT_TDIM) -> np.ndarray:
  """The samples of `x` that the evaluation crop's fbank frames read (see `crop_span`)."""
  start, n = crop_span(len(x), input_tdim)
  return x[start:start + n]


# ------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------


_WINDOWS = {}


def _bins(n_fft: int, fmin: float, fmax: float) -> slice:
  """The rfft bins k with fmin <= k * sr / n_fft < fmax."""
  step = SAMPLE_RATE / n_fft
  return slice(int(np.ceil(fmin / step)), int(np.ceil(fmax / step)))


def _hz(n_fft: int, bins: slice) -> np.ndarray:
  return np.arange(bins.start, bins.stop) * (SAMPLE_RATE / n_fft)


def _stft(x: np.ndarray, n_fft: int, hop: int, bins: slice) -> np.ndarray:
  """|STFT| [frames, bins] float32 of the given rfft bins; periodic Hann, whole frames only
  (a clip shorter than n_fft is zero-padded to one frame).

  Computed with scipy.fft (float32 throughout; about twice as fast as numpy.fft here) in blocks
  of about 128 KiB of samples, keeping only the bins asked for: small temporaries, so no fresh
  large allocation (whose page faults can cost more than the FFT) per call.
  """
  x = np.asarray(x, np.float32)
  if len(x) < n_fft:
    x = np.pad(x, (0, n_fft - len(x)))
  if n_fft not in _WINDOWS:
    _WINDOWS[n_fft] = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  window = _WINDOWS[n_fft]
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
  out = np.empty((len(frames), bins.stop - bins.start), np.float32)
  block = max(1, 32768 // n_fft)
  for i in range(0, len(frames), block):
    spec = sp_fft.rfft(frames[i:i + block] * window, axis=1, overwrite_x=True)
    out[i:i + block] = np.abs(spec[:, bins])
  return out


def median5(a: np.ndarray, axis: int) -> np.ndarray:
  """Median filter of width 5 along one axis, edges extended (mode "nearest").

  Exactly `scipy.ndimage.median_filter(a, size=5 along axis, mode="nearest")` (tests check it),
  computed as a min/max network on five shifted views: the middle two of x0, x1, x3, x4 are
  lo = max(min(x0, x1), min(x3, x4)) and hi = min(max(x0, x1), max(x3, x4)), and the median of
  the five is x2 clamped to [min(lo, hi), max(lo, hi)]. A quarter of ndimage's time here, which
  keeps the generator's added cost near its budget.
  """
  pad = [(0, 0)] * a.ndim
  pad[axis] = (2, 2)
  b = np.pad(a, pad, mode="edge")
  n = a.shape[axis]
  x0, x1, x2, x3, x4 = (b[(slice(None),) * axis + (slice(i, i + n),)] for i in range(5))
  lo = np.maximum(np.minimum(x0, x1), np.minimum(x3, x4))
  hi = np.minimum(np.maximum(x0, x1), np.maximum(x3, x4))
  return np.minimum(np.maximum(x2, np.minimum(lo, hi)), np.maximum(lo, hi))


def _moving_mean(x: np.ndarray, width: int) -> np.ndarray:
  """Centred moving mean over an odd width, edges extended (ndimage.uniform_filter1d's
  "nearest")."""
  c = np.cumsum(np.pad(x, (width // 2 + 1, width // 2), mode="edge"))
  return (c[width:] - c[:-width]) / width


class _Analysis:
  """The spectra the features share, each computed once, on first use."""

  def __init__(self, x: np.ndarray, sr: int):
    if sr != SAMPLE_RATE:
      raise ValueError(f"the features are defined at {SAMPLE_RATE} Hz, got sr={sr}")
    self.x = np.asarray(x, np.float32)
    if self.x.ndim != 1:
      raise ValueError(f"expected mono samples [n], got shape {self.x.shape}")
    self._cache = {}

  def get(self, name, make):
    if name not in self._cache:
      self._cache[name] = make()
    return self._cache[name]

  @property
  def s1(self):
    """S1 below 4 kHz [frames, 256]."""
    return self.get("s1", lambda: _stft(self.x, *_S1, _bins(_S1[0], 0.0, _HPSS_FMAX)))

  @property
  def hpss(self):
    """(power, harmonic mask, band centres in Hz): hard median-filter HPSS of S1's power
    below 4 kHz, in bands of two bins (31.25 Hz)."""
    def make():
      s1 = self.s1[:, :self.s1.shape[1] // 2 * 2]
      power = (s1 * s1).reshape(len(s1), -1, 2).sum(-1)
      harm = median5(power, axis=0)  # = ndimage.median_filter(power, (5, 1), mode="nearest")
      perc = median5(power, axis=1)  # = ndimage.median_filter(power, (1, 5), mode="nearest")
      hz = _hz(_S1[0], slice(0, s1.shape[1])).reshape(-1, 2).mean(-1)
      return power, harm >= perc, hz
    return self.get("hpss", make)

  @property
  def bpm(self):
    return self.get("bpm", lambda: _tempo(self))


def _tempo(a: _Analysis) -> float:
  hop_s = _S1[1] / SAMPLE_RATE
  low = a.s1[:, _bins(_S1[0], 20.0, 180.0)].astype(np.float64)
  env = np.maximum(np.diff(low, axis=0), 0.0).sum(1)
  if len(env) < 4 or not np.any(env > 0):
    return float("nan")
  env = env - _moving_mean(env, int(round(0.5 / hop_s)) | 1)
  n = len(env)
  spec = np.fft.rfft(env, 2 * n)
  r = np.fft.irfft(np.abs(spec) ** 2)[:n] / (n - np.arange(n))
  r = r / (r[0] + 1e-30)
  period = 60.0 / _BPM_GRID / hop_s  # frames per beat
  k = np.arange(1, 9)
  on = period[:, None] * k
  ok = on <= 0.75 * n
  ok[:, 0] = True
  lags = np.arange(n)
  r_on = np.interp(np.minimum(on, n - 1), lags, r)
  r_half = np.maximum(np.interp(np.minimum(on - period[:, None] / 2, n - 1), lags, r), 0.0)
  score = ((r_on - r_half) * ok).sum(1) / ok.sum(1)
  return float(_BPM_GRID[int(np.argmax(score))])


def tempo(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
  """Estimated tempo in BPM (onset autocorrelation; see the module docstring)."""
  return _Analysis(x, sr).bpm


def _brightness(a: _Analysis) -> float:
  power, harmonic, f = a.hpss
  w = np.sqrt(np.sqrt(power * harmonic))  # harmonic magnitude ** 0.5
  total = w.sum(1)
  live = total > 0
  if not live.any():
    return float("nan")
  return float(np.median((w[live] * f).sum(1) / total[live]))


def brightness(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
  """Median spectral centroid (Hz, 0-4 kHz) of the harmonic part's magnitude^(1/2)."""
  return _brightness(_Analysis(x, sr))


def _percussiveness(a: _Analysis) -> float:
  power, harmonic, _ = a.hpss
  e_harm = float(np.sum(power, where=harmonic))
  e_perc = float(np.sum(power, where=~harmonic))
  return float(10.0 * np.log10((e_perc + 1e-20) / (e_harm + 1e-20)))


def percussiveness(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
  """Percussive-to-harmonic energy ratio in dB (median-filter HPSS, 0-4 kHz)."""
  return _percussiveness(_Analysis(x, sr))


def _loudness(a: _Analysis) -> float:
  x = a.x.astype(np.float64)
  return float(10.0 * np.log10(np.mean(x * x) + 1e-20))


def loudness(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
  """RMS in dBFS."""
  return _loudness(_Analysis(x, sr))


_CHROMA = []


def _chroma_maps():
  """S3's bass (40-125 Hz) and middle (125-1000 Hz) registers: (bins, [bins, 12] one-hot of
  the nearest equal-tempered pitch class, A = 440 Hz) each."""
  if not _CHROMA:
    for lo, hi in ((40.0, 125.0), (125.0, 1000.0)):
      bins = _bins(_S3[0], lo, hi)
      pc = np.round(69.0 + 12.0 * np.log2(_hz(_S3[0], bins) / 440.0)).astype(np.int64) % 12
      _CHROMA.append((bins, np.eye(12)[pc]))
  return _CHROMA


def _mode(a: _Analysis) -> float:
  (bass, to_bass), (mid, to_mid) = _chroma_maps()
  s3 = a.get("s3", lambda: _stft(a.x, *_S3, slice(bass.start, mid.stop)))
  power = s3.astype(np.float64) ** 2
  # einsum, not @: no BLAS call (whose threads cost far more than these tiny products).
  b = np.einsum("fb,bc->fc", power[:, :bass.stop - bass.start], to_bass)
  m = np.einsum("fb,bc->fc", power[:, mid.start - bass.start:], to_mid)
  root = np.argmax(b, axis=1)
  rows = np.arange(len(power))
  major, minor = m[rows, (root + 4) % 12], m[rows, (root + 3) % 12]
  # Weight: how clearly one pitch class holds the bass register (a kick drum spreads its power
  # over all of them, and its frames would otherwise name a wrong root loudly).
  weight = b[rows, root] / (b.sum(1) + 1e-30)
  if weight.sum() <= 0:
    return float("nan")
  contrast = (major - minor) / (major + minor + 1e-30)
  return float(np.sum(weight * contrast) / weight.sum())


def mode(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
  """Third contrast in [-1, 1] over the bass root: > 0 major, < 0 minor."""
  return _mode(_Analysis(x, sr))


def _hook(a: _Analysis, bpm: float | None = None) -> float:
  bpm = a.bpm if bpm is None else float(bpm)
  mag = a.get("s2", lambda: _stft(a.x, *_S2, _bins(_S2[0], 250.0, 1600.0))).astype(np.float64)
  d = np.maximum(np.diff(mag, axis=0), 0.0)
  d = np.maximum(d - np.median(d, axis=1, keepdims=True), 0.0)
  beat = 60.0 / bpm * SAMPLE_RATE / _S2[1]  # frames per beat
  n = len(d)
  if not np.isfinite(beat) or 2 * beat > n:
    return float("nan")
  energy = np.r_[0.0, np.cumsum(np.sum(d * d, axis=1))]
  sims = []
  for k in range(1, int(n // beat)):  # lags of k beats that leave at least one beat of overlap
    lag = int(round(k * beat))
    uv = np.sum(d[:-lag] * d[lag:])  # sum over t of <d[t], d[t + lag]>
    uu, vv = energy[n - lag], energy[n] - energy[lag]
    sims.append(uv / np.sqrt(uu * vv + 1e-30))
  return float(np.mean(sims))


def hook(x: np.ndarray, sr: int = SAMPLE_RATE, bpm: float | None = None) -> float:
  """Mean cosine similarity of the melody's onset spectrogram with itself at whole-beat lags.

  bpm: the beat length; None (the default) uses `tempo(x)`, i.e. only what is audible.
  """
  return _hook(_Analysis(x, sr), bpm)


_FEATURE_FNS = {"tempo": lambda a: a.bpm, "brightness": _brightness,
                "percussiveness": _percussiveness, "hook": _hook, "loudness": _loudness,
                "mode": _mode}


def features(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
  """{attribute: feature value} over `synthetic.ATTRIBUTES` (names in FEATURES) of samples x.

  x is what is scored: pass `centre_crop(clip)` for the crop the model sees.
  """
  a = _Analysis(x, sr)
  return {name: _FEATURE_FNS[name](a) for name in ATTRIBUTES}


# ------------------------------------------------------------------------------------------------
# Ceilings
# ------------------------------------------------------------------------------------------------


def _columns(values) -> dict[str, np.ndarray]:
  """{attribute: float array} from a mapping of sequences or a sequence of mappings."""
  if isinstance(values, dict):
    return {k: np.asarray(v, np.float64) for k, v in values.items()}
  values = list(values)
  keys = values[0].keys() if values else ()
  return {k: np.array([row[k] for row in values], np.float64) for k in keys}


def _pava(y, w):
  """Non-decreasing least-squares fit to y with weights w (pool adjacent violators)."""
  vals, wts, sizes = [], [], []
  for yi, wi in zip(y.tolist(), w.tolist()):
    vals.append(yi)
    wts.append(wi)
    sizes.append(1)
    while len(vals) > 1 and vals[-2] > vals[-1]:
      wsum = wts[-2] + wts[-1]
      vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
      wts[-2] = wsum
      sizes[-2] += sizes[-1]
      del vals[-1], wts[-1], sizes[-1]
  return np.repeat(vals, sizes)


def _isotonic_fit(f, y):
  """Monotone step function fitted to (f, y): (sorted unique f, fitted y), the better direction."""
  uf, inv = np.unique(f, return_inverse=True)
  count = np.bincount(inv).astype(np.float64)
  mean = np.bincount(inv, weights=y) / count
  up, down = _pava(mean, count), -_pava(-mean, count)
  sse_up, sse_down = np.sum(count * (mean - up) ** 2), np.sum(count * (mean - down) ** 2)
  return uf, up if sse_up <= sse_down else down


def _ranks(a):
  """Ranks 0.. with ties averaged."""
  _, inv, count = np.unique(a, return_inverse=True, return_counts=True)
  first = np.cumsum(count) - count
  return (first + (count - 1) / 2.0)[inv]


def spearman(a, b) -> float:
  """Spearman rank correlation (nan when either side is constant)."""
  ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
  return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def _r2(y, pred) -> float | None:
  ss = float(np.sum((y - y.mean()) ** 2))
  return round(1.0 - float(np.sum((y - pred) ** 2)) / ss, 4) if ss > 0 else None


def cv_monotone_r2(f, y, folds: int = FOLDS, seed: int = 0) -> float | None:
  """Out-of-fold R² of isotonic regression of y on f (fixed random folds; None if too few)."""
  f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(f) & np.isfinite(y)
  f, y = f[ok], y[ok]
  n = len(f)
  if n < 2 * folds:
    return None
  fold = np.random.default_rng(seed).permutation(n) % folds
  pred = np.empty(n)
  for k in range(folds):
    test = fold == k
    xs, fit = _isotonic_fit(f[~test], y[~test])
    pred[test] = np.interp(f[test], xs, fit)
  return _r2(y, pred)


def ceilings(feature_values, truth_u, *, folds: int = FOLDS, seed: int = 0) -> dict:
  """How well each feature recovers its planted attribute across clips.

  feature_values, truth_u: {attribute: [per clip]} or [{attribute: value} per clip]; truth_u
  holds the planted u in [0, 1] (mode: 1 major, 0 minor). Returns {attribute: {"feature",
  "r2" (out-of-fold isotonic R², see the module docstring), "spearman", "n", and for mode
  "accuracy" and "rule_r2"}} for every attribute in ATTRIBUTES present in both.
  """
  feats, truth = _columns(feature_values), _columns(truth_u)
  out = {}
  for name in ATTRIBUTES:
    if name not in feats or name not in truth:
      continue
    f, u = feats[name], truth[name]
    if len(f) != len(u):
      raise ValueError(f"{name}: {len(f)} feature values but {len(u)} planted values")
    ok = np.isfinite(f) & np.isfinite(u)
    y = np.where(u >= 0.5, 1.0, -1.0) if name == "mode" else u
    rho = spearman(f[ok], y[ok]) if ok.sum() > 2 else float("nan")
    res = {"feature": FEATURES[name], "n": int(ok.sum()),
           "r2": cv_monotone_r2(f[ok], y[ok], folds, seed),
           "spearman": round(float(rho), 4) if np.isfinite(rho) else None}
    if name == "mode":
      call = np.where(f[ok] > 0, 1.0, -1.0)
      res["accuracy"] = round(float(np.mean(call == y[ok])), 4) if ok.any() else None
      res["rule_r2"] = _r2(y[ok], call) if ok.any() else None
    out[name] = res
  return out


DEFINITION = (
    "Oracle audio features of the planted attributes, computed on the samples of the centre crop "
    "the model sees at evaluation ('crop'), one plain rule per attribute (data_prep/detect.py): "
    "tempo = BPM from the low-band (< 180 Hz) onset autocorrelation; brightness = median "
    "spectral centroid of the harmonic part's magnitude^(1/2), 0-4 kHz (median-filter HPSS); "
    "percussiveness = percussive-to-harmonic energy ratio in dB (same HPSS); loudness = RMS "
    "dBFS; mode = major-vs-minor third contrast over the bass root (> 0 major); hook = cosine "
    "similarity of the melody's onset spectrogram with itself at whole-beat lags (beat from the "
    "tempo estimate). r2 = out-of-fold R² (5 fixed folds) of an isotonic regression of the "
    "planted value on the feature (u in [0, 1]; mode +1/-1), the ceiling a probe of an encoder "
    "is compared with; mode also: accuracy of the rule and rule_r2 (R² of its +1/-1 call); "
    "spearman = rank correlation; n = clips (the songs' main tracks; each song's feature values "
    "are its 'detect').")


def detectability(feature_values, truth_u, n_samples: int, input_tdim: int = INPUT_TDIM) -> dict:
  """truth.json's 'detectability': the ceilings, the crop of a clip of n_samples, a definition."""
  start, n = crop_span(n_samples, input_tdim)
  return {**ceilings(feature_values, truth_u),
          "crop": {"start_sample": start, "samples": n, "input_tdim": int(input_tdim),
                   "sample_rate": SAMPLE_RATE},
          "definition": DEFINITION}


# ------------------------------------------------------------------------------------------------
# An existing raw directory
# ------------------------------------------------------------------------------------------------


def score_raw(raw_dir: str, input_tdim: int = INPUT_TDIM) -> dict:
  """Recomputes the features of every song's main track in raw_dir and their ceilings.

  Reads truth.json (attributes_u, track_ids) and audio/{track_id}.wav. Returns
  {"detectability": ..., "detect": {song_id: {attribute: value}}}.
  """
  with open(os.path.join(raw_dir, "truth.json")) as f:
    truth = json.load(f)
  feats, us, detect, n_samples = [], [], {}, None
  for song in truth["songs"]:
    x, sr = sf.read(os.path.join(raw_dir, "audio", f"{song['track_ids'][0]}.wav"),
                    dtype="float32", always_2d=False)
    if x.ndim != 1:
      x = x.mean(axis=1)
    n_samples = len(x) if n_samples is None else n_samples
    if len(x) != n_samples:
      raise ValueError(f"{song['song_id']}: {len(x)} samples, other clips have {n_samples}")
    feats.append(features(centre_crop(x, input_tdim), sr))
    us.append(song["attributes_u"])
    detect[song["song_id"]] = feats[-1]
  return {"detectability": detectability(feats, us, n_samples or 0, input_tdim),
          "detect": detect}


def main(argv=None):
  ap = argparse.ArgumentParser(
      prog="python -m data_prep.detect",
      description="Recompute the detectability ceilings (oracle audio features of the planted "
                  "attributes on the model's evaluation crop) of a synthetic raw directory and "
                  "print them as JSON.")
  ap.add_argument("--raw", required=True, help="raw directory written by data_prep.synthetic")
  ap.add_argument("--input-tdim", type=int, default=INPUT_TDIM,
                  help=f"fbank frames of the crop (default {INPUT_TDIM})")
  ap.add_argument("--per-song", action="store_true", help="also print every song's features")
  args = ap.parse_args(argv)
  res = score_raw(args.raw, args.input_tdim)
  out = res if args.per_song else res["detectability"]
  json.dump(synthetic._round(out), sys.stdout, indent=1, sort_keys=True)
  print()


if __name__ == "__main__":
  main()
