"""data_prep.audio: decoding to 16 kHz mono, quality reasons, the download cache, the HTTP client.

All audio is synthesized here; HTTP is mocked with `responses` (no network).
"""
import glob
import hashlib
import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import responses
import soundfile as sf

from data_prep import audio, net
from mpjax.audio import decode as decode_lib
from fakes import FakeTime

SR_IN = 44100
FREQ = 440.0
HAS_MP3 = "MP3" in sf.available_formats()



def tone(seconds=6.0, sr=SR_IN, freq=FREQ, amps=(0.5, 0.3)):
  t = np.arange(int(round(seconds * sr))) / sr
  return np.stack([a * np.sin(2 * np.pi * freq * t) for a in amps], axis=1).astype(np.float32)


def write(path, data, sr=SR_IN, **kw):
  sf.write(str(path), data, sr, **kw)
  return str(path)


def peak_hz(wave, sr=16000):
  spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.argmax(spec) * sr / len(wave)


FORMATS = ["wav", "flac", "ogg", pytest.param("mp3", marks=pytest.mark.skipif(
    not HAS_MP3, reason="this libsndfile cannot encode/decode MP3 (needs >= 1.1 with mpg123)"))]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_gives_16k_mono_tone(tmp_path, fmt):
  path = write(tmp_path / f"tone.{fmt}", tone(6.0))
  wave = audio.load(path)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert abs(len(wave) - 6 * 16000) <= (0 if fmt in ("wav", "flac") else 160)
  assert abs(peak_hz(wave) - FREQ) < 1.0
  # Mono is the mean of the channels: a 0.4-amplitude sine, RMS 0.4 / sqrt(2).
  mid = wave[8000:-8000]
  assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)
  if fmt in ("wav", "flac"):  # lossless: the samples themselves (soxr is linear-phase, aligned)
    t = np.arange(len(wave)) / 16000
    want = 0.4 * np.sin(2 * np.pi * FREQ * t)
    assert np.max(np.abs(mid - want[8000:-8000])) < 2e-3


def test_load_is_deterministic_and_keeps_16k(tmp_path):
  path = write(tmp_path / "a.wav", tone(5.5, sr=16000, amps=(0.5,)), sr=16000)
  a, b = audio.load(path), audio.load(path)
  assert np.array_equal(a, b) and len(a) == 5.5 * 16000
  np.testing.assert_allclose(a, tone(5.5, sr=16000, amps=(0.5,))[:, 0], atol=1e-4)  # PCM_16


def test_load_other_rate_and_target(tmp_path):
  path = write(tmp_path / "a.wav", tone(6.0, sr=48000), sr=48000)
  wave = audio.load(path, target_sr=22050)
  assert len(wave) == int(np.ceil(6 * 22050)) and abs(peak_hz(wave, 22050) - FREQ) < 1.0


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3")
def test_mp3_with_wrong_extension_is_sniffed(tmp_path):
  path = write(tmp_path / "tone.mp3", tone(6.0))
  odd = tmp_path / "download.bin"
  shutil.copy(path, odd)
  assert audio.sniff(open(odd, "rb").read(16)) == "mp3"
  assert abs(peak_hz(audio.load(odd)) - FREQ) < 1.0


