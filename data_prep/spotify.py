"""Track metadata from the Spotify Web API, and 30-second previews from Spotify, Deezer or iTunes.

    RAW/charts.csv track ids
      -> Spotify tracks(), <= 50 ids a call      -> RAW/tracks.csv (TRACK_COLUMNS + preview_url)
      -> per track, the first provider that has a preview:
           spotify  the track's preview_url (null for apps in development mode since 2024-11)
           deezer   GET api.deezer.com/track/isrc:{ISRC}, else search/track?q=isrc:"{ISRC}"
           itunes   search by artist + title, best fuzzy match of artist + title + duration
      -> downloaded at once (Deezer preview URLs are signed and expire) by audio.download,
         checked by audio.check                  -> RAW/clips.csv + RAW/audio/

Credentials: ``SPOTIPY_CLIENT_ID`` / ``SPOTIPY_CLIENT_SECRET`` environment variables only. They are
never written anywhere: the token lives in memory (no spotipy ``.cache`` file), spotipy's debug
logs of Authorization headers are redacted, Spotify responses are not cached on disk (tracks.csv
is their record), and nothing here puts them in a message or repr.

Rate limits and retries: all requests share one :class:`data_prep.net.Http` (one session,
per-host sliding windows: Spotify 30 per 30 s, Deezer 50 per 5 s, iTunes 20 per 60 s).
spotipy is built with ``retries=0, status_retries=0`` and given that session, whose urllib3
``Retry`` retries 429/5xx/connection errors and honours ``Retry-After`` while one request's
waits stay under ``max_wait`` (default 60 s); past that, the 429 reaches spotipy with its
headers, and a ``Retry-After`` above the cap marks that batch (and every later batch, while the
host is blocked) ``rate_limited`` without sleeping. Deezer's quota errors (HTTP 200 with
``{"error": {"code": 4 or 700}}``) and iTunes's 403s back off the same way, then give up
(``rate_limited``). Any other network failure (a connection reset, a broken gzip body, a body
cut mid-chunk) marks that item ``error`` / ``download_failed`` and the stage goes on. Lookups
are cached under ``RAW/cache/{host}/`` by URL (signed preview URLs are not); a re-run repeats
no lookup.

Resuming: tracks whose metadata_status is 'ok', 'not_found' or 'invalid_id' are not fetched
again; tracks with a clip row whose status is final are not resolved again. Retried on the next
run: metadata 'rate_limited'/'error', clip rows 'rate_limited'/'download_failed'/'error'.

clips.csv rows (CLIP_COLUMNS), one per track with metadata:
  * a clip: clip_id '{provider}:{provider id}' (Spotify: the track id), url = the preview URL
    used, match_score 1.0 for id/ISRC matches, else the fuzzy score; status 'ok' or the audio
    problem ('corrupt', 'empty', 'too_short', 'silent') when no provider gave a usable clip.
    m4a clips that cannot be checked because ffmpeg is missing stay 'ok' (the build checks).
  * no clip of its own: clip_id 'none:{track_id}', status 'no_preview', 'rate_limited',
    'download_failed', 'error', or 'duplicate' -- the provider clip is already the clip of
    another track (album versions share an ISRC, so Deezer/iTunes give them the same clip);
    provider/url/audio_path/sha256 then name that clip.
Album versions with their own Spotify previews give several clips with the same song_id.

CLI::

    python -m data_prep.spotify --raw RAW [--providers spotify deezer itunes] [--limit N]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import difflib
import logging
import math
import os
import re
import sys

import pandas as pd
import requests
import urllib3

from data_prep import audio, net, tables
from data_prep.net import Http, HttpError, RateLimited

log = logging.getLogger(__name__)

PROVIDERS = ("spotify", "deezer", "itunes")
ENV_ID, ENV_SECRET = "SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET"

SPOTIFY_HOST = "api.spotify.com"
SPOTIFY_BATCH = 50  # tracks() takes at most 50 ids
DEEZER_TRACK = "https://api.deezer.com/track/isrc:{isrc}"
DEEZER_SEARCH = "https://api.deezer.com/search/track"
ITUNES_SEARCH = "https://itunes.apple.com/search"
LIMITS = {
    SPOTIFY_HOST: (30, 30.0),        # rolling 30 s window (exact quota unpublished)
    "api.deezer.com": (50, 5.0),     # ~50 requests / 5 s
    "itunes.apple.com": (20, 60.0),  # ~20 calls / minute
}
THROTTLE_403_HOSTS = ("itunes.apple.com",)
DEEZER_THROTTLE_CODES = (4, 700)  # "Quota limit exceeded", "Service busy"
DEEZER_NOT_FOUND = 800            # "no data"

MAX_WAIT = 60.0  # s one request may spend waiting between retries
MIN_SCORE = 0.8      # fuzzy matches below this are rejected
MIN_PART = 0.6       # ... and so are those whose artist or title alone is this dissimilar
DURATION_TOLERANCE_MS = 15000.0
ITUNES_LIMIT = 10
CHECKPOINT_EVERY = 20  # tracks between writes of clips.csv

META_DONE = ("ok", "not_found", "invalid_id")
CLIP_RETRY = ("rate_limited", "download_failed", "error")
_SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")
_ARTIST_SPLIT = re.compile(r"\s*(?:,|&|\+|/|\bx\b|\bfeat\.?|\bft\.?|\bwith\b|\band\b)\s*", re.I)


class CredentialsError(RuntimeError):
  pass


class ProviderError(RuntimeError):
  """A provider answered something unusable (not a throttle, not 'not found')."""


# ----------------------------------------------------------------------------------------------
# Logging hygiene: spotipy logs request headers at DEBUG, including the Basic auth header
# (base64 of client id:secret) of the token request.
# ----------------------------------------------------------------------------------------------

class _RedactAuth(logging.Filter):
  _AUTH = re.compile(r"((?:Basic|Bearer)\s+)[A-Za-z0-9+/=._~\-]+")

  def filter(self, record):
    try:
      msg = record.getMessage()
    except Exception:  # a broken log call is not ours to fix; drop nothing
      return True
    redacted = self._AUTH.sub(r"\1<redacted>", msg)
    if redacted != msg:
      record.msg, record.args = redacted, None
    return True


for _name in ("spotipy.oauth2", "spotipy.client"):
  _logger = logging.getLogger(_name)
  if not any(isinstance(f, _RedactAuth) for f in _logger.filters):
    _logger.addFilter(_RedactAuth())


# ----------------------------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------------------------

def make_http(raw_dir=None, **kwargs) -> Http:
  """The shared client: provider rate limits, iTunes 403 = throttled, cache under RAW/cache/."""
  kwargs.setdefault("limits", LIMITS)
  kwargs.setdefault("throttle_403_hosts", THROTTLE_403_HOSTS)
  kwargs.setdefault("max_wait", MAX_WAIT)
  cache_dir = os.path.join(raw_dir, "cache") if raw_dir else None
  return Http(cache_dir, **kwargs)


def spotify_client(http: Http):
  """spotipy client with client credentials from the environment, on `http`'s session."""
  import spotipy
  from spotipy.cache_handler import MemoryCacheHandler
  from spotipy.oauth2 import SpotifyClientCredentials

  missing = [v for v in (ENV_ID, ENV_SECRET) if not os.environ.get(v)]
  if missing:
    raise CredentialsError(
        f"Spotify credentials missing: set the environment variable(s) {' and '.join(missing)} "
        f"(client id and secret of an app from https://developer.spotify.com/dashboard)")
  auth = SpotifyClientCredentials(
      client_id=os.environ[ENV_ID], client_secret=os.environ[ENV_SECRET],
      requests_session=http.session, requests_timeout=http.timeout,
      cache_handler=MemoryCacheHandler())
  return spotipy.Spotify(auth_manager=auth, requests_session=http.session, retries=0,
                         status_retries=0, requests_timeout=http.timeout)


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------

