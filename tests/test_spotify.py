"""data_prep.spotify: metadata batching and 429 handling, preview fallbacks, fuzzy matching,
album versions, resuming, and credential hygiene. All HTTP is mocked with `responses`."""
import base64
import glob
import io
import json
import logging
import os
import urllib.parse

import numpy as np
import pandas as pd
import pytest
import requests
import responses
import soundfile as sf

from data_prep import spotify, tables
from fakes import FakeTime

SECRET = "s3cr3t-Do-Not-Leak-7f3a9c1e"
CLIENT_ID = "client-id-4d2b"
TOKEN_URL = "https://accounts.spotify.com/api/token"
TRACKS_URL = "https://api.spotify.com/v1/tracks/"
DEEZER_URL = "https://api.deezer.com/track/isrc:{}"
ITUNES_URL = "https://itunes.apple.com/search"



def tid(i):
  return f"T{i:021d}"


def sp_track(track_id, name="Song", artists=("Artist",), isrc="USABC2400001", preview=None,
             duration_ms=200000, album="Album"):
  return {"id": track_id, "name": name, "artists": [{"name": a} for a in artists],
          "external_ids": {"isrc": isrc} if isrc else {}, "duration_ms": duration_ms,
          "album": {"name": album, "release_date": "2024-05-17"}, "preview_url": preview}


_WAVS = {}


def wav_bytes(freq=440.0, seconds=6.0, sr=8000):
  if freq not in _WAVS:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="WAV",
             subtype="PCM_16")
    _WAVS[freq] = buf.getvalue()
  return _WAVS[freq]


@pytest.fixture
def env(tmp_path, monkeypatch):
  """Credentials in the environment, cwd in tmp (spotipy would drop a .cache there), fake time,
  a mocked network with the token endpoint."""
  monkeypatch.setenv("SPOTIPY_CLIENT_ID", CLIENT_ID)
  monkeypatch.setenv("SPOTIPY_CLIENT_SECRET", SECRET)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  raw = tmp_path / "raw"
  ft = FakeTime()
  with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
    rsps.post(TOKEN_URL, json={"access_token": "tok-123", "token_type": "Bearer",
                               "expires_in": 3600})
    yield Env(str(raw), ft, rsps)


class Env:
  def __init__(self, raw, ft, rsps):
    self.raw, self.ft, self.rsps = raw, ft, rsps
    self.tracks_calls = []

  def http(self, **kw):
    kw.setdefault("jitter", 0.0)
    self.last_http = spotify.make_http(self.raw, sleep=self.ft.sleep, clock=self.ft.clock, **kw)
    return self.last_http

  def waits(self):
    """The waits between retries the last client planned (responses does not sleep them)."""
    return [w for _, _, w in self.last_http.retries]

  def catalog(self, tracks):
    """Serves tracks() for these Spotify track objects (unknown ids -> null)."""
    by_id = {t["id"]: t for t in tracks}

    def cb(request):
      ids = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)["ids"][0].split(",")
      self.tracks_calls.append(ids)
      return 200, {}, json.dumps({"tracks": [by_id.get(i) for i in ids]})

    self.rsps.add_callback(responses.GET, TRACKS_URL, callback=cb)

  def deezer(self, isrc, body):
    self.rsps.get(DEEZER_URL.format(isrc), json=body)

  def preview(self, url, freq=440.0, content_type="audio/mpeg"):
    self.rsps.get(url, body=wav_bytes(freq), content_type=content_type)

  def calls(self, prefix=""):
    return [c.request.url for c in self.rsps.calls if c.request.url.startswith(prefix)]

  def resolve(self, ids, **kw):
    kw.setdefault("http", self.http())
    return spotify.resolve(self.raw, ids, progress=False, **kw)


def deezer_track(did, preview, title="Song", artist="Artist", duration=200):
  return {"id": did, "title": title, "preview": preview, "duration": duration,
          "artist": {"name": artist}, "rank": 1000, "album": {"title": "Album"}}


DEEZER_NO_DATA = {"error": {"type": "DataException", "message": "no data", "code": 800}}


