"""Preview audio: a content-addressed download cache (through :mod:`data_prep.net`, the one
HTTP client of data_prep), and decoding to what :mod:`mpjax.audio.fbank` consumes (16 kHz mono
float32 in [-1, 1]).

Downloads (:func:`download`)
  Content-addressed: ``RAW/audio/{sha256[:2]}/{sha256}.{ext}``, so identical bytes are stored
  once whatever URL they came from. Written to a temp file and renamed; the extension comes from
  the file's magic bytes, else the Content-Type, else the URL. Responses larger than
  ``max_bytes`` (default 20 MiB; a 30 s preview is ~0.5-1 MB) or that are text/HTML/JSON are
  refused.

Decoding (:func:`load`, :func:`check`, :func:`diagnose`) lives in :mod:`mpjax.audio.decode`
(re-exported here), so `python -m mpjax.predict` decodes a song exactly as the build did.
"""
from __future__ import annotations

import glob
import hashlib
import os
import tempfile
import urllib.parse

import requests
import urllib3

from data_prep import net
from data_prep.net import Http, HttpError, RateLimited
from mpjax.audio.decode import (  # noqa: F401  (re-exported: data_prep's audio API)
    CLIP_FRACTION, CLIP_LEVEL, FFMPEG_EXTS, MIN_SECONDS, REASONS, SAMPLE_RATE, SILENCE_RMS,
    SOUNDFILE_EXTS, _URL_EXTS, AudioError, check, decode, diagnose, ffmpeg_available,
    level_problem, load, resample, sniff)


MAX_BYTES = 20 * 2**20

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