def _normalise_isrc(isrc):
  return re.sub(r"[^A-Z0-9]", "", (isrc or "").upper())


def track_row(item, track_id=None) -> dict:
  """A Spotify track object -> a tracks.csv row (TRACK_COLUMNS + preview_url)."""
  artists = [a.get("name") or "" for a in item.get("artists") or []]
  name = item.get("name") or ""
  isrc = _normalise_isrc((item.get("external_ids") or {}).get("isrc"))
  album = item.get("album") or {}
  duration = item.get("duration_ms")
  return {
      "track_id": track_id or item.get("id") or "",
      "isrc": isrc,
      "song_id": isrc or tables.song_key(artists[0] if artists else "", name),
      "name": name,
      "artists": "; ".join(artists),
      "album": album.get("name") or "",
      "release_date": album.get("release_date") or "",
      "duration_ms": float(duration) if duration is not None else math.nan,
      "metadata_status": "ok",
      "preview_url": item.get("preview_url") or "",
  }


def _missing_row(track_id, status):
  row = {c: "" for c in tables.TRACK_COLUMNS}
  row.update(track_id=track_id, duration_ms=math.nan, metadata_status=status, preview_url="")
  return row


def fetch_batch(sp, ids, http: Http) -> list[dict]:
  """One tracks() call for <= 50 ids (retried by `http`'s session). Never raises for HTTP or
  network errors: the rows say why ('rate_limited', 'error', 'not_found')."""
  from spotipy import SpotifyException

  if len(ids) > SPOTIFY_BATCH:
    raise ValueError(f"at most {SPOTIFY_BATCH} ids per tracks() call, got {len(ids)}")
  if http.blocked(SPOTIFY_HOST) > 0:
    return [_missing_row(t, "rate_limited") for t in ids]
  http.throttle(SPOTIFY_HOST)
  try:
    result = sp.tracks(ids)
  except SpotifyException as e:
    if e.http_status == 429:
      r = http.gave_up_throttled(f"https://{SPOTIFY_HOST}/v1/tracks", 429, e.headers or {})
      log.warning("Spotify: %d tracks rate limited (%s)", len(ids), r.detail)
      return [_missing_row(t, "rate_limited") for t in ids]
    log.warning("Spotify tracks() failed for %d ids: HTTP %s %s", len(ids), e.http_status,
                e.reason or "")
    return [_missing_row(t, "error") for t in ids]
  except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
    log.warning("Spotify tracks() failed for %d ids: %s", len(ids), net.describe(e))
    return [_missing_row(t, "error") for t in ids]
  items = list((result or {}).get("tracks") or [])
  items += [None] * (len(ids) - len(items))
  return [track_row(item, tid) if item else _missing_row(tid, "not_found")
          for tid, item in zip(ids, items)]