def itunes_result(track_id, name, artist, ms=200000, preview=None):
  return {"kind": "song", "trackId": track_id, "trackName": name, "artistName": artist,
          "collectionName": "Album", "trackTimeMillis": ms,
          "previewUrl": preview or f"https://audio-ssl.itunes.apple.com/p/{track_id}.m4a"}


# -- metadata ---------------------------------------------------------------------------------

def test_batches_of_at_most_50(env):
  ids = [tid(i) for i in range(120)]
  env.catalog([sp_track(t, name=f"Song {t}", isrc=f"USABC24{i:05d}") for i, t in enumerate(ids)])
  tracks, clips = env.resolve(ids, providers=())
  assert [len(c) for c in env.tracks_calls] == [50, 50, 20]
  assert sum(env.tracks_calls, []) == ids
  assert list(tracks["track_id"]) == ids and set(tracks["metadata_status"]) == {"ok"}
  row = tracks.iloc[7]
  assert row["isrc"] == "USABC2400007" and row["song_id"] == "USABC2400007"
  assert row["artists"] == "Artist" and row["album"] == "Album" and row["duration_ms"] == 200000
  assert set(clips["status"]) == {"no_preview"} and len(clips) == 120
  tables.read(os.path.join(env.raw, "tracks.csv"), "tracks")  # schema-valid on disk


def test_metadata_rows_not_found_invalid_and_song_key(env):
  good = tid(1)
  env.catalog([sp_track(good, name="Hello (feat. B) - Remastered 2011", artists=("Adele", "B"),
                        isrc="")])
  tracks, _ = env.resolve([good, tid(2), "not-an-id"], providers=())
  by = tracks.set_index("track_id")
  assert by.loc[good, "song_id"] == tables.song_key("Adele", "Hello (feat. B) - Remastered 2011")
  assert by.loc[good, "song_id"] == "adele - hello" and by.loc[good, "artists"] == "Adele; B"
  assert by.loc[tid(2), "metadata_status"] == "not_found"
  assert by.loc["not-an-id", "metadata_status"] == "invalid_id"
  assert env.tracks_calls == [[good, tid(2)]]  # the invalid id is never sent


def test_429_retry_after_is_honoured(env):
  t = tid(1)
  env.rsps.get(TRACKS_URL, status=429, headers={"Retry-After": "7"},
               json={"error": {"status": 429, "message": "API rate limit exceeded"}})
  env.catalog([sp_track(t)])
  tracks, _ = env.resolve([t], providers=())
  assert env.waits() == [7.0]
  assert tracks["metadata_status"].tolist() == ["ok"]
  assert len(env.calls(TRACKS_URL)) == 2


def test_429_retry_after_above_cap_gives_up_without_sleeping(env):
  ids = [tid(i) for i in range(120)]
  env.rsps.get(TRACKS_URL, status=429, headers={"Retry-After": "3600"})
  tracks, clips = env.resolve(ids, providers=("deezer",))
  assert set(tracks["metadata_status"]) == {"rate_limited"} and len(tracks) == 120
  assert env.waits() == [] and env.ft.sleeps == []
  # Only one request: the host stays blocked for the rest of the run, later batches fail fast.
  assert len(env.calls(TRACKS_URL)) == 1
  assert len(clips) == 0  # nothing to resolve without metadata
  # A later run retries the rate-limited tracks.
  env.rsps.replace(responses.GET, TRACKS_URL, json={"tracks": [sp_track(t) for t in ids[:50]]})
  tracks, _ = env.resolve(ids[:50], providers=())
  assert set(tracks.set_index("track_id").loc[ids[:50], "metadata_status"]) == {"ok"}


def test_missing_credentials_name_the_variables(env, monkeypatch):
  monkeypatch.delenv("SPOTIPY_CLIENT_SECRET")
  with pytest.raises(spotify.CredentialsError, match="SPOTIPY_CLIENT_SECRET"):
    env.resolve([tid(1)])
  monkeypatch.delenv("SPOTIPY_CLIENT_ID")
  with pytest.raises(spotify.CredentialsError,
                     match="SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET"):
    env.resolve([tid(1)])


