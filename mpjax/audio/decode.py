"""Audio files -> 16 kHz mono float32 waveforms: the one decoder of the project.

`data_prep.build` decodes previews with it before computing the fbank, and `mpjax.predict`
decodes a user's song with it, so a song is seen at prediction exactly as in training.

Decoding (:func:`load`, :func:`check`, :func:`diagnose`)
  wav/flac/ogg/mp3 (and aiff) through soundfile (libsndfile >= 1.1 decodes MP3 via mpg123);
  m4a/aac (iTunes previews) through audioread's ffmpeg backend, which needs the ``ffmpeg``
  binary (``apt-get install ffmpeg``; without it: ``AudioError('no_decoder')``). Channels are
  averaged to mono, then resampled with soxr at "HQ" quality -- the resampler librosa itself
  uses by default (``librosa.resample(res_type='soxr_hq')``), called directly because importing
  librosa's resample path costs seconds; soxr is deterministic and ~3x faster than
  ``scipy.signal.resample_poly`` here. Output length is ``ceil(n * target_sr / sr)``.
  Quality gates: shorter than ``min_seconds`` -> 'too_short'; RMS below ``silence_rms``
  (default 1e-3, -60 dBFS) -> 'silent'. :func:`check` never raises for a bad file: it returns
  ``(None, reason)``.
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SECONDS = 5.0
SILENCE_RMS = 1e-3  # -60 dBFS
# Why a clip is unusable. 'missing' (file not there) is not a decode problem but is reported the
# same way so the build can list it.
REASONS = ("corrupt", "empty", "too_short", "silent", "no_decoder", "missing", "clipped",
           "over_full_scale")
# Clipping: more than CLIP_FRACTION of the samples at |x| >= CLIP_LEVEL (a limiter's ceiling or
# hard clipping); over full scale: a float file with peaks above 1.
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.01

SOUNDFILE_EXTS = ("wav", "flac", "ogg", "mp3", "aiff")
FFMPEG_EXTS = ("m4a", "aac", "mp4")

_URL_EXTS = {"mp3": "mp3", "m4a": "m4a", "mp4": "m4a", "aac": "aac", "wav": "wav", "flac": "flac",
             "ogg": "ogg", "oga": "ogg", "aif": "aiff", "aiff": "aiff"}


def sniff(head: bytes):
  """Audio container from the first bytes of a file, or None."""
  if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
    return "wav"
  if head[:4] == b"fLaC":
    return "flac"
  if head[:4] == b"OggS":
    return "ogg"
  if head[4:8] == b"ftyp":
    return "m4a"
  if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
    return "aiff"
  if head[:3] == b"ID3":
    return "mp3"
  if len(head) >= 2 and head[0] == 0xFF:
    if head[1] & 0xF6 == 0xF0:  # 12-bit sync, layer 00: ADTS AAC
      return "aac"
    if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # 11-bit sync, layer I-III: MPEG audio
      return "mp3"
  return None


class AudioError(Exception):
  """An audio file that cannot be used. reason is one of REASONS."""

  def __init__(self, reason, path, detail=""):
    if reason not in REASONS:
      raise ValueError(f"unknown AudioError reason {reason!r}; expected one of {REASONS}")
    super().__init__(reason, path, detail)
    self.reason, self.path, self.detail = reason, str(path), detail

  def __str__(self):
    return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def ffmpeg_available():
  """Whether the ffmpeg binary that audioread needs for m4a/aac is on PATH."""
  return shutil.which("ffmpeg") is not None


def decode(path):
  """Decodes an audio file at its own rate. Returns (samples [frames, channels] float32, sr).

  Raises AudioError 'missing', 'empty', 'corrupt' or 'no_decoder'.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      head = f.read(16)
  except FileNotFoundError:
    raise AudioError("missing", path, "no such file") from None
  if not head:
    raise AudioError("empty", path, "0 bytes")
  ext = os.path.splitext(path)[1].lstrip(".").lower()
  kind = sniff(head) or _URL_EXTS.get(ext)
  if kind in FFMPEG_EXTS:
    return _decode_ffmpeg(path)
  try:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
  except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as e:
    if kind is None and ffmpeg_available():  # unknown container: let ffmpeg try
      return _decode_ffmpeg(path)
    raise AudioError("corrupt", path, f"soundfile: {e}") from None
  return data, int(sr)


