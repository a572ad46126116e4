"""The tables data_prep passes between its stages, and the raw-data directory layout.

Every stage reads and writes plain CSV files in one raw-data directory, so a crawl, a preview
resolution and a build can run (and be resumed) separately, and the synthetic demo produces
exactly what the real crawl produces::

    RAW/
      charts.csv     chart observations (CHART_COLUMNS), one row per (region, period, date, track)
      tracks.csv     track metadata (TRACK_COLUMNS), one row per Spotify track id
      clips.csv      preview clips (CLIP_COLUMNS), one row per audio clip
      audio/         downloaded / synthesized audio files (clips.audio_path is relative to RAW)
      cache/         raw HTTP responses by URL hash (never refetched)
      truth.json     synthetic data only: the planted truth

`track_key` identifies a chart entity: the Spotify track id when known, else the normalised
"artist - title" (`song_key`); rows scraped from page text (the shared kworb CSV) have no ids.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from mpjax import atomic

# column -> (dtype, meaning). Strings are '' when unknown, floats NaN.
CHART_COLUMNS = {
    "region": ("str", "kworb region code: 'global' or lowercase ISO-3166 alpha-2"),
    "period": ("str", "'daily' or 'weekly'"),
    "date": ("str", "chart date YYYY-MM-DD (weekly: the date kworb prints for that week)"),
    "pos": ("int", "chart position, 1-based"),
    "track_id": ("str", "Spotify track id ('' when unknown)"),
    "artist": ("str", "lead artist as shown"),
    "title": ("str", "title as shown, without the artist"),
    "featured": ("str", "featured artists, '; '-joined ('' none)"),
    "artist_id": ("str", "Spotify id of the lead artist ('' unknown)"),
    "streams": ("float", "streams in that period (NaN unknown)"),
    "movement": ("str", "'NEW', 'RE', '=', '+N', '-N' ('' unknown)"),
    "on_chart": ("float", "days (daily) or weeks (weekly) on this chart so far (NaN unknown)"),
    "peak": ("float", "peak position so far (NaN unknown)"),
    "source": ("str", "'kworb_chart', 'kworb_track', 'kworb_csv' or 'synthetic'"),
}

TRACK_COLUMNS = {
    "track_id": ("str", "Spotify track id"),
    "isrc": ("str", "ISRC ('' unknown)"),
    "song_id": ("str", "group key for splits: ISRC, else normalised 'artist - title'"),
    "name": ("str", "track name"),
    "artists": ("str", "all artists, '; '-joined, lead first"),
    "album": ("str", "album name"),
    "release_date": ("str", "YYYY, YYYY-MM or YYYY-MM-DD as Spotify gives it"),
    "duration_ms": ("float", "track duration (NaN unknown)"),
    "metadata_status": ("str", "'ok' or why metadata is missing (e.g. 'rate_limited', 'not_found')"),
}

CLIP_COLUMNS = {
    "clip_id": ("str", "unique clip id: '{provider}:{provider's id}'"),
    "track_id": ("str", "Spotify track id (or the synthetic track id)"),
    "song_id": ("str", "as in tracks.csv"),
    "provider": ("str", "'spotify', 'deezer', 'itunes' or 'synthetic'"),
    "url": ("str", "where the audio came from (preview URL or 'synthetic://...')"),
    "match_score": ("float", "1.0 for id/ISRC matches, fuzzy artist+title score for searches"),
    "audio_path": ("str", "file under RAW/, '' when not downloaded"),
    "sha256": ("str", "content hash of the audio file ('' when not downloaded)"),
    "status": ("str", "'ok', or why the clip is unusable ('download_failed', 'corrupt', 'silent', "
                      "'too_short', 'no_preview', ...)"),
}

TABLES = {"charts": CHART_COLUMNS, "tracks": TRACK_COLUMNS, "clips": CLIP_COLUMNS}


def empty(kind: str) -> pd.DataFrame:
  return coerce(pd.DataFrame({c: [] for c in TABLES[kind]}), kind)


def coerce(df: pd.DataFrame, kind: str) -> pd.DataFrame:
  """Checks the columns of a table and gives them their dtypes. Extra columns are kept."""
  cols = TABLES[kind]
  missing = [c for c in cols if c not in df.columns]
  if missing:
    raise ValueError(f"{kind} table: missing column(s) {missing}; expected {list(cols)}")
  df = df.copy()
  for c, (dtype, _) in cols.items():
    if dtype == "str":
      df[c] = df[c].fillna("").astype(str)
    elif dtype == "int":
      if df[c].isna().any():
        raise ValueError(f"{kind} table: column {c!r} has missing values in rows "
                         f"{df.index[df[c].isna()].tolist()[:5]}")
      df[c] = df[c].astype(np.int64)
    else:
      df[c] = pd.to_numeric(df[c], errors="raise").astype(np.float64)
  return df


def read(path: str, kind: str) -> pd.DataFrame:
  try:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
  except FileNotFoundError:
    raise FileNotFoundError(f"{kind} table not found: {path}") from None
  try:
    return coerce(df, kind)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def write(df: pd.DataFrame, path: str, kind: str):
  """Writes atomically (temp file + rename): a crash never leaves a half-written table."""
  df = coerce(df, kind)
  with atomic.replacing(path, "w", encoding="utf-8", newline="") as f:
    df.to_csv(f, index=False)


_FEAT = re.compile(r"\s*[\(\[](feat\.?|ft\.?|with|w/)\s[^\)\]]*[\)\]]", re.I)
_SUFFIX = re.compile(r"\s+-\s+(.*(remaster|version|edit|mix|live|mono|stereo).*)$", re.I)


def normalise(text: str) -> str:
  """Lowercase, Latin accents and punctuation removed, whitespace collapsed (CJK/Thai/Hangul kept)."""
  # Strip only Latin-style diacritics (U+0300-U+036F), then recompose: Thai/Devanagari vowel
  # and tone marks are combining characters too, and Hangul decomposes under NFKD.
  text = unicodedata.normalize("NFKD", text)
  text = "".join(ch for ch in text if not 0x300 <= ord(ch) <= 0x36F)
  text = unicodedata.normalize("NFKC", text)
  # Letters, digits and (non-Latin) combining marks stay; punctuation and symbols become spaces.
  text = "".join(ch if unicodedata.category(ch)[0] in "LNM" else " " for ch in text.lower())
  return re.sub(r"\s+", " ", text).strip()


def song_key(artist: str, title: str) -> str:
  """Normalised 'artist - title': featured-artist parts and remaster/version suffixes removed.

  Used when no ISRC (or no track id) is known, to group the versions of one song.
  """
  title = _SUFFIX.sub("", _FEAT.sub("", title))
  return f"{normalise(artist)} - {normalise(title)}"


def track_keys(charts: pd.DataFrame) -> pd.Series:
  """track_id when known, else song_key(artist, title), per chart row."""
  keys = [tid if tid else song_key(a, t)
          for tid, a, t in zip(charts["track_id"], charts["artist"], charts["title"])]
  return pd.Series(keys, index=charts.index, name="track_key")