# -- preview providers ------------------------------------------------------------------------

def test_spotify_preview_first(env):
  t = tid(1)
  env.catalog([sp_track(t, preview="https://p.scdn.co/mp3-preview/abc")])
  env.preview("https://p.scdn.co/mp3-preview/abc")
  _, clips = env.resolve([t])
  c = clips.iloc[0]
  assert (c["clip_id"], c["provider"], c["status"], c["match_score"]) == (
      f"spotify:{t}", "spotify", "ok", 1.0)
  assert c["url"] == "https://p.scdn.co/mp3-preview/abc"
  assert os.path.exists(os.path.join(env.raw, c["audio_path"]))
  assert not env.calls("https://api.deezer.com") and not env.calls(ITUNES_URL)


def test_deezer_by_isrc(env):
  t, isrc = tid(1), "GBUM71029604"
  env.catalog([sp_track(t, isrc=isrc)])
  url = "https://cdnt-preview.dzcdn.net/api/1/1/a/b/c/0/abc.mp3?hdnea=exp=1700000000~hmac=ff"
  env.deezer(isrc, deezer_track(3135556, url))
  env.preview(url)
  _, clips = env.resolve([t])
  c = clips.iloc[0]
  assert (c["clip_id"], c["provider"], c["url"], c["match_score"], c["status"]) == (
      "deezer:3135556", "deezer", url, 1.0, "ok")
  assert c["song_id"] == isrc
  # The lookup is cached by URL, the signed preview URL is not.
  cached = glob.glob(os.path.join(env.raw, "cache", "**", "*.json"), recursive=True)
  assert len(cached) == 1 and json.load(open(cached[0]))["url"] == DEEZER_URL.format(isrc)


def test_deezer_error_body_falls_back_to_search_then_itunes(env):
  t, isrc = tid(1), "USUM72400001"
  env.catalog([sp_track(t, name="Espresso", artists=("Sabrina Carpenter",), isrc=isrc,
                        duration_ms=175459)])
  env.deezer(isrc, DEEZER_NO_DATA)  # HTTP 200 with an error body
  env.rsps.get("https://api.deezer.com/search/track", json={"data": [], "total": 0})
  preview = "https://audio-ssl.itunes.apple.com/p/1.m4a"
  env.rsps.get(ITUNES_URL, json={"resultCount": 1, "results": [
      itunes_result(1745234, "Espresso", "Sabrina Carpenter", 175459, preview)]})
  env.preview(preview, content_type="audio/x-m4a")
  _, clips = env.resolve([t])
  c = clips.iloc[0]
  assert (c["clip_id"], c["provider"], c["status"]) == ("itunes:1745234", "itunes", "ok")
  assert c["match_score"] == pytest.approx(1.0)
  urls = [u for u in env.calls() if "spotify.com" not in u]
  assert urls[0] == DEEZER_URL.format(isrc)
  assert urls[1].startswith("https://api.deezer.com/search/track?q=")
  assert urllib.parse.parse_qs(urllib.parse.urlsplit(urls[1]).query)["q"] == [f'isrc:"{isrc}"']
  itunes_q = urllib.parse.parse_qs(urllib.parse.urlsplit(urls[2]).query)
  assert itunes_q["entity"] == ["song"] and itunes_q["term"] == ["sabrina carpenter espresso"]
  assert urls[3] == preview


def test_deezer_search_fallback_hit(env):
  t, isrc = tid(1), "USUM72400002"
  env.catalog([sp_track(t, isrc=isrc)])
  env.deezer(isrc, DEEZER_NO_DATA)
  url = "https://cdnt-preview.dzcdn.net/x.mp3?hdnea=1"
  env.rsps.get("https://api.deezer.com/search/track",
               json={"data": [dict(deezer_track(99, url), isrc=isrc)], "total": 1})
  env.preview(url)
  _, clips = env.resolve([t])
  assert clips.iloc[0][["clip_id", "match_score", "status"]].tolist() == ["deezer:99", 1.0, "ok"]


