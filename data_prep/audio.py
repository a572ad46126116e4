"""Preview audio: a content-addressed download cache (through :mod:`data_prep.net`, the one
HTTP client of data_prep), and decoding to what :mod:`mpjax.audio.fbank` consumes (16 kHz mono
float32 in [-1, 1]).

Downloads (:func:`download`)
  Content-addressed: ``RAW/audio/{sha256[:2]}/{sha256}.{ext}``, so identical bytes are stored
  once whatever URL they came from. Written to a temp file and renamed; the extension comes from
  the file's magic bytes, else the Content-Type, else the URL. Responses larger than
  ``max_bytes`` (default 20 MiB; a 30 s preview is ~0.5-1 MB) or that are text/HTML/JSON are
  refused.

Decoding (:func:`load`, :func:`check`)
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

import glob
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.parse

import numpy as np
import requests
import soundfile as sf
import urllib3

from data_prep import net
from data_prep.net import Http, HttpError, RateLimited

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SECONDS = 5.0
SILENCE_RMS = 1e-3  # -60 dBFS
MAX_BYTES = 20 * 2**20

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

_CONTENT_TYPES = {
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/mpeg3": "mp3",
    "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/m4a": "m4a", "video/mp4": "m4a",
    "audio/aac": "aac", "audio/aacp": "aac", "audio/x-aac": "aac",
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/flac": "flac", "audio/x-flac": "flac",
    "audio/ogg": "ogg", "application/ogg": "ogg", "audio/vorbis": "ogg",
    "audio/aiff": "aiff", "audio/x-aiff": "aiff",
}
_NOT_AUDIO = ("text/", "application/json", "application/xml", "application/xhtml")
_URL_EXTS = {"mp3": "mp3", "m4a": "m4a", "mp4": "m4a", "aac": "aac", "wav": "wav", "flac": "flac",
             "ogg": "ogg", "oga": "ogg", "aif": "aiff", "aiff": "aiff"}


# ----------------------------------------------------------------------------------------------
# Download cache
# ----------------------------------------------------------------------------------------------

class DownloadError(Exception):
  """A preview that could not be downloaded. reason: 'http_<status>', 'network', 'not_audio',
  'too_large' or 'empty'. (Throttling raises RateLimited instead.)"""

  def __init__(self, reason, url, detail=""):
    super().__init__(reason, url, detail)
    self.reason, self.url, self.detail = reason, url, detail

  def __str__(self):
    return f"download failed ({self.reason}): {self.url}" + (f": {self.detail}" if self.detail
                                                               else "")


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


def extension(head: bytes, content_type: str = "", url: str = "") -> str:
  """File extension for downloaded audio: magic bytes, else Content-Type, else URL, else 'bin'."""
  ext = sniff(head)
  if ext:
    return ext
  ctype = (content_type or "").split(";")[0].strip().lower()
  if ctype in _CONTENT_TYPES:
    return _CONTENT_TYPES[ctype]
  url_ext = os.path.splitext(urllib.parse.urlsplit(url).path)[1].lstrip(".").lower()
  return _URL_EXTS.get(url_ext, "bin")


def download(url, raw_dir, http: Http | None = None, *, max_bytes=MAX_BYTES):
  """Downloads `url` into the content-addressed cache under `raw_dir`.

  http: the stage's :class:`data_prep.net.Http` (rate limits, retries; default: a fresh one).
  Returns (relative path 'audio/ab/abcd....ext' with '/' separators, sha256 hex).
  Raises DownloadError (a body cut or undecodable on the way is 'network': the item is
  retried on the next run), or RateLimited when the host throttles us beyond the cap.
  """
  http = http if http is not None else Http()
  audio_dir = os.path.join(raw_dir, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  try:
    resp = http.request(url, stream=True)
  except RateLimited:
    raise
  except HttpError as e:
    raise DownloadError("network" if e.status is None else f"http_{e.status}", url,
                        e.detail) from None
  tmp = None
  try:
    if resp.status_code != 200:
      raise DownloadError(f"http_{resp.status_code}", url)
    ctype = resp.headers.get("Content-Type", "")
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
      raise DownloadError("too_large", url, f"{int(length)} bytes > {max_bytes}")
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=audio_dir)
    digest, size, head = hashlib.sha256(), 0, b""
    with os.fdopen(fd, "wb") as f:
      for chunk in resp.iter_content(1 << 16):
        size += len(chunk)
        if size > max_bytes:
          raise DownloadError("too_large", url, f"more than {max_bytes} bytes")
        if len(head) < 16:
          head += chunk[:16 - len(head)]
        digest.update(chunk)
        f.write(chunk)
  except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
    _remove(tmp)
    raise DownloadError("network", url, net.describe(e)) from None
  except BaseException:
    _remove(tmp)
    raise
  finally:
    resp.close()
  if size == 0:
    _remove(tmp)
    raise DownloadError("empty", url, "0 bytes")
  if sniff(head) is None and ctype.split(";")[0].strip().lower().startswith(_NOT_AUDIO):
    _remove(tmp)  # an error page; audio with a wrong Content-Type is kept (its bytes say so)
    raise DownloadError("not_audio", url, f"Content-Type {ctype}")
  sha = digest.hexdigest()
  existing = glob.glob(os.path.join(audio_dir, sha[:2], sha + ".*"))
  if existing:  # the same bytes are already stored (maybe under another extension)
    _remove(tmp)
    return os.path.relpath(existing[0], raw_dir).replace(os.sep, "/"), sha
  rel = f"audio/{sha[:2]}/{sha}.{extension(head, ctype, url)}"
  os.makedirs(os.path.join(audio_dir, sha[:2]), exist_ok=True)
  os.chmod(tmp, 0o644)
  os.replace(tmp, os.path.join(raw_dir, rel))
  return rel, sha


def _remove(path):
  if path is None:
    return
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

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
