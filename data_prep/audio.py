"""Preview audio: one rate-limited HTTP client, a content-addressed download cache, and decoding
to what :mod:`mpjax.audio.fbank` consumes (16 kHz mono float32 in [-1, 1]).

HTTP (:class:`Http`)
  One ``requests.Session`` behind a per-host sliding-window rate limit, with retries:
  network errors and 5xx back off exponentially; 429/503 honour ``Retry-After`` up to a cap
  (``max_retry_after``) -- above the cap the host is marked blocked for that long and
  :class:`RateLimited` is raised at once, without sleeping; hosts listed in
  ``throttle_403_hosts`` (iTunes) answer throttling with 403 and no ``Retry-After``, which gets
  the same back-off. JSON lookups are cached on disk (``get_json``), keyed by the full URL:
  ``{cache_dir}/{host}/{sha256(url)[:2]}/{sha256(url)}.json``, so a re-run never repeats a
  lookup. ``sleep`` and ``clock`` are injectable, so tests run without waiting.
  :mod:`data_prep.spotify` uses the same client (and its session) for every provider.

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

import collections
import email.utils
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.parse

import numpy as np
import requests
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SECONDS = 5.0
SILENCE_RMS = 1e-3  # -60 dBFS
MAX_BYTES = 20 * 2**20
USER_AGENT = "mpjax-data-prep/0.1 (music research; previews are not redistributed)"

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
# HTTP
# ----------------------------------------------------------------------------------------------

class HttpError(Exception):
  """A request that failed for good (after retries). `status` is None for network errors."""

  def __init__(self, status, url, detail=""):
    super().__init__(status, url, detail)
    self.status, self.url, self.detail = status, url, detail

  def __str__(self):
    what = f"HTTP {self.status}" if self.status is not None else "network error"
    return f"{what} for {self.url}" + (f": {self.detail}" if self.detail else "")


class RateLimited(HttpError):
  """The server throttled us and asked for (or we would need) a longer wait than allowed."""

  def __init__(self, status, url, retry_after, detail=""):
    super().__init__(status, url, detail)
    self.retry_after = retry_after

  def __str__(self):
    return (f"rate limited (HTTP {self.status}, retry after {self.retry_after:.0f} s) for "
            f"{self.url}" + (f": {self.detail}" if self.detail else ""))


def parse_retry_after(value, now=None):
  """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
  if value is None or str(value).strip() == "":
    return None
  value = str(value).strip()
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Http:
  """requests.Session + per-host rate limits + retries + on-disk JSON cache. See module doc.

  Args:
    cache_dir: where `get_json` caches responses (None: no cache).
    session: a requests.Session to use (default: a new one; its adapter does not retry, so
      429 responses reach us with their headers).
    limits: {host: (max_requests, per_seconds)}; other hosts get `default_limit`.
    throttle_403_hosts: hosts whose 403 without Retry-After means "throttled" (iTunes).
    max_retry_after: longest wait (s) honoured; longer -> RateLimited at once, host blocked.
    max_tries: attempts per request (network errors, 5xx, throttling).
    backoff: first back-off (s) for network errors/5xx, doubled per attempt.
    throttle_backoff: first back-off (s) when throttled without Retry-After, doubled, capped
      at max_retry_after.
    sleep, clock: injectable (tests); clock must be monotonic seconds.
  """

  def __init__(self, cache_dir=None, *, session=None, limits=None, default_limit=(10, 1.0),
               throttle_403_hosts=(), max_retry_after=60.0, max_tries=4, backoff=2.0,
               throttle_backoff=20.0, timeout=30.0, sleep=time.sleep, clock=time.monotonic):
    self.cache_dir = cache_dir
    if session is None:
      session = requests.Session()
      session.headers["User-Agent"] = USER_AGENT
    self.session = session
    self.limits = dict(limits or {})
    self.default_limit = default_limit
    self.throttle_403_hosts = frozenset(throttle_403_hosts)
    self.max_retry_after = float(max_retry_after)
    self.max_tries = int(max_tries)
    self.backoff = float(backoff)
    self.throttle_backoff = float(throttle_backoff)
    self.timeout = timeout
    self.sleep = sleep
    self.clock = clock
    self._sent = collections.defaultdict(collections.deque)
    self._blocked_until = {}
    self.stats = collections.Counter()  # requests per host, cache hits, sleeps

  def __repr__(self):
    return f"Http(cache_dir={self.cache_dir!r}, limits={self.limits!r})"

  # -- rate limiting ---------------------------------------------------------------------------

  def throttle(self, host):
    """Waits until one more request to `host` fits in its sliding window, and counts it."""
    n, per = self.limits.get(host, self.default_limit)
    sent = self._sent[host]
    now = self.clock()
    while sent and now - sent[0] >= per:
      sent.popleft()
    if len(sent) >= n:
      self.wait(per - (now - sent[0]), f"rate limit {n}/{per:g}s for {host}")
      now = self.clock()
      while sent and now - sent[0] >= per:
        sent.popleft()
    sent.append(now)
    self.stats[host] += 1

  def block(self, host, seconds):
    """Marks `host` as refusing us for `seconds` (requests fail fast until then)."""
    self._blocked_until[host] = max(self._blocked_until.get(host, 0.0), self.clock() + seconds)

  def blocked(self, host):
    """Seconds until `host` may be asked again (0.0 when not blocked)."""
    return max(0.0, self._blocked_until.get(host, 0.0) - self.clock())

  def wait(self, seconds, why=""):
    """Sleeps (through the injectable sleep) and counts it."""
    if seconds > 0:
      log.debug("sleeping %.1f s: %s", seconds, why)
      self.stats["sleep_s"] += seconds
      self.sleep(seconds)

  def throttled_wait(self, url, status, retry_after, attempt):
    """Sleeps for a throttled response, or raises RateLimited when the wait is over the cap or
    the attempts are used up. `retry_after` None means "none given": exponential back-off."""
    host = urllib.parse.urlsplit(url).hostname or ""
    delay = retry_after
    if delay is None:
      delay = min(self.throttle_backoff * 2**attempt, self.max_retry_after)
    elif delay > self.max_retry_after:
      self.block(host, delay)
      log.warning("%s asks us to wait %.0f s (cap %.0f s): giving up for now", host, delay,
                  self.max_retry_after)
      raise RateLimited(status, url, delay, "Retry-After above the cap")
    if attempt + 1 >= self.max_tries:
      raise RateLimited(status, url, delay, f"still throttled after {self.max_tries} attempts")
    log.info("%s throttled us (HTTP %s): waiting %.0f s", host, status, delay)
    self.wait(delay, f"throttled by {host}")

  # -- requests --------------------------------------------------------------------------------

  def request(self, url, params=None, *, stream=False):
    """GET with rate limit and retries. Returns the response for any status it does not retry
    (2xx, 3xx, most 4xx); raises RateLimited / HttpError when it gives up."""
    host = urllib.parse.urlsplit(url).hostname or ""
    for attempt in range(self.max_tries):
      wait = self.blocked(host)
      if wait > 0:
        raise RateLimited(None, url, wait, f"{host} is blocked for another {wait:.0f} s")
      self.throttle(host)
      try:
        resp = self.session.get(url, params=params, stream=stream, timeout=self.timeout)
      except (requests.ConnectionError, requests.Timeout) as e:
        if attempt + 1 >= self.max_tries:
          raise HttpError(None, url, type(e).__name__) from None
        self.wait(self.backoff * 2**attempt, f"{type(e).__name__} from {host}")
        continue
      status = resp.status_code
      throttled = status in (429, 503) or (
          status == 403 and host in self.throttle_403_hosts)
      if throttled:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        resp.close()
        self.throttled_wait(resp.url or url, status, retry_after, attempt)
        continue
      if status >= 500:
        resp.close()
        if attempt + 1 >= self.max_tries:
          raise HttpError(status, url, "server error")
        self.wait(self.backoff * 2**attempt, f"HTTP {status} from {host}")
        continue
      return resp
    raise AssertionError("unreachable")

  def full_url(self, url, params=None):
    return requests.Request("GET", url, params=params).prepare().url

  def cache_path(self, url):
    key = hashlib.sha256(url.encode()).hexdigest()
    host = urllib.parse.urlsplit(url).hostname or "nohost"
    return os.path.join(self.cache_dir, host, key[:2], key + ".json")

  def get_json(self, url, params=None, *, cache=True, refresh=False, retry_if=None,
               cacheable=None):
    """GET a JSON document. Returns (body, from_cache).

    cache: read/write the on-disk cache (never use it for signed or secret-bearing URLs).
    refresh: ignore a cached copy (but still overwrite it).
    retry_if: body -> bool; True means "a throttle in disguise" (e.g. Deezer's HTTP-200 quota
      error): back off and retry, never cache it.
    cacheable: body -> bool; False keeps an answer out of the cache (e.g. a transient error).
    """
    full = self.full_url(url, params)
    path = self.cache_path(full) if (cache and self.cache_dir) else None
    if path and not refresh and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        self.stats["cache_hit"] += 1
        return json.load(f)["body"], True
    for attempt in range(self.max_tries):
      resp = self.request(full)
      if not 200 <= resp.status_code < 300:
        raise HttpError(resp.status_code, full, resp.text[:200])
      try:
        body = resp.json()
      except ValueError:
        raise HttpError(resp.status_code, full, "response is not JSON") from None
      if retry_if is not None and retry_if(body):
        self.throttled_wait(full, resp.status_code, None, attempt)
        continue
      if path and (cacheable is None or cacheable(body)):
        _write_json_atomic(path, {"url": full, "fetched": time.time(), "body": body})
      return body, False
    raise AssertionError("unreachable")


def _write_json_atomic(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(obj, f, ensure_ascii=False)
    os.replace(tmp, path)
  except BaseException:
    _remove(tmp)
    raise


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


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


def download(url, raw_dir, session=None, *, max_bytes=MAX_BYTES):
  """Downloads `url` into the content-addressed cache under `raw_dir`.

  session: an :class:`Http` (shares its rate limits, sleep and clock), a requests.Session, or
    None (a fresh Http).
  Returns (relative path 'audio/ab/abcd....ext' with '/' separators, sha256 hex).
  Raises DownloadError, or RateLimited when the host throttles us beyond the cap.
  """
  http = session if isinstance(session, Http) else Http(session=session)
  audio_dir = os.path.join(raw_dir, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  for attempt in range(http.max_tries):
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
    except (requests.ConnectionError, requests.Timeout,
            requests.exceptions.ChunkedEncodingError) as e:
      if tmp:
        _remove(tmp)
      if attempt + 1 >= http.max_tries:
        raise DownloadError("network", url, type(e).__name__) from None
      http.wait(http.backoff * 2**attempt, f"{type(e).__name__} while downloading")
      continue
    except BaseException:
      if tmp:
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
  raise AssertionError("unreachable")


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