def test_deezer_quota_error_backs_off_and_is_not_cached(env):
  t, isrc = tid(1), "USUM72400003"
  env.catalog([sp_track(t, isrc=isrc)])
  quota = {"error": {"type": "Exception", "message": "Quota limit exceeded", "code": 4}}
  url = "https://cdnt-preview.dzcdn.net/q.mp3"
  env.deezer(isrc, quota)
  env.deezer(isrc, deezer_track(5, url))
  env.preview(url)
  _, clips = env.resolve([t])
  assert clips.iloc[0]["clip_id"] == "deezer:5" and env.ft.sleeps == env.waits() == [2.0]
  cached = glob.glob(os.path.join(env.raw, "cache", "**", "*.json"), recursive=True)
  assert [json.load(open(p))["body"]["id"] for p in cached] == [5]


def test_expired_cached_deezer_url_is_looked_up_again(env):
  t, isrc = tid(1), "USUM72400004"
  env.catalog([sp_track(t, isrc=isrc)])
  old = "https://cdnt-preview.dzcdn.net/a.mp3?exp=old"
  new = "https://cdnt-preview.dzcdn.net/a.mp3?exp=new"
  http = env.http()
  env.deezer(isrc, deezer_track(7, old))
  http.get_json(DEEZER_URL.format(isrc))  # an earlier run's cached lookup
  env.rsps.get(old, status=403)
  env.deezer(isrc, deezer_track(7, new))
  env.preview(new)
  _, clips = env.resolve([t], http=http)
  c = clips.iloc[0]
  assert (c["clip_id"], c["url"], c["status"]) == ("deezer:7", new, "ok")


def test_itunes_403_backs_off_and_retries(env):
  t = tid(1)
  env.catalog([sp_track(t, isrc="")])  # no ISRC: straight to iTunes
  env.rsps.get(ITUNES_URL, status=403)
  env.rsps.get(ITUNES_URL, status=403)
  preview = "https://audio-ssl.itunes.apple.com/p/5.m4a"
  env.rsps.get(ITUNES_URL, json={"results": [itunes_result(5, "Song", "Artist", 200000,
                                                           preview)]})
  env.preview(preview, content_type="audio/x-m4a")
  _, clips = env.resolve([t])
  assert env.waits() == [20.0, 40.0]  # iTunes' 403 = throttled: the slow back-off
  assert clips.iloc[0][["clip_id", "status"]].tolist() == ["itunes:5", "ok"]


def test_itunes_403_gives_up_cleanly(env):
  t = tid(1)
  env.catalog([sp_track(t, isrc="")])
  env.rsps.get(ITUNES_URL, status=403)
  _, clips = env.resolve([t])
  c = clips.iloc[0]
  assert (c["clip_id"], c["status"]) == (f"none:{t}", "rate_limited")
  # 20 + 40 s waited; a third wait would pass the 60 s cap on one request's waits.
  assert len(env.calls(ITUNES_URL)) == 3 and env.waits() == [20.0, 40.0]
  # rate_limited is retried by the next run.
  preview = "https://audio-ssl.itunes.apple.com/p/6.m4a"
  env.rsps.replace(responses.GET, ITUNES_URL,
                   json={"results": [itunes_result(6, "Song", "Artist", 200000, preview)]})
  env.preview(preview)
  _, clips = env.resolve([t])
  assert clips[["clip_id", "status"]].values.tolist() == [["itunes:6", "ok"]]


# -- fuzzy matching ---------------------------------------------------------------------------