def fetch_metadata(sp, track_ids, http: Http, *, on_batch=None) -> list[dict]:
  """tracks.csv rows for `track_ids`, in batches of <= 50 (invalid ids are not sent)."""
  rows = []
  valid = []
  for t in track_ids:
    if _SPOTIFY_ID.match(t):
      valid.append(t)
    else:
      rows.append(_missing_row(t, "invalid_id"))
  if rows and on_batch:
    on_batch(rows)
  for i in range(0, len(valid), SPOTIFY_BATCH):
    batch = fetch_batch(sp, valid[i:i + SPOTIFY_BATCH], http)
    rows.extend(batch)
    if on_batch:
      on_batch(batch)
  return rows


# ----------------------------------------------------------------------------------------------
# Fuzzy matching
# ----------------------------------------------------------------------------------------------

Match = collections.namedtuple("Match", "score artist title duration")


def _ratio(a, b):
  if not a or not b:
    return 0.0
  return 1.0 if a == b else difflib.SequenceMatcher(None, a, b).ratio()


def _key_parts(artist, title):
  """Normalised (artist, title) as in tables.song_key (feat. parts and version suffixes gone)."""
  artist_key, title_key = tables.song_key(artist, title).split(" - ", 1)
  return artist_key, title_key


def similarity(artists, title, duration_ms, cand_artist, cand_title, cand_duration_ms) -> Match:
  """How well a search result matches a track: weighted 0.35 artist + 0.45 title + 0.2
  duration (without both durations: artist and title only, rescaled). Strings are compared
  after tables.normalise (via song_key) with difflib's ratio; duration scores
  1 - |diff| / 15 s, floored at 0. `artists` may be '; '-joined (lead first)."""
  names = [a for a in (artists or "").split("; ") if a] or [""]
  lead, want_title = _key_parts(names[0], title)
  every = tables.normalise(" ".join(names))
  cand_lead = _ARTIST_SPLIT.split(cand_artist or "")[0]
  cand_lead_key, cand_title_key = _key_parts(cand_lead, cand_title or "")
  s_artist = max(_ratio(lead, cand_lead_key), _ratio(every, tables.normalise(cand_artist or "")))
  s_title = _ratio(want_title, cand_title_key)
  have_durations = all(d is not None and not (isinstance(d, float) and math.isnan(d)) and d > 0
                       for d in (duration_ms, cand_duration_ms))
  if have_durations:
    s_dur = max(0.0, 1.0 - abs(float(duration_ms) - float(cand_duration_ms))
                / DURATION_TOLERANCE_MS)
    score = 0.35 * s_artist + 0.45 * s_title + 0.2 * s_dur
  else:
    s_dur = math.nan
    score = (0.35 * s_artist + 0.45 * s_title) / 0.8
  return Match(round(score, 4), s_artist, s_title, s_dur)