def _decode_ffmpeg(path):
  if not ffmpeg_available():
    raise AudioError("no_decoder", path,
                     "m4a/aac needs the ffmpeg binary for audioread: apt-get install ffmpeg")
  import audioread
  from audioread import ffdec

  try:
    with ffdec.FFmpegAudioFile(path) as f:
      sr, channels = int(f.samplerate), int(f.channels)
      pcm = b"".join(f.read_data())
  except ffdec.NotInstalledError:
    raise AudioError("no_decoder", path,
                     "m4a/aac needs the ffmpeg binary for audioread: apt-get install ffmpeg"
                     ) from None
  except (audioread.DecodeError, OSError, ValueError) as e:
    raise AudioError("corrupt", path, f"ffmpeg: {type(e).__name__}: {e}") from None
  if channels < 1 or sr < 1:
    raise AudioError("corrupt", path, f"ffmpeg reported {channels} channels at {sr} Hz")
  samples = np.frombuffer(pcm, dtype="<i2")
  samples = samples[:len(samples) // channels * channels].reshape(-1, channels)
  return samples.astype(np.float32) / 32768.0, sr


def resample(wave, sr, target_sr=SAMPLE_RATE):
  """1-D float32 resampling with soxr 'HQ' (= librosa.resample(res_type='soxr_hq'))."""
  if sr == target_sr:
    return np.ascontiguousarray(wave, dtype=np.float32)
  import soxr

  return soxr.resample(np.asarray(wave, np.float32), sr, target_sr, quality="HQ").astype(
      np.float32, copy=False)


def load(path, target_sr=SAMPLE_RATE, *, min_seconds=MIN_SECONDS, silence_rms=SILENCE_RMS,
         decoded=None):
  """Audio file -> 1-D float32 mono waveform at `target_sr` (values in [-1, 1]).

  Stereo/multichannel is averaged. Raises AudioError: 'missing', 'empty', 'corrupt',
  'no_decoder', 'too_short' (< min_seconds; 0 disables) or 'silent' (RMS < silence_rms;
  0 disables).
  """
  data, sr = decode(path) if decoded is None else decoded
  if data.shape[0] == 0:
    raise AudioError("empty", path, "no audio frames")
  wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
  if not np.all(np.isfinite(wave)):
    raise AudioError("corrupt", path, "non-finite samples")
  seconds = wave.shape[0] / sr
  if seconds < min_seconds:
    raise AudioError("too_short", path, f"{seconds:.2f} s < {min_seconds:g} s")
  rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
  if rms < silence_rms:
    raise AudioError("silent", path, f"RMS {rms:.2e} < {silence_rms:g}")
  return resample(wave, sr, target_sr)


def level_problem(wave) -> tuple[str, str] | None:
  """('over_full_scale' | 'clipped', detail) for a waveform with level trouble, else None."""
  peak = float(np.max(np.abs(wave))) if wave.size else 0.0
  if peak > 1.0 + 1e-6:
    return "over_full_scale", f"peak {peak:.3f} > 1.0 (full scale)"
  clipped = float(np.mean(np.abs(wave) >= CLIP_LEVEL)) if wave.size else 0.0
  if clipped > CLIP_FRACTION:
    return "clipped", f"{100 * clipped:.1f}% of samples at full scale (> {100 * CLIP_FRACTION:g}%)"
  return None


def diagnose(path, target_sr=SAMPLE_RATE, *, min_seconds=MIN_SECONDS, silence_rms=SILENCE_RMS,
             reject_level_problems=False):
  """(waveform, 'ok', detail) or (None, reason, detail) -- never raises for a bad file.

  A clipped or over-full-scale clip is kept (status 'ok', detail says what is wrong) unless
  reject_level_problems, when it is (None, 'clipped' | 'over_full_scale', detail)."""
  try:
    data, sr = decode(path)
    wave = load(path, target_sr, min_seconds=min_seconds, silence_rms=silence_rms,
                decoded=(data, sr))
  except AudioError as e:
    log.info("unusable audio %s", e)
    return None, e.reason, e.detail
  mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
  problem = level_problem(mono)
  if problem is None:
    return wave, "ok", ""
  if reject_level_problems:
    return None, problem[0], problem[1]
  return wave, "ok", f"{problem[0]}: {problem[1]}"


def check(path, target_sr=SAMPLE_RATE, *, min_seconds=MIN_SECONDS, silence_rms=SILENCE_RMS):
  """(waveform, 'ok') or (None, reason) -- never raises for a bad or missing file."""
  wave, reason, _ = diagnose(path, target_sr, min_seconds=min_seconds, silence_rms=silence_rms)
  return wave, reason