def test_fuzzy_match_picks_the_right_candidate_among_decoys(env):
  t = tid(1)
  env.catalog([sp_track(t, name="APT.", artists=("ROSÉ", "Bruno Mars"), isrc="",
                        duration_ms=169917)])
  right = "https://audio-ssl.itunes.apple.com/p/right.m4a"
  results = [
      itunes_result(1, "APT. (Karaoke Version)", "Sing2Music", 170000),
      itunes_result(2, "APT.", "Cover Nation", 169000),
      itunes_result(3, "toxic till the end", "ROSÉ", 156000),
      itunes_result(4, "APT. (Live)", "ROSÉ & Bruno Mars", 205000),
      itunes_result(5, "APT.", "ROSÉ & Bruno Mars", 169917, right),
      itunes_result(6, "Die With A Smile", "Lady Gaga & Bruno Mars", 251000),
  ]
  env.rsps.get(ITUNES_URL, json={"resultCount": len(results), "results": results})
  env.preview(right)
  _, clips = env.resolve([t])
  c = clips.iloc[0]
  assert (c["clip_id"], c["url"], c["status"]) == ("itunes:5", right, "ok")
  want = spotify.similarity("ROSÉ; Bruno Mars", "APT.", 169917, "ROSÉ & Bruno Mars", "APT.",
                            169917)
  assert c["match_score"] == want.score == 1.0
  for decoy in results[:4] + results[5:]:
    m = spotify.similarity("ROSÉ; Bruno Mars", "APT.", 169917, decoy["artistName"],
                           decoy["trackName"], decoy["trackTimeMillis"])
    assert m.score < want.score


def test_fuzzy_match_records_partial_score(env):
  t = tid(1)
  env.catalog([sp_track(t, name="Hello - 2015 Remaster", artists=("Adele",), isrc="",
                        duration_ms=295000)])
  url = "https://audio-ssl.itunes.apple.com/p/h.m4a"
  env.rsps.get(ITUNES_URL, json={"results": [itunes_result(9, "Hello", "Adele", 295500, url)]})
  env.preview(url)
  _, clips = env.resolve([t])
  score = clips.iloc[0]["match_score"]
  assert clips.iloc[0]["status"] == "ok" and spotify.MIN_SCORE <= score < 1.0
  assert score == spotify.similarity("Adele", "Hello - 2015 Remaster", 295000, "Adele", "Hello",
                                     295500).score


def test_wrong_song_below_threshold_is_rejected(env):
  t = tid(1)
  env.catalog([sp_track(t, name="Espresso", artists=("Sabrina Carpenter",), isrc="",
                        duration_ms=175459)])
  wrong = [itunes_result(1, "Please Please Please", "Sabrina Carpenter", 186000),
           itunes_result(2, "Espresso Macchiato", "Tommy Cash", 175000),
           itunes_result(3, "Espresso", "Tommy Cash", 175459)]
  env.rsps.get(ITUNES_URL, json={"results": wrong})
  _, clips = env.resolve([t])
  c = clips.iloc[0]
  assert (c["clip_id"], c["status"], c["audio_path"]) == (f"none:{t}", "no_preview", "")
  assert not env.calls("https://audio-ssl.itunes.apple.com")  # nothing downloaded
  for r in wrong:
    m = spotify.similarity("Sabrina Carpenter", "Espresso", 175459, r["artistName"],
                           r["trackName"], r["trackTimeMillis"])
    assert not spotify.accept(m)


# -- album versions, resume -------------------------------------------------------------------

def test_album_versions_give_several_clips_of_one_song(env):
  isrc = "USAT22400001"
  single, album, deluxe, compilation = tid(1), tid(2), tid(3), tid(4)
  env.catalog([
      sp_track(single, isrc=isrc, preview="https://p.scdn.co/mp3-preview/single", album="S"),
      sp_track(album, isrc=isrc, preview="https://p.scdn.co/mp3-preview/album", album="A"),
      sp_track(deluxe, isrc=isrc, album="Deluxe"),
      sp_track(compilation, isrc=isrc, album="Hits 2024"),
  ])
  env.preview("https://p.scdn.co/mp3-preview/single", 440.0)
  env.preview("https://p.scdn.co/mp3-preview/album", 440.0)  # same bytes as the single
  dz = "https://cdnt-preview.dzcdn.net/v.mp3?hdnea=1"
  env.deezer(isrc, deezer_track(42, dz))
  env.preview(dz, 550.0)
  tracks, clips = env.resolve([single, album, deluxe, compilation])
  assert set(tracks["song_id"]) == {isrc}
  by = clips.set_index("track_id")
  assert by.loc[single, "clip_id"] == f"spotify:{single}"
  assert by.loc[album, "clip_id"] == f"spotify:{album}"
  assert by.loc[deluxe, "clip_id"] == "deezer:42"
  assert by.loc[compilation, ["clip_id", "status"]].tolist() == [f"none:{compilation}",
                                                                 "duplicate"]
  assert by.loc[compilation, "audio_path"] == by.loc[deluxe, "audio_path"]
  ok = clips[clips["status"] == "ok"]
  assert len(ok) == 3 and set(ok["song_id"]) == {isrc} and ok["clip_id"].is_unique
  # identical bytes are stored once
  assert by.loc[single, "audio_path"] == by.loc[album, "audio_path"]
  assert len(glob.glob(os.path.join(env.raw, "audio", "*", "*"))) == 2
  assert len(env.calls(DEEZER_URL.format(isrc))) == 1 and len(env.calls(dz)) == 1