def accept(match: Match, min_score=MIN_SCORE) -> bool:
  return match.score >= min_score and min(match.artist, match.title) >= MIN_PART


# ----------------------------------------------------------------------------------------------
# Preview providers. Each returns a Candidate or None ("has no preview"), raises RateLimited
# (throttled) or HttpError / ProviderError (broken answer).
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Candidate:
  provider: str
  pid: str
  url: str
  score: float
  from_cache: bool = False

  @property
  def clip_id(self):
    return f"{self.provider}:{self.pid}"


def spotify_preview(http, meta, *, refresh=False, **_):
  url = meta.get("preview_url") or ""
  return Candidate("spotify", meta["track_id"], url, 1.0) if url else None


def _deezer_throttled(body):
  return isinstance(body, dict) and (body.get("error") or {}).get("code") in DEEZER_THROTTLE_CODES


def _deezer_cacheable(body):
  err = body.get("error") if isinstance(body, dict) else None
  return not err or err.get("code") == DEEZER_NOT_FOUND


def _deezer_get(http, url, params=None, refresh=False):
  body, cached = http.get_json(url, params, refresh=refresh, retry_if=_deezer_throttled,
                               cacheable=_deezer_cacheable)
  if not isinstance(body, dict):
    raise ProviderError(f"Deezer: unexpected answer from {url}")
  err = body.get("error")
  if err and err.get("code") != DEEZER_NOT_FOUND:
    raise ProviderError(f"Deezer error {err.get('code')}: {err.get('message')} ({url})")
  return body, cached


def deezer_lookup(http, meta, *, refresh=False, min_score=MIN_SCORE, **_):
  """Deezer by ISRC: the track endpoint, else a search for the ISRC."""
  isrc = meta.get("isrc") or ""
  if not isrc:
    return None
  body, cached = _deezer_get(http, DEEZER_TRACK.format(isrc=isrc), refresh=refresh)
  if "error" not in body and body.get("id") and body.get("preview"):
    return Candidate("deezer", str(body["id"]), body["preview"], 1.0, cached)
  # Not found (or found without a preview): search. Results need not carry an isrc; those that
  # do not must also pass the fuzzy match (a search can ignore the isrc: filter).
  body, cached = _deezer_get(http, DEEZER_SEARCH, {"q": f'isrc:"{isrc}"'}, refresh=refresh)
  best = None
  for item in body.get("data") or []:
    if not (item.get("id") and item.get("preview")):
      continue
    if _normalise_isrc(item.get("isrc")) == isrc:
      score = 1.0
    else:
      m = similarity(meta.get("artists"), meta.get("name"), meta.get("duration_ms"),
                     (item.get("artist") or {}).get("name"), item.get("title"),
                     1000.0 * item["duration"] if item.get("duration") else None)
      if not accept(m, min_score):
        continue
      score = m.score
    if best is None or score > best.score:
      best = Candidate("deezer", str(item["id"]), item["preview"], score, cached)
  return best