@pytest.mark.parametrize("name", ["junk.mp3", "junk.wav", "junk.flac", "junk"])
def test_corrupt_bytes(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  with pytest.raises(audio.AudioError) as e:
    audio.load(path)
  assert e.value.reason == "corrupt" and str(path) in str(e.value)
  assert audio.check(path) == (None, "corrupt")


def test_truncated_wav_header_is_corrupt(tmp_path):
  path = write(tmp_path / "a.wav", tone(6.0))
  data = open(path, "rb").read()[:30]
  open(path, "wb").write(data)
  assert audio.check(path) == (None, "corrupt")


def test_empty_file_and_zero_frames(tmp_path):
  empty = tmp_path / "empty.mp3"
  empty.write_bytes(b"")
  with pytest.raises(audio.AudioError) as e:
    audio.load(empty)
  assert e.value.reason == "empty"
  assert audio.check(empty) == (None, "empty")
  header_only = write(tmp_path / "h.wav", np.zeros((0, 2), np.float32))
  assert audio.check(header_only) == (None, "empty")


def test_too_short_is_configurable(tmp_path):
  path = write(tmp_path / "short.flac", tone(3.0))
  with pytest.raises(audio.AudioError) as e:
    audio.load(path)
  assert e.value.reason == "too_short" and "3.00 s < 5 s" in str(e.value)
  assert audio.check(path) == (None, "too_short")
  wave, status = audio.check(path, min_seconds=2.0)
  assert status == "ok" and len(wave) == 3 * 16000


def test_silent_is_configurable(tmp_path):
  path = write(tmp_path / "zeros.wav", np.zeros((6 * SR_IN, 2), np.float32))
  with pytest.raises(audio.AudioError) as e:
    audio.load(path)
  assert e.value.reason == "silent"
  assert audio.check(path) == (None, "silent")
  quiet = write(tmp_path / "quiet.wav", tone(6.0, amps=(1e-3, 1e-3)))  # RMS 7e-4 < 1e-3
  assert audio.check(quiet)[1] == "silent"
  assert audio.check(quiet, silence_rms=1e-4)[1] == "ok"
  assert audio.check(path, silence_rms=0)[1] == "ok"


def test_missing_file(tmp_path):
  assert audio.check(tmp_path / "nope.mp3") == (None, "missing")


def test_m4a_without_ffmpeg_is_no_decoder(tmp_path, monkeypatch):
  monkeypatch.setattr(decode_lib, "ffmpeg_available", lambda: False)
  path = tmp_path / "preview.m4a"
  path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + b"\x00" * 100)
  with pytest.raises(audio.AudioError) as e:
    audio.load(path)
  assert e.value.reason == "no_decoder" and "apt-get install ffmpeg" in str(e.value)
  assert audio.check(path) == (None, "no_decoder")


def test_unknown_reason_rejected():
  with pytest.raises(ValueError, match="unknown AudioError reason"):
    audio.AudioError("bad", "x")


@pytest.mark.skipif(not audio.ffmpeg_available(),
                    reason="ffmpeg not installed (apt-get install ffmpeg): m4a/aac decoding "
                           "via audioread cannot be tested")
def test_m4a_decodes_with_ffmpeg(tmp_path):
  wav = write(tmp_path / "tone.wav", tone(6.0))
  m4a = tmp_path / "tone.m4a"
  subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", "-b:a", "128k",
                  str(m4a)], check=True)
  assert audio.sniff(open(m4a, "rb").read(16)) == "m4a"
  wave = audio.load(m4a)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert abs(len(wave) - 6 * 16000) < 0.05 * 16000
  assert abs(peak_hz(wave) - FREQ) < 1.0
  # Garbage with an m4a header: corrupt, not no_decoder.
  bad = tmp_path / "bad.m4a"
  bad.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x17" * 3000)
  assert audio.check(bad) == (None, "corrupt")


# -- sniffing --------------------------------------------------------------------------------