def test_resume_skips_done_tracks(env):
  ids = [tid(i) for i in range(3)]
  isrcs = [f"USAT2240010{i}" for i in range(3)]
  env.catalog([sp_track(t, isrc=s) for t, s in zip(ids, isrcs)])
  for i, s in enumerate(isrcs):
    url = f"https://cdnt-preview.dzcdn.net/{i}.mp3"
    env.deezer(s, deezer_track(100 + i, url))
    env.preview(url, 300.0 + 100 * i)
  _, clips1 = env.resolve(ids)
  n1 = len(env.rsps.calls)
  assert n1 == 1 + 1 + 3 + 3  # token, one tracks() call, 3 lookups, 3 downloads
  _, clips2 = env.resolve(ids)
  assert len(env.rsps.calls) == n1  # nothing repeated: no token, no metadata, no lookups
  pd.testing.assert_frame_equal(clips1, clips2)
  # A new track: only its own requests.
  new = tid(9)
  env.catalog([sp_track(new, isrc="USAT22400199")])
  env.deezer("USAT22400199", DEEZER_NO_DATA)
  env.rsps.get("https://api.deezer.com/search/track", json={"data": []})
  env.rsps.get(ITUNES_URL, json={"results": []})
  _, clips3 = env.resolve(ids + [new])
  assert env.tracks_calls[-1] == [new]
  assert len(env.rsps.calls) == n1 + 1 + 1 + 3  # token, tracks(), deezer + search + itunes
  assert clips3.set_index("track_id").loc[new, "status"] == "no_preview"
  assert len(clips3) == 4
  # ... and no_preview is final: the next run asks nothing.
  env.resolve(ids + [new])
  assert len(env.rsps.calls) == n1 + 5


def test_reads_track_ids_from_charts_csv(env):
  ids = [tid(i) for i in range(4)]
  charts = pd.DataFrame([
      dict(region="sg", period="daily", date="2025-06-01", pos=p + 1, track_id=t, artist="A",
           title="T", featured="", artist_id="", streams=1e5, movement="NEW", on_chart=1.0,
           peak=p + 1.0, source="kworb_chart") for p, t in enumerate(ids + ids[:2] + [""])])
  os.makedirs(env.raw)
  tables.write(charts, os.path.join(env.raw, "charts.csv"), "charts")
  env.catalog([sp_track(t) for t in ids])
  tracks, _ = spotify.resolve(env.raw, providers=(), progress=False, limit=3, http=env.http())
  assert tracks["track_id"].tolist() == ids[:3]


# -- credentials ------------------------------------------------------------------------------