def itunes_lookup(http, meta, *, refresh=False, min_score=MIN_SCORE, country="US",
                  limit=ITUNES_LIMIT, **_):
  """iTunes search by lead artist + title; the best fuzzy match above the thresholds."""
  names = [a for a in (meta.get("artists") or "").split("; ") if a]
  if not names or not meta.get("name"):
    return None
  artist_key, title_key = _key_parts(names[0], meta["name"])
  params = {"term": f"{artist_key} {title_key}", "entity": "song", "media": "music",
            "limit": int(limit), "country": country}
  body, cached = http.get_json(ITUNES_SEARCH, params, refresh=refresh)
  if not isinstance(body, dict) or not isinstance(body.get("results"), list):
    raise ProviderError("iTunes: unexpected answer (no results list)")
  best, best_match = None, None
  for r in body["results"]:
    if not (r.get("trackId") and r.get("previewUrl")) or r.get("kind", "song") != "song":
      continue
    m = similarity(meta.get("artists"), meta["name"], meta.get("duration_ms"),
                   r.get("artistName"), r.get("trackName"), r.get("trackTimeMillis"))
    if best_match is None or m.score > best_match.score:
      best_match = m
      best = Candidate("itunes", str(r["trackId"]), r["previewUrl"], m.score, cached)
  if best is not None and not accept(best_match, min_score):
    log.debug("iTunes: best match for %s %r scores %s: rejected", meta["track_id"],
              meta["name"], best_match)
    return None
  return best


LOOKUPS = {"spotify": spotify_preview, "deezer": deezer_lookup, "itunes": itunes_lookup}


# ----------------------------------------------------------------------------------------------
# Resolution of one track
# ----------------------------------------------------------------------------------------------

def _clip_row(meta, **kw):
  row = {"clip_id": f"none:{meta['track_id']}", "track_id": meta["track_id"],
         "song_id": meta["song_id"], "provider": "", "url": "", "match_score": math.nan,
         "audio_path": "", "sha256": "", "status": "no_preview"}
  row.update(kw)
  return row


def resolve_track(meta, http, raw_dir, *, providers=PROVIDERS, claimed=None, verify=True,
                  **opts) -> dict:
  """The clips.csv row for one track (see the module doc). `claimed`: clip_id -> row of the
  clips other tracks already have (for duplicates)."""
  claimed = claimed if claimed is not None else {}
  failures = set()
  bad_row = None
  for provider in providers:
    lookup = LOOKUPS[provider]
    try:
      cand = lookup(http, meta, **opts)
    except RateLimited as e:
      log.info("%s: %s rate limited: %s", meta["track_id"], provider, e)
      failures.add("rate_limited")
      continue
    except (HttpError, ProviderError) as e:
      log.warning("%s: %s lookup failed: %s", meta["track_id"], provider, e)
      failures.add("error")
      continue
    if cand is None:
      continue
    if cand.clip_id in claimed:
      other = claimed[cand.clip_id]
      same = dict(provider=provider, url=other["url"], match_score=cand.score,
                  audio_path=other["audio_path"], sha256=other["sha256"])
      if other["status"] == "ok":
        return _clip_row(meta, status="duplicate", **same)
      bad_row = bad_row or _clip_row(meta, status=other["status"], **same)
      continue
    try:
      path, sha, cand = _download(http, meta, cand, raw_dir, lookup, opts)
    except RateLimited as e:
      log.info("%s: %s preview download rate limited: %s", meta["track_id"], provider, e)
      failures.add("rate_limited")
      continue
    except audio.DownloadError as e:
      log.warning("%s: %s", meta["track_id"], e)
      failures.add("download_failed")
      continue
    status = "ok"
    if verify:
      _, status = audio.check(os.path.join(raw_dir, path))
      if status == "no_decoder":  # usable once ffmpeg is installed; the build checks again
        status = "ok"
    row = _clip_row(meta, clip_id=cand.clip_id, provider=provider, url=cand.url,
                    match_score=cand.score, audio_path=path, sha256=sha, status=status)
    if status == "ok":
      return row
    log.info("%s: %s clip unusable (%s)", meta["track_id"], provider, status)
    bad_row = bad_row or row
  for status in CLIP_RETRY:  # something may work next time: leave it retryable
    if status in failures:
      return _clip_row(meta, status=status)
  return bad_row or _clip_row(meta, status="no_preview")


def _download(http, meta, cand, raw_dir, lookup, opts):
  """Downloads a candidate's preview at once. A preview URL from a cached lookup may have
  expired (Deezer signs them): on failure, look up again (uncached) and retry once."""
  try:
    path, sha = audio.download(cand.url, raw_dir, http)
    return path, sha, cand
  except audio.DownloadError:
    if not cand.from_cache:
      raise
    fresh = lookup(http, meta, refresh=True, **opts)
    if fresh is None or fresh.url == cand.url:
      raise
    log.info("%s: cached %s preview URL failed; fetched a fresh one", meta["track_id"],
             cand.provider)
    path, sha = audio.download(fresh.url, raw_dir, http)
    return path, sha, fresh


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