def test_extension_sources():
  assert audio.extension(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
  assert audio.extension(b"fLaC\x00") == "flac"
  assert audio.extension(b"OggS\x00") == "ogg"
  assert audio.extension(b"ID3\x04") == "mp3"
  assert audio.extension(b"\xff\xfb\x90\x44") == "mp3"
  assert audio.extension(b"\xff\xf1\x50\x80") == "aac"
  assert audio.extension(b"\x00\x00\x00\x20ftypM4A ") == "m4a"
  assert audio.extension(b"????", "audio/mpeg; charset=x") == "mp3"
  assert audio.extension(b"????", "application/octet-stream",
                         "https://x.y/p/preview.m4a?sig=1") == "m4a"
  assert audio.extension(b"????") == "bin"


# -- downloads ------------------------------------------------------------------------------

def wav_bytes(freq=FREQ, seconds=6.0, sr=8000):
  buf = io.BytesIO()
  sf.write(buf, tone(seconds, sr, freq, (0.5,)), sr, format="WAV", subtype="PCM_16")
  return buf.getvalue()


def files_under(d):
  return sorted(p for p in glob.glob(os.path.join(d, "**", "*"), recursive=True)
                if os.path.isfile(p))


@responses.activate
def test_download_is_content_addressed(tmp_path):
  same, other = wav_bytes(440), wav_bytes(880)
  responses.get("https://cdn.example/a.mp3?sig=1", body=same, content_type="audio/mpeg")
  responses.get("https://other.example/b", body=same, content_type="application/octet-stream")
  responses.get("https://cdn.example/c.wav", body=other, content_type="audio/wav")
  ft = FakeTime()
  http = net.Http(sleep=ft.sleep, clock=ft.clock)
  p1, h1 = audio.download("https://cdn.example/a.mp3?sig=1", str(tmp_path), http)
  p2, h2 = audio.download("https://other.example/b", str(tmp_path), http)
  p3, h3 = audio.download("https://cdn.example/c.wav", str(tmp_path), http)
  assert h1 == h2 == hashlib.sha256(same).hexdigest() and p1 == p2
  assert p1 == f"audio/{h1[:2]}/{h1}.wav"  # the bytes say WAV, whatever the URL says
  assert h3 == hashlib.sha256(other).hexdigest() and p3 != p1
  assert files_under(tmp_path) == sorted([str(tmp_path / p1), str(tmp_path / p3)])
  assert open(tmp_path / p1, "rb").read() == same
  assert audio.check(tmp_path / p1, min_seconds=1)[1] == "ok"


@responses.activate
def test_download_retries_then_refuses_bad_answers(tmp_path):
  data = wav_bytes()
  url = "https://cdn.example/x.wav"
  responses.get(url, status=503)
  responses.get(url, status=500)
  responses.get(url, body=data, content_type="audio/wav")
  ft = FakeTime()
  http = net.Http(sleep=ft.sleep, clock=ft.clock, backoff=2.0, jitter=0.0)
  path, sha = audio.download(url, str(tmp_path), http)
  assert [w for _, _, w in http.retries] == [2.0, 4.0]  # back-off 2 * 2**(n-1)
  assert sha == hashlib.sha256(data).hexdigest()

  responses.get("https://cdn.example/gone.mp3", status=404)
  responses.get("https://cdn.example/page", body="<html>", content_type="text/html")
  responses.get("https://cdn.example/mislabelled", body=data, content_type="text/plain")
  responses.get("https://cdn.example/huge", body=b"\xff\xfb" + b"\x00" * 5000,
                content_type="audio/mpeg")
  responses.get("https://cdn.example/nothing", body=b"", content_type="audio/mpeg")
  for url, reason, kw in [("https://cdn.example/gone.mp3", "http_404", {}),
                          ("https://cdn.example/page", "not_audio", {}),
                          ("https://cdn.example/huge", "too_large", {"max_bytes": 1000}),
                          ("https://cdn.example/nothing", "empty", {})]:
    with pytest.raises(audio.DownloadError) as e:
      audio.download(url, str(tmp_path), http, **kw)
    assert e.value.reason == reason, url
  assert files_under(tmp_path) == [str(tmp_path / path)]  # no temp files left behind
  # Audio bytes under a wrong Content-Type are kept: the bytes decide.
  assert audio.download("https://cdn.example/mislabelled", str(tmp_path), http) == (path, sha)


@responses.activate
def test_download_retry_after_over_cap_raises_without_sleeping(tmp_path):
  responses.get("https://cdn.example/x", status=429, headers={"Retry-After": "3600"})
  ft = FakeTime()
  http = net.Http(sleep=ft.sleep, clock=ft.clock, max_wait=60)
  with pytest.raises(net.RateLimited) as e:
    audio.download("https://cdn.example/x", str(tmp_path), http)
  assert e.value.retry_after == 3600 and ft.sleeps == []
  assert http.blocked("cdn.example") == 3600
  with pytest.raises(net.RateLimited):  # fails fast while blocked: no second request
    audio.download("https://cdn.example/x", str(tmp_path), http)
  assert len(responses.calls) == 1


def test_level_problems_reported_kept_or_rejected(tmp_path):
  clean = write(tmp_path / "clean.wav", tone(6.0))
  assert audio.diagnose(clean)[1:] == ("ok", "")
  clipped = write(tmp_path / "clipped.wav", np.clip(tone(6.0) * 20, -1, 1))
  wave, status, detail = audio.diagnose(clipped)
  assert wave is not None and status == "ok" and detail.startswith("clipped: ")
  assert audio.diagnose(clipped, reject_level_problems=True)[:2] == (None, "clipped")
  hot = write(tmp_path / "hot.wav", tone(6.0) * 3, subtype="FLOAT")  # a float file above 1
  wave, status, detail = audio.diagnose(hot, reject_level_problems=True)
  assert (wave, status) == (None, "over_full_scale") and "peak 1.200" in detail  # mono mixdown
  assert audio.check(hot)[1] == "ok"  # check() keeps it (it only reports)