def test_credentials_never_written(env, caplog):
  caplog.set_level(logging.DEBUG)
  isrc = "USAT22400300"
  a, b = tid(1), tid(2)
  env.rsps.get(TRACKS_URL, status=429, headers={"Retry-After": "3"})
  env.catalog([sp_track(a, isrc=isrc), sp_track(b, isrc="", name="Other")])
  url = "https://cdnt-preview.dzcdn.net/s.mp3"
  env.deezer(isrc, deezer_track(1, url))
  env.preview(url)
  env.rsps.get(ITUNES_URL, status=403)
  http = env.http()
  tracks, clips = env.resolve([a, b], http=http)
  assert set(clips["status"]) == {"ok", "rate_limited"}
  # The secret was really used (Basic auth of the token request) ...
  basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
  token_call = [c for c in env.rsps.calls if c.request.url == TOKEN_URL]
  assert token_call and basic in token_call[0].request.headers["Authorization"]
  # ... and appears in nothing written: files (raw dir and cwd, where spotipy puts .cache),
  # logs (spotipy logs auth headers at DEBUG: redacted), reprs.
  needles = [SECRET, basic, "tok-123"]
  tmp = os.path.dirname(env.raw)
  files = [p for p in glob.glob(os.path.join(tmp, "**", "*"), recursive=True)
           if os.path.isfile(p)] + glob.glob(os.path.join(tmp, "**", ".*"), recursive=True)
  assert any(p.endswith("clips.csv") for p in files)
  assert not glob.glob(os.path.join(os.getcwd(), ".cache*"))
  for p in files:
    data = open(p, "rb").read()
    for n in needles:
      assert n.encode() not in data, (p, n)
  text = caplog.text + repr(http) + repr(http.__dict__.get("limits"))
  assert "Authorization" in caplog.text or "Bearer" in caplog.text  # spotipy did log headers
  for n in needles:
    assert n not in text, n


# -- CLI --------------------------------------------------------------------------------------

def test_cli_help_documents_every_option(capsys):
  with pytest.raises(SystemExit) as e:
    spotify.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  parser = spotify.build_parser()
  for action in parser._actions:
    assert action.help, action.option_strings
    for opt in action.option_strings:
      assert opt in out


def test_cli_reports_missing_credentials(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv("SPOTIPY_CLIENT_ID", raising=False)
  monkeypatch.delenv("SPOTIPY_CLIENT_SECRET", raising=False)
  assert spotify.main(["--raw", str(tmp_path), "--ids", tid(1), "--no-progress"]) == 2
  assert "SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET" in capsys.readouterr().err


# -- network failures are per item --------------------------------------------------------------

def test_broken_answers_fail_one_item_and_the_stage_goes_on(env, capsys):
  # The reported defect: ContentDecodingError / ChunkedEncodingError from one provider stopped
  # resolve for every remaining track.
  ids = [tid(1), tid(2), tid(3)]
  isrcs = ["USUM72400011", "USUM72400012", "USUM72400013"]
  env.catalog([sp_track(t, isrc=i) for t, i in zip(ids, isrcs)])
  env.rsps.get(DEEZER_URL.format(isrcs[0]),
               body=requests.exceptions.ContentDecodingError("Received response with content-"
                                                             "encoding: gzip, but failed to "
                                                             "decode it."))
  env.deezer(isrcs[1], deezer_track(12, "https://cdnt-preview.dzcdn.net/12.mp3"))
  env.rsps.get("https://cdnt-preview.dzcdn.net/12.mp3",
               body=requests.exceptions.ChunkedEncodingError("Connection broken: "
                                                             "InvalidChunkLength"))
  env.deezer(isrcs[2], deezer_track(13, "https://cdnt-preview.dzcdn.net/13.mp3"))
  env.preview("https://cdnt-preview.dzcdn.net/13.mp3")
  rc = spotify.main(["--raw", env.raw, "--ids", *ids, "--providers", "deezer", "--no-progress"])
  clips = tables.read(os.path.join(env.raw, "clips.csv"), "clips").set_index("track_id")
  assert clips.loc[ids, "status"].tolist() == ["error", "download_failed", "ok"]
  out, err = capsys.readouterr()
  assert rc == 1 and "2 item(s) failed" in err and "run the same command again" in err
  assert "clips.csv status:" in out and "http:" in out


def test_network_error_on_tracks_call_marks_the_batch_error(env):
  env.rsps.get(TRACKS_URL, body=requests.exceptions.ContentDecodingError("broken gzip"))
  tracks, _ = env.resolve([tid(1), tid(2)], providers=())
  assert tracks["metadata_status"].tolist() == ["error", "error"]