def chart_track_ids(raw_dir) -> list[str]:
  """Distinct non-empty track ids of RAW/charts.csv, in order of first appearance."""
  path = os.path.join(raw_dir, "charts.csv")
  try:
    df = pd.read_csv(path, usecols=["track_id"], dtype=str, keep_default_na=False)
  except FileNotFoundError:
    raise FileNotFoundError(f"charts table not found: {path} (crawl charts first, or pass "
                            f"track ids)") from None
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return list(dict.fromkeys(t.strip() for t in df["track_id"] if t.strip()))


def _read_table(path, kind):
  if not os.path.exists(path):
    return tables.empty(kind)
  return tables.read(path, kind)


def _rows_df(rows, kind):
  rows = list(rows)
  df = pd.DataFrame(rows) if rows else tables.empty(kind)
  if kind == "tracks" and "preview_url" not in df.columns:
    df["preview_url"] = ""
  return df


def resolve(raw_dir, track_ids=None, *, providers=PROVIDERS, progress=True, limit=None,
            http=None, sp=None, min_score=MIN_SCORE, itunes_country="US", verify=True,
            checkpoint_every=CHECKPOINT_EVERY):
  """Metadata -> RAW/tracks.csv, previews -> RAW/clips.csv + RAW/audio/. Resumable.

  track_ids: default the ids in RAW/charts.csv; limit: only the first N of them.
  providers: preview sources in order of preference (subset of PROVIDERS).
  http / sp: a net.Http (default make_http(raw_dir)) and a spotipy client (default from the
    environment, only created when some metadata is missing).
  Returns (tracks, clips) DataFrames as written.
  """
  from tqdm.auto import tqdm

  providers = tuple(providers)
  unknown = [p for p in providers if p not in PROVIDERS]
  if unknown:
    raise ValueError(f"unknown provider(s) {unknown}; choose from {PROVIDERS}")
  os.makedirs(raw_dir, exist_ok=True)
  http = http if http is not None else make_http(raw_dir)
  ids = list(dict.fromkeys(track_ids)) if track_ids is not None else chart_track_ids(raw_dir)
  if limit is not None:
    ids = ids[:limit]
  tracks_path = os.path.join(raw_dir, "tracks.csv")
  clips_path = os.path.join(raw_dir, "clips.csv")

  # -- metadata --------------------------------------------------------------------------------
  old = _read_table(tracks_path, "tracks")
  if "preview_url" not in old.columns:
    old["preview_url"] = ""
  old["preview_url"] = old["preview_url"].fillna("").astype(str)
  track_rows = {r["track_id"]: r for r in old.to_dict("records")}
  todo = [t for t in ids if track_rows.get(t, {}).get("metadata_status") not in META_DONE]

  def save_tracks():
    tables.write(_rows_df(track_rows.values(), "tracks"), tracks_path, "tracks")

  if todo:
    sp = sp if sp is not None else spotify_client(http)
    with tqdm(total=len(todo), desc="spotify metadata", unit="track", disable=not progress) as bar:
      def on_batch(rows):
        for r in rows:
          track_rows[r["track_id"]] = r
        save_tracks()
        bar.update(len(rows))
      fetch_metadata(sp, todo, http, on_batch=on_batch)
  elif not os.path.exists(tracks_path):
    save_tracks()

  # -- previews --------------------------------------------------------------------------------
  clips = _read_table(clips_path, "clips")
  clip_rows = clips.to_dict("records")
  done = {r["track_id"] for r in clip_rows if r["status"] not in CLIP_RETRY}
  pending = [track_rows[t] for t in ids
             if t in track_rows and track_rows[t]["metadata_status"] == "ok" and t not in done]
  pending_ids = {m["track_id"] for m in pending}
  clip_rows = [r for r in clip_rows if r["track_id"] not in pending_ids]
  claimed = {r["clip_id"]: r for r in clip_rows if not r["clip_id"].startswith("none:")}
  opts = dict(min_score=min_score, country=itunes_country)

  def save_clips():
    tables.write(_rows_df(clip_rows, "clips"), clips_path, "clips")

  counts = collections.Counter()
  try:
    with tqdm(total=len(pending), desc="previews", unit="track", disable=not progress) as bar:
      for i, meta in enumerate(pending):
        row = resolve_track(meta, http, raw_dir, providers=providers, claimed=claimed,
                            verify=verify, **opts)
        clip_rows.append(row)
        if not row["clip_id"].startswith("none:"):
          claimed[row["clip_id"]] = row
        counts[row["status"] if row["status"] != "ok" else row["provider"]] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update(1)
        if (i + 1) % checkpoint_every == 0:
          save_clips()
  finally:
    save_clips()
  return _read_table(tracks_path, "tracks"), _read_table(clips_path, "clips")


def summary(tracks, clips, http: Http | None = None) -> str:
  lines = ["tracks.csv metadata_status: " + _counts(tracks["metadata_status"]),
           "clips.csv status: " + _counts(clips["status"]),
           "ok clips by provider: " + _counts(clips.loc[clips["status"] == "ok", "provider"])]
  if http is not None:
    st = http.stats
    lines.append(f"http: {st['requests']} requests, {st['cache_hit']} answered from the cache, "
                 f"{st['retries']} retries ({st['wait_s']:.0f} s waited), {st['failed']} "
                 f"requests failed for good")
  return "\n".join(lines)


def failed(tracks, clips) -> int:
  """Items that failed in a way the next run retries (metadata 'rate_limited'/'error', clip
  rows in CLIP_RETRY)."""
  return int(tracks["metadata_status"].isin(["rate_limited", "error"]).sum()
             + clips["status"].isin(CLIP_RETRY).sum())


def _counts(series):
  c = series.value_counts()
  return ", ".join(f"{k} {v}" for k, v in c.items()) or "(none)"


def build_parser():
  p = argparse.ArgumentParser(
      prog="python -m data_prep.spotify",
      description="Fetch Spotify metadata for charted tracks (RAW/charts.csv) and resolve + "
                  "download their 30 s previews (Spotify, else Deezer by ISRC, else iTunes "
                  "search). Writes RAW/tracks.csv, RAW/clips.csv, RAW/audio/. Resumable. "
                  f"Needs {ENV_ID} and {ENV_SECRET} in the environment.")
  p.add_argument("--raw", required=True, metavar="DIR",
                 help="raw-data directory holding charts.csv; outputs are written there")
  p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                 metavar="NAME",
                 help=f"preview sources, in order of preference, from {', '.join(PROVIDERS)} "
                      f"(default: all, in that order)")
  p.add_argument("--limit", type=int, default=None, metavar="N",
                 help="only the first N track ids of charts.csv (for a trial run)")
  p.add_argument("--ids", nargs="+", default=None, metavar="TRACK_ID",
                 help="resolve these Spotify track ids instead of those in charts.csv")
  p.add_argument("--itunes-country", default="US", metavar="CC",
                 help="iTunes store to search, ISO-3166 alpha-2 (default: US)")
  p.add_argument("--min-score", type=float, default=MIN_SCORE, metavar="S",
                 help=f"lowest fuzzy artist+title+duration score accepted (default: {MIN_SCORE})")
  p.add_argument("--max-wait", type=float, default=MAX_WAIT, metavar="SECONDS",
                 help="most seconds one request may wait between its retries (Retry-After and "
                      "back-off together); a server asking for more marks the item "
                      f"rate_limited for a later run (default: {MAX_WAIT:g})")
  p.add_argument("--no-verify", action="store_true",
                 help="do not decode downloaded previews to check them (the build checks anyway)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("-v", "--verbose", action="store_true", help="log every track's resolution")
  return p


def main(argv=None):
  from spotipy.oauth2 import SpotifyOauthError

  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  http = make_http(args.raw, max_wait=args.max_wait)
  try:
    tracks, clips = resolve(
        args.raw, args.ids, providers=args.providers, progress=not args.no_progress,
        limit=args.limit, http=http,
        min_score=args.min_score, itunes_country=args.itunes_country, verify=not args.no_verify)
  except (CredentialsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except SpotifyOauthError as e:  # its message names the problem, never the secret
    print(f"error: Spotify refused the client credentials ({e})", file=sys.stderr)
    return 2
  print(summary(tracks, clips, http))
  n_failed = failed(tracks, clips)
  if n_failed:
    print(f"{n_failed} item(s) failed (rate limited, network or provider errors; the warnings "
          f"above say which): run the same command again to retry them", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
