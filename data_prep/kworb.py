"""kworb.net: fetch and parse Spotify chart pages and per-track chart histories.

kworb mirrors the Spotify charts (facts in the project's KWORB.md). Two kinds of page matter:

- country chart pages (`country/{cc}_daily.html`, `{cc}_weekly.html`) hold only the LATEST chart;
  kworb keeps no archive, so daily history older than ~35 days exists only in our own snapshots.
  They are the only place the Spotify track id appears (in the title link).
- per-track pages (`track/{id}.html`) hold the track's whole weekly history per country and the
  last ~35 days of daily history; 404 means the track never charted anywhere.

Parsers are pure functions over page text (stdlib `html.parser`, no extra dependencies) that
check the layout and raise `KworbLayoutError` naming the URL and the missing piece: a silently
shifted column would poison every target downstream. `Fetcher` is a polite, retrying HTTP
client with a disk cache, so a crash or a re-run never fetches a page twice. `crawl` ties them
together and is idempotent: kill it anywhere, run it again, and `RAW/charts.csv` ends up the
same as after one uninterrupted run.

    python -m data_prep.kworb crawl --regions us,gb,global --raw RAW
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import email.utils
import hashlib
import html.parser
import itertools
import json
import logging
import math
import os
import re
import sys
import tempfile
import time

import pandas as pd
import requests

from data_prep import tables

log = logging.getLogger(__name__)

BASE_URL = "https://kworb.net/spotify"
USER_AGENT = ("mpjax-data-prep/0.1 (mpjax research project: music popularity from audio; "
              "polite crawler, ~1 request/s, pages cached)")

# Regions with kworb country pages (KWORB.md); `--regions all` crawls these.
REGIONS = (
    "global ar au at be bo br bg ca cl co cr cy cz dk do ec eg sv ee fi fr de gr gt hn hk hu is "
    "in id ie il it jp lv lt lu my mx ma nl nz ni no pa py pe ph pl pt ro ru sa sg sk za kr es "
    "se ch tw th tr ua ae gb us uy ve vn").split()

PERIODS = ("daily", "weekly")

# Chart-page columns kept beyond tables.CHART_COLUMNS (NaN for rows from track pages, and the
# 7-day columns NaN for weekly charts, so daily and weekly rows share one schema).
CHART_EXTRA_COLUMNS = {
    "peak_count": "days/weeks spent at the peak position, from '(x64)' (NaN when empty)",
    "streams_delta": "change in streams from the previous period ('Streams+')",
    "streams_7day": "streams over the last 7 days ('7Day', daily charts only)",
    "streams_7day_delta": "change of the 7-day streams ('7Day+', daily charts only)",
    "total": "total streams on this chart so far ('Total')",
}

# The exact header rows KWORB.md documents; anything else is a layout change.
CHART_HEADERS = {
    "daily": ["Pos", "P+", "Artist and Title", "Days", "Pk", "(x?)", "Streams", "Streams+",
              "7Day", "7Day+", "Total"],
    "weekly": ["Pos", "P+", "Artist and Title", "Wks", "Pk", "(x?)", "Streams", "Streams+",
               "Total"],
}
SUMMARY_HEADERS = ["Total", "As lead", "Solo", "As feature"]
SUMMARY_ROWS = ["Streams", "Daily", "Tracks"]
SONG_HEADERS = ["Song Title", "Streams", "Daily"]

_CHART_URL = re.compile(r"/country/(global|[a-z]{2})_(daily|weekly)\.html$")
_TRACK_URL = re.compile(r"/track/([A-Za-z0-9]+)\.html$")
_ARTIST_SONGS_URL = re.compile(r"/artist/([A-Za-z0-9]+)_songs\.html$")
_TRACK_LINK = re.compile(r"(?:^|/)track/([A-Za-z0-9]+)(?:\.html)?(?:[?#].*)?$")
_ARTIST_LINK = re.compile(r"(?:^|/)artist/([A-Za-z0-9]+)\.html$")
_SLASH_DATE = re.compile(r"(\d{4})/(\d{2})/(\d{2})")
_MOVEMENT = re.compile(r"NEW|RE|=|[+-]\d+")
_MISSING = {"", "-", "--", "\u2014", "\u2013"}


class KworbLayoutError(ValueError):
  """A kworb page does not look like KWORB.md says; `url` and `problem` say where and what."""

  def __init__(self, url: str, problem: str):
    super().__init__(f"{url}: unexpected kworb page layout: {problem}")
    self.url = url
    self.problem = problem


def chart_url(region: str, period: str) -> str:
  return f"{BASE_URL}/country/{region}_{period}.html"


def track_url(track_id: str) -> str:
  return f"{BASE_URL}/track/{track_id}.html"


def artist_songs_url(artist_id: str) -> str:
  return f"{BASE_URL}/artist/{artist_id}_songs.html"


# --------------------------------------------------------------------------------------------
# HTML: a tiny table extractor. Keeps, per cell, the text pieces in order with the link each
# piece sits in, which is all the parsers need (artist vs title vs featured links).


@dataclasses.dataclass
class _Cell:
  tag: str = "td"
  parts: list = dataclasses.field(default_factory=list)  # (text, link index or None, href)

  @property
  def text(self) -> str:
    return _squash("".join(p[0] for p in self.parts))

  def segments(self):
    """[(text, href or None)]: consecutive pieces merged, one segment per link."""
    out = []
    for (link, href), group in itertools.groupby(self.parts, key=lambda p: (p[1], p[2])):
      out.append(("".join(p[0] for p in group), href))
    return out

  def links(self):
    return [(href, _squash(text)) for text, href in self.segments() if href is not None]


@dataclasses.dataclass
class _Table:
  attrs: dict
  rows: list = dataclasses.field(default_factory=list)
  cell: _Cell | None = None


class _Document(html.parser.HTMLParser):
  """Tables (nested ones too, in order of appearance), <title>, headings and all page text.

  Tolerates the omitted end tags HTML allows (</td>, </tr>): a new cell or row closes the open
  one, as browsers do.
  """

  def __init__(self, text: str):
    super().__init__(convert_charrefs=True)
    self.tables: list[_Table] = []
    self.title = ""
    self.headings: list[_Cell] = []
    self.text_parts: list[str] = []
    self._stack: list[_Table] = []
    self._links: list[tuple[int, str]] = []
    self._n_links = 0
    self._in_title = False
    self._heading: tuple[str, int, _Cell] | None = None  # (tag, depth, cell)
    self.feed(text)
    self.close()

  def handle_starttag(self, tag, attrs):
    attrs = {k: (v or "") for k, v in attrs}
    if self._heading is not None and tag == self._heading[0]:
      self._heading = (tag, self._heading[1] + 1, self._heading[2])
    if tag == "table":
      t = _Table(attrs)
      self.tables.append(t)
      self._stack.append(t)
    elif tag == "tr" and self._stack:
      t = self._stack[-1]
      t.cell = None
      t.rows.append([])
    elif tag in ("td", "th") and self._stack:
      t = self._stack[-1]
      if not t.rows:
        t.rows.append([])
      t.cell = _Cell(tag)
      t.rows[-1].append(t.cell)
    elif tag == "a":
      self._n_links += 1
      self._links.append((self._n_links, attrs.get("href", "")))
    elif tag == "br":
      self.handle_data(" ")
    elif tag == "title":
      self._in_title = True
    is_heading = tag in ("h1", "h2") or "pagetitle" in attrs.get("class", "").split()
    if self._heading is None and is_heading:
      self._heading = (tag, 1, _Cell(tag))
      self.headings.append(self._heading[2])

  def handle_endtag(self, tag):
    if tag == "table":
      if self._stack:
        self._stack.pop()
    elif tag in ("td", "th", "tr") and self._stack:
      self._stack[-1].cell = None
    elif tag == "a":
      if self._links:
        self._links.pop()
    elif tag == "title":
      self._in_title = False
    if self._heading is not None and tag == self._heading[0]:
      depth = self._heading[1] - 1
      self._heading = None if depth == 0 else (tag, depth, self._heading[2])

  def handle_data(self, data):
    self.text_parts.append(data)
    if self._in_title:
      self.title += data
    link, href = self._links[-1] if self._links else (None, None)
    if self._stack and self._stack[-1].cell is not None:
      self._stack[-1].cell.parts.append((data, link, href))
    if self._heading is not None:
      self._heading[2].parts.append((data, link, href))

  @property
  def text(self) -> str:
    return _squash("".join(self.text_parts))


def _squash(text: str) -> str:
  return " ".join(text.split())


def _header(table: _Table) -> list[str]:
  return [c.text for c in table.rows[0]] if table.rows else []


def _check_header(url: str, what: str, found: list[str], expected: list[str]):
  """Raises naming the first column whose header differs, and both header rows."""
  if [h.lower() for h in found] == [h.lower() for h in expected]:
    return
  for i, (e, f) in enumerate(itertools.zip_longest(expected, found)):
    if (e or "").lower() != (f or "").lower():
      raise KworbLayoutError(
          url, f"{what}: column {i + 1} header expected {e!r}, found {f!r} "
               f"(expected {' | '.join(expected)}; found {' | '.join(found) or 'no header'})")


def _data_rows(table: _Table):
  """(row number, cells) for the rows after the header, skipping empty and repeated-header rows."""
  for i, row in enumerate(table.rows[1:], start=2):
    if not row or all(c.tag == "th" for c in row):
      continue
    yield i, row


def _number(text: str, url: str, where: str) -> float:
  """'1,234' / '+84,270' / '-116,663' -> float; '-', '--' or empty -> NaN."""
  t = text.replace(",", "").replace("\u2009", "").replace(" ", "").strip()
  if t in _MISSING:
    return math.nan
  if re.fullmatch(r"[+-]?\d+(\.\d+)?", t):
    return float(t)
  raise KworbLayoutError(url, f"{where}: expected a number, found {text!r}")


def _slash_date(text: str) -> str | None:
  """First 'YYYY/MM/DD' in text as 'YYYY-MM-DD' (None when there is none)."""
  m = _SLASH_DATE.search(text)
  if not m:
    return None
  try:
    return dt.date(*map(int, m.groups())).isoformat()
  except ValueError:
    return None


def _frame(rows: list[dict], extras: bool = True) -> pd.DataFrame:
  cols = list(tables.CHART_COLUMNS) + (list(CHART_EXTRA_COLUMNS) if extras else [])
  df = pd.DataFrame(rows, columns=cols)
  df = tables.coerce(df, "charts")
  for c in CHART_EXTRA_COLUMNS:
    if c in df:
      df[c] = pd.to_numeric(df[c]).astype("float64")
  return df


# --------------------------------------------------------------------------------------------
# Parsers


def _artist_title(cell: _Cell, url: str, where: str) -> dict:
  """Splits 'Artist and Title': `<a artist>Lead</a> - <a track>Title</a> (w/ <a>X</a>, ...)`.

  The track link is the only source of the Spotify track id. Without it (never seen on kworb,
  but page text has no ids either) the text is split at the first ' - ' and track_id is ''.
  """
  segs = cell.segments()
  idx = next((i for i, (_, href) in enumerate(segs) if href and _TRACK_LINK.search(href)), None)
  if idx is not None:
    lead, tail = segs[:idx], segs[idx + 1:]
    artist = re.sub(r"\s*-\s*$", "", _squash("".join(t for t, _ in lead)))
    title = _squash(segs[idx][0])
    track_id = _TRACK_LINK.search(segs[idx][1]).group(1)
    tail_text = _squash("".join(t for t, _ in tail))
  else:
    text = cell.text
    m = re.match(r"(.*?) - (.*)$", text)
    if not m:
      raise KworbLayoutError(url, f"{where}: 'Artist and Title' cell has no track link and no "
                                  f"'Artist - Title' text: {text!r}")
    artist, rest = m.group(1), m.group(2)
    w = re.search(r"\s*\(w/ .*\)\s*$", rest)
    title, tail_text = (rest[:w.start()], rest[w.start():]) if w else (rest, "")
    lead = [(t, h) for t, h in segs if _squash(t) == artist]  # the lead artist's link, if any
    tail = []  # featured artists come from the text
    track_id = ""
  if not artist or not title:
    raise KworbLayoutError(url, f"{where}: cannot split artist and title in {cell.text!r}")
  lead_ids = [_ARTIST_LINK.search(h).group(1) for _, h in lead if h and _ARTIST_LINK.search(h)]
  featured = [_squash(t) for t, h in tail if h and _ARTIST_LINK.search(h)]
  if not featured:
    w = re.search(r"\(w/ (.*)\)", tail_text)
    featured = [f.strip() for f in w.group(1).split(",") if f.strip()] if w else []
  return dict(artist=artist, title=title, track_id=track_id,
              artist_id=lead_ids[0] if lead_ids else "", featured="; ".join(featured))


def parse_chart_page(html: str, url: str) -> tuple[str, pd.DataFrame]:
  """A country daily/weekly chart page -> (chart date 'YYYY-MM-DD', rows).

  Rows have tables.CHART_COLUMNS (source 'kworb_chart') plus CHART_EXTRA_COLUMNS. Region and
  period come from the URL (`.../country/{cc}_{daily|weekly}.html`), the date from the page
  (`... - YYYY/MM/DD` in the title or heading).
  """
  m = _CHART_URL.search(url)
  if not m:
    raise ValueError(f"{url}: not a kworb chart page URL (expected .../country/{{cc}}_daily.html "
                     f"or _weekly.html)")
  region, period = m.groups()
  doc = _Document(html)
  table_id = f"spotify{period}"
  found = [t for t in doc.tables if t.attrs.get("id") == table_id]
  if not found:
    ids = [t.attrs.get("id", "(no id)") for t in doc.tables]
    raise KworbLayoutError(url, f"no <table id={table_id!r}>; tables found: {ids or 'none'}")
  table = found[0]
  expected = CHART_HEADERS[period]
  _check_header(url, f"table#{table_id}", _header(table), expected)

  chart_date = _slash_date(doc.title) or next(
      (d for d in (_slash_date(h.text) for h in doc.headings) if d), None)
  if chart_date is None:
    raise KworbLayoutError(url, f"no chart date YYYY/MM/DD in the <title> ({doc.title.strip()!r}) "
                                f"or the page heading")

  rows = []
  for i, row in _data_rows(table):
    where = f"table#{table_id} row {i}"
    if len(row) != len(expected):
      raise KworbLayoutError(url, f"{where}: expected {len(expected)} cells, found {len(row)}: "
                                  f"{[c.text for c in row]}")
    cells = dict(zip(expected, row))
    num = lambda col: _number(cells[col].text, url, f"{where} column {col!r}")  # noqa: E731
    pos = num("Pos")
    if math.isnan(pos):
      raise KworbLayoutError(url, f"{where}: no position in column 'Pos'")
    movement = cells["P+"].text
    if movement and not _MOVEMENT.fullmatch(movement):
      raise KworbLayoutError(url, f"{where} column 'P+': expected NEW, RE, =, +N or -N, "
                                  f"found {movement!r}")
    peak_count = cells["(x?)"].text
    if peak_count:
      pc = re.fullmatch(r"\(x(\d+)\)", peak_count)
      if not pc:
        raise KworbLayoutError(url, f"{where} column '(x?)': expected '(xN)' or empty, "
                                    f"found {peak_count!r}")
      peak_count = float(pc.group(1))
    else:
      peak_count = math.nan
    rows.append(dict(
        region=region, period=period, date=chart_date, pos=int(pos),
        **_artist_title(cells["Artist and Title"], url, where),
        streams=num("Streams"), movement=movement,
        on_chart=num("Days" if period == "daily" else "Wks"), peak=num("Pk"),
        source="kworb_chart", peak_count=peak_count, streams_delta=num("Streams+"),
        streams_7day=num("7Day") if period == "daily" else math.nan,
        streams_7day_delta=num("7Day+") if period == "daily" else math.nan,
        total=num("Total")))
  return chart_date, _frame(rows)


def _heading_artist_title(doc: _Document) -> tuple[str, str, str]:
  """(artist, title, artist_id) from the page heading 'Artist - Title' ('' where absent)."""
  if not doc.headings:
    return "", "", ""
  segs = doc.headings[0].segments()
  artist_idx = [i for i, (_, h) in enumerate(segs) if h and _ARTIST_LINK.search(h)]
  if artist_idx:
    i = artist_idx[0]
    artist = _squash(segs[i][0])
    title = re.sub(r"^\s*-\s*", "", _squash("".join(t for t, _ in segs[i + 1:])))
    return artist, title, _ARTIST_LINK.search(segs[i][1]).group(1)
  m = re.match(r"(.*?) - (.*)$", doc.headings[0].text)
  return (m.group(1), m.group(2), "") if m else ("", "", "")


def parse_track_page(html: str, url: str) -> pd.DataFrame:
  """A per-track history page -> one row per (period, date, region) where the track charted.

  The first 'Date | Global | US | ...' table is the weekly history over the track's life, the
  second the daily one (~last 35 days). 'Total' and 'Peak' rows are skipped, '--' cells (off
  the chart) give no row. Rows have tables.CHART_COLUMNS (source 'kworb_track', movement,
  on_chart and peak unknown) plus CHART_EXTRA_COLUMNS (all NaN).
  """
  m = _TRACK_URL.search(url)
  if not m:
    raise ValueError(f"{url}: not a kworb track page URL (expected .../track/{{id}}.html)")
  track_id = m.group(1)
  doc = _Document(html)
  found = [t for t in doc.tables if _header(t)[:1] and _header(t)[0].lower() == "date"]
  if len(found) != 2:
    firsts = [(_header(t) or ["(empty)"])[0] for t in doc.tables]
    raise KworbLayoutError(
        url, f"expected 2 tables with header 'Date | Global | US | ...' (weekly, then daily), "
             f"found {len(found)} among {len(doc.tables)} table(s) whose first headers are "
             f"{firsts}")
  artist, title, artist_id = _heading_artist_title(doc)
  rows = []
  for period, table in zip(("weekly", "daily"), found):
    header = _header(table)
    regions = []
    for j, h in enumerate(header[1:], start=2):
      if not re.fullmatch(r"global|[a-z]{2}", h.lower()):
        raise KworbLayoutError(url, f"{period} table column {j} header: expected 'Global' or a "
                                    f"2-letter country code, found {h!r}")
      regions.append(h.lower())
    for i, row in _data_rows(table):
      where = f"{period} table row {i}"
      label = row[0].text
      if label.lower() in ("total", "peak"):
        continue
      date = _slash_date(label) if re.fullmatch(r"\d{4}/\d{2}/\d{2}", label) else None
      if date is None:
        raise KworbLayoutError(url, f"{where}: expected 'Total', 'Peak' or a date YYYY/MM/DD "
                                    f"in column 'Date', found {label!r}")
      if len(row) != len(header):
        raise KworbLayoutError(url, f"{where}: expected {len(header)} cells "
                                    f"({' | '.join(header)}), found {len(row)}")
      for region, cell in zip(regions, row[1:]):
        text = cell.text
        if text in _MISSING:
          continue
        c = re.fullmatch(r"(\d+)\s*(?:\(([\d,]+)\))?", text)
        if not c:
          raise KworbLayoutError(url, f"{where} column {region!r}: expected 'pos (streams)' or "
                                      f"'--', found {text!r}")
        rows.append(dict(
            region=region, period=period, date=date, pos=int(c.group(1)), track_id=track_id,
            artist=artist, title=title, featured="", artist_id=artist_id,
            streams=float(c.group(2).replace(",", "")) if c.group(2) else math.nan,
            movement="", on_chart=math.nan, peak=math.nan, source="kworb_track",
            **{k: math.nan for k in CHART_EXTRA_COLUMNS}))
  return _frame(rows)


def parse_artist_songs(html: str, url: str) -> tuple[dict, pd.DataFrame, str | None]:
  """An artist's `_songs` page -> (summary, songs, last updated 'YYYY-MM-DD' or None).

  summary: {'artist_id', 'streams'|'daily'|'tracks': {'total', 'as_lead', 'solo',
  'as_feature'}}; songs: DataFrame[title, track_id, streams, daily] ('' / NaN when absent).
  """
  m = _ARTIST_SONGS_URL.search(url)
  if not m:
    raise ValueError(f"{url}: not a kworb artist songs URL (expected .../artist/{{id}}_songs.html)")
  doc = _Document(html)
  headers = [_header(t) for t in doc.tables]
  lower = lambda hs: [h.lower() for h in hs]  # noqa: E731
  summary_t = next((t for t, h in zip(doc.tables, headers)
                    if lower(h[1:]) == lower(SUMMARY_HEADERS)), None)
  if summary_t is None:
    raise KworbLayoutError(url, f"no summary table with header ' | {' | '.join(SUMMARY_HEADERS)}'; "
                                f"table headers found: {headers or 'no tables'}")
  songs_t = next((t for t, h in zip(doc.tables, headers) if lower(h) == lower(SONG_HEADERS)), None)
  if songs_t is None:
    raise KworbLayoutError(url, f"no song table with header '{' | '.join(SONG_HEADERS)}'; "
                                f"table headers found: {headers}")
  keys = [h.lower().replace(" ", "_") for h in SUMMARY_HEADERS]
  summary = {"artist_id": m.group(1)}
  for i, row in _data_rows(summary_t):
    label = row[0].text
    if label.lower() not in lower(SUMMARY_ROWS):
      raise KworbLayoutError(url, f"summary table row {i}: expected one of {SUMMARY_ROWS}, "
                                  f"found {label!r}")
    if len(row) != len(SUMMARY_HEADERS) + 1:
      raise KworbLayoutError(url, f"summary table row {i} ({label}): expected "
                                  f"{len(SUMMARY_HEADERS) + 1} cells, found {len(row)}")
    summary[label.lower()] = {k: _number(c.text, url, f"summary {label}/{k}")
                              for k, c in zip(keys, row[1:])}
  missing = [r for r in SUMMARY_ROWS if r.lower() not in summary]
  if missing:
    raise KworbLayoutError(url, f"summary table: row(s) {missing} missing")
  songs = []
  for i, row in _data_rows(songs_t):
    if len(row) != len(SONG_HEADERS):
      raise KworbLayoutError(url, f"song table row {i}: expected {len(SONG_HEADERS)} cells, "
                                  f"found {len(row)}")
    links = [_TRACK_LINK.search(h) for h, _ in row[0].links()]
    links = [l for l in links if l]
    songs.append(dict(title=row[0].text, track_id=links[0].group(1) if links else "",
                      streams=_number(row[1].text, url, f"song table row {i} 'Streams'"),
                      daily=_number(row[2].text, url, f"song table row {i} 'Daily'")))
  songs = pd.DataFrame(songs, columns=["title", "track_id", "streams", "daily"])
  songs[["streams", "daily"]] = songs[["streams", "daily"]].astype("float64")
  m = re.search(r"Last updated:\s*(\d{4}/\d{2}/\d{2})", doc.text)
  return summary, songs, _slash_date(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# HTTP


@dataclasses.dataclass
class Page:
  """One fetched (or cached) page. `status` None: no HTTP answer (connection failures)."""
  url: str
  key: str
  status: int | None
  text: str
  fetched_at: str
  from_cache: bool
  reason: str = ""  # why it is not a usable page ('' when status is 200)

  @property
  def ok(self) -> bool:
    return self.status == 200

  @property
  def not_found(self) -> bool:
    return self.status == 404


def _atomic_write(path: str, data: bytes):
  """Temp file in the same directory + rename: readers never see half a file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _write_json(path: str, obj):
  _atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _retry_after(value: str | None) -> float | None:
  """Retry-After in seconds (delta-seconds or HTTP date); None when absent or unreadable."""
  if not value:
    return None
  value = value.strip()
  if re.fullmatch(r"\d+(\.\d+)?", value):
    return float(value)
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  if when.tzinfo is None:
    when = when.replace(tzinfo=dt.timezone.utc)
  return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


class Fetcher:
  """Polite HTTP GET with a disk cache of raw pages.

  - Cache: `{cache_dir}/{sha256(key)}.html` (body) + `.json` (key, url, status, fetched_at),
    written atomically; the key is the URL unless given (chart pages add the snapshot day).
    200 and 404 answers are cached (404 on a track page = never charted, never asked again);
    anything else is returned with a reason and asked again on the next call.
  - Politeness: at least `min_interval` seconds between request starts.
  - Retries: 429 and 5xx wait `Retry-After` when given (a value above `max_retry_after` gives
    up on the URL at once), else exponential back-off; connection errors back off too; after
    `max_retries` retries the URL is given up. Other statuses are not retried.
  - `sleep` and `clock` are injectable so tests run instantly and can check every wait.
  """

  def __init__(self, cache_dir: str, *, min_interval: float = 1.0, max_retries: int = 5,
               backoff: float = 2.0, max_backoff: float = 120.0, max_retry_after: float = 300.0,
               timeout: float = 30.0, user_agent: str = USER_AGENT,
               session: requests.Session | None = None, sleep=time.sleep, clock=time.monotonic):
    self.cache_dir = cache_dir
    self.min_interval = min_interval
    self.max_retries = max_retries
    self.backoff = backoff
    self.max_backoff = max_backoff
    self.max_retry_after = max_retry_after
    self.timeout = timeout
    self.session = session or requests.Session()
    self.session.headers["User-Agent"] = user_agent
    self.sleep = sleep
    self.clock = clock
    self.stats = collections.Counter()  # requests, retries, fetched, cached, not_found, failed
    self._last_start = None
    os.makedirs(cache_dir, exist_ok=True)

  def cache_path(self, key: str) -> str:
    """Path of the cached body; the metadata sits beside it with '.json'."""
    return os.path.join(self.cache_dir, hashlib.sha256(key.encode()).hexdigest() + ".html")

  def cached(self, key: str) -> Page | None:
    body_path = self.cache_path(key)
    meta_path = body_path[:-len(".html")] + ".json"
    try:
      with open(meta_path) as f:
        meta = json.load(f)
      text = ""
      if meta["status"] == 200:
        with open(body_path, "rb") as f:
          text = f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, ValueError, KeyError):
      return None
    if meta.get("key") != key:  # a hash collision would be astonishing; refuse it anyway
      return None
    return Page(meta["url"], key, meta["status"], text, meta["fetched_at"], True,
                meta.get("reason", ""))

  def get(self, url: str, *, key: str | None = None, refresh: bool = False) -> Page:
    """The page at `url`, from the cache under `key` (default: the URL) unless `refresh`."""
    key = key or url
    if not refresh:
      page = self.cached(key)
      if page is not None:
        self.stats["cached"] += 1
        return page
    status, body, reason = self._download(url)
    fetched_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if status in (200, 404):
      if status == 404:
        reason = "HTTP 404: not found (track pages: never charted)"
      self._store(key, url, status, body, fetched_at, reason)
      self.stats["fetched" if status == 200 else "not_found"] += 1
    else:
      self.stats["failed"] += 1
      log.warning("gave up on %s: %s", url, reason)
    text = body.decode("utf-8", errors="replace") if status == 200 else ""
    return Page(url, key, status, text, fetched_at, False, reason)

  def _store(self, key, url, status, body, fetched_at, reason):
    body_path = self.cache_path(key)
    if status == 200:
      _atomic_write(body_path, body)
    meta = dict(key=key, url=url, status=status, fetched_at=fetched_at, reason=reason,
                bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    _write_json(body_path[:-len(".html")] + ".json", meta)  # written last: marks the entry done

  def _wait_turn(self):
    if self._last_start is not None:
      wait = self.min_interval - (self.clock() - self._last_start)
      if wait > 0:
        self.sleep(wait)
    self._last_start = self.clock()

  def _backoff_s(self, attempt: int) -> float:
    return min(self.backoff * 2 ** attempt, self.max_backoff)

  def _download(self, url: str) -> tuple[int | None, bytes, str]:
    """(status, body, reason): 200/404 with the body, or the status/reason it gave up with."""
    for attempt in itertools.count():
      self._wait_turn()
      self.stats["requests"] += 1
      try:
        resp = self.session.get(url, timeout=self.timeout)
      except (requests.ConnectionError, requests.Timeout,
              requests.exceptions.ChunkedEncodingError) as e:
        if attempt >= self.max_retries:
          return None, b"", (f"connection error, gave up after {attempt + 1} attempts: "
                             f"{type(e).__name__}: {e}")
        wait = self._backoff_s(attempt)
      else:
        status = resp.status_code
        if status in (200, 404):
          return status, resp.content, ""
        if status != 429 and status < 500:
          return status, b"", f"HTTP {status}: not retried"
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        if retry_after is not None and retry_after > self.max_retry_after:
          return status, b"", (f"HTTP {status} with Retry-After {retry_after:g} s, above the cap "
                               f"max_retry_after={self.max_retry_after:g} s: gave up")
        if attempt >= self.max_retries:
          return status, b"", f"HTTP {status}, gave up after {attempt + 1} attempts"
        wait = retry_after if retry_after is not None else self._backoff_s(attempt)
      self.stats["retries"] += 1
      self.sleep(wait)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Crawl

_KEY = ["region", "period", "date", "source"]
_SORT = ["source", "region", "period", "date", "pos", "track_id", "artist", "title"]


def read_charts(path: str) -> pd.DataFrame:
  """charts.csv with CHART_EXTRA_COLUMNS as floats (empty table when the file is absent)."""
  if not os.path.exists(path):
    return _frame([])
  df = tables.read(path, "charts")
  for c in CHART_EXTRA_COLUMNS:
    if c in df:
      try:
        df[c] = pd.to_numeric(df[c]).astype("float64")
      except ValueError:  # another writer's column of the same name: keep it as it is
        pass
  return df


def merge_charts(charts: pd.DataFrame, new: list[pd.DataFrame]) -> pd.DataFrame:
  """charts + new rows, one row per (region, period, date, source, track), sorted.

  The track is the track id, else the normalised 'artist - title' (tables.track_keys). A later
  row replaces an earlier one with the same key, so merging the same page twice is a no-op and
  the result does not depend on the order pages arrived in.
  """
  frames = [f for f in [charts, *new] if len(f)]
  if not frames:
    return charts
  df = pd.concat(frames, ignore_index=True)
  key = df[_KEY].copy()
  key["track_key"] = tables.track_keys(df)
  df = df[~key.duplicated(keep="last")]
  return df.sort_values(_SORT, kind="mergesort").reset_index(drop=True)


def _snapshot_day(date) -> str:
  if date is None:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()
  if isinstance(date, dt.datetime):
    return date.date().isoformat()
  if isinstance(date, dt.date):
    return date.isoformat()
  try:
    return dt.date.fromisoformat(str(date)).isoformat()
  except ValueError:
    raise ValueError(f"date must be YYYY-MM-DD, got {date!r}") from None


def _track_order(charts: pd.DataFrame) -> list[str]:
  """Track ids seen on chart pages, best position first, so `max_tracks` takes the hits."""
  rows = charts[(charts["source"] == "kworb_chart") & (charts["track_id"] != "")]
  best = rows.groupby("track_id")["pos"].min().reset_index()
  return best.sort_values(["pos", "track_id"], kind="mergesort")["track_id"].tolist()


def crawl(regions, raw_dir: str, *, date=None, periods=PERIODS, fetcher: Fetcher | None = None,
          max_tracks: int | None = None, progress: bool = True, flush_every: int = 200) -> dict:
  """Snapshots the chart pages of `regions`, then every track page not visited yet.

  Writes RAW/charts.csv (only via tables.write, merged with what is there: other sources'
  rows are kept), RAW/kworb_progress.json (track pages whose rows are in charts.csv, or 404)
  and RAW/crawl_report.json, and returns the report. Idempotent and resumable: chart pages
  are cached per snapshot day (`date`, default today in UTC; kworb keeps only the latest
  chart), track pages per URL, rows are merged on their key, and track pages are marked done
  only after their rows are written (every `flush_every` pages), so a crash costs no refetch,
  loses no row and duplicates none. Failed pages are reported and retried on the next run.
  """
  from tqdm import tqdm

  if isinstance(regions, str):
    regions = regions.split(",")
  regions = [r.strip().lower() for r in regions]
  bad = [r for r in regions if not re.fullmatch(r"global|[a-z]{2}", r)]
  if bad or not regions:
    raise ValueError(f"regions must be 'global' or 2-letter country codes, got {bad or regions}")
  periods = list(periods)
  if not periods or any(p not in PERIODS for p in periods):
    raise ValueError(f"periods must be among {PERIODS}, got {periods}")
  if max_tracks is not None and max_tracks < 0:
    raise ValueError(f"max_tracks must be >= 0, got {max_tracks}")
  snapshot = _snapshot_day(date)
  os.makedirs(raw_dir, exist_ok=True)
  fetcher = fetcher or Fetcher(os.path.join(raw_dir, "cache", "kworb"))
  charts_path = os.path.join(raw_dir, "charts.csv")
  progress_path = os.path.join(raw_dir, "kworb_progress.json")
  report = dict(snapshot_date=snapshot, regions=regions, periods=periods,
                started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                chart_pages=collections.Counter(), track_pages=collections.Counter(),
                charts=[], not_found=[], failures=[])

  def fail(kind, url, reason, layout=False):
    report[kind]["failed"] += 1
    report["failures"].append(dict(url=url, reason=reason))
    if layout:  # fetch failures were logged by the fetcher
      log.warning("%s", reason)

  # 1. Chart snapshots.
  charts = read_charts(charts_path)
  rows_before = len(charts)
  frames = []
  for region in regions:
    for period in periods:
      url = chart_url(region, period)
      page = fetcher.get(url, key=f"{url}@{snapshot}")
      if not page.ok:
        fail("chart_pages", url, page.reason or f"HTTP {page.status}")
        continue
      report["chart_pages"]["cached" if page.from_cache else "fetched"] += 1
      try:
        chart_date, rows = parse_chart_page(page.text, url)
      except KworbLayoutError as e:
        fail("chart_pages", url, str(e), layout=True)
        continue
      frames.append(rows)
      report["charts"].append(dict(region=region, period=period, chart_date=chart_date,
                                   rows=len(rows)))
  charts = merge_charts(charts, frames)
  tables.write(charts, charts_path, "charts")

  # 2. Track pages not visited yet.
  done = {}
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      done = json.load(f)["tracks"]
  todo = [t for t in _track_order(charts) if t not in done]
  if max_tracks is not None:
    todo = todo[:max_tracks]
  report["track_pages"]["todo"] = len(todo)
  pending, pending_done = [], {}

  def flush():
    nonlocal charts
    if not pending_done:
      return
    charts = merge_charts(charts, pending)
    tables.write(charts, charts_path, "charts")  # rows first, then the progress that names them
    done.update(pending_done)
    _write_json(progress_path, dict(tracks=done))
    pending.clear()
    pending_done.clear()

  for track_id in tqdm(todo, desc="kworb track pages", unit="page", disable=not progress):
    url = track_url(track_id)
    page = fetcher.get(url)
    if page.not_found:
      report["track_pages"]["not_found"] += 1
      report["not_found"].append(track_id)
      pending_done[track_id] = "not_found"
    elif not page.ok:
      fail("track_pages", url, page.reason or f"HTTP {page.status}")
      continue
    else:
      report["track_pages"]["cached" if page.from_cache else "fetched"] += 1
      try:
        pending.append(parse_track_page(page.text, url))
      except KworbLayoutError as e:
        fail("track_pages", url, str(e), layout=True)
        continue
      pending_done[track_id] = "ok"
    if len(pending_done) >= flush_every:
      flush()
  flush()

  report["track_pages"]["remaining"] = sum(t not in done for t in _track_order(charts))
  report["rows"] = dict(total=len(charts), added=len(charts) - rows_before)
  report["http"] = dict(fetcher.stats)
  report["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
  report["chart_pages"] = dict(report["chart_pages"])
  report["track_pages"] = dict(report["track_pages"])
  _write_json(os.path.join(raw_dir, "crawl_report.json"), report)
  return report


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m data_prep.kworb",
      description="Fetch and parse kworb.net Spotify charts into RAW/charts.csv.")
  sub = p.add_subparsers(dest="command", required=True)
  c = sub.add_parser(
      "crawl", help="snapshot chart pages, then fetch every track page not fetched yet",
      description="Snapshot today's kworb chart pages for the regions, append their rows to "
                  "RAW/charts.csv, then visit every track page not visited yet and append its "
                  "weekly and daily history. Pages are cached under RAW/cache/kworb, so a "
                  "re-run (or a run after a crash) never fetches a page twice. Writes "
                  "RAW/crawl_report.json; exits 1 when some pages failed (run again to retry).")
  c.add_argument("--regions", required=True,
                 help="comma-separated kworb region codes: 'global' or lowercase ISO-3166 "
                      "alpha-2 codes, e.g. us,gb,global; 'all' = the ~70 regions kworb covers")
  c.add_argument("--raw", required=True, help="raw-data directory (created if missing)")
  c.add_argument("--periods", default="daily,weekly",
                 help="which chart pages to snapshot: daily, weekly or both (default: %(default)s)")
  c.add_argument("--min-interval", type=float, default=1.0,
                 help="seconds between requests to kworb.net (default: %(default)s)")
  c.add_argument("--max-tracks", type=int, default=None,
                 help="visit at most N track pages in this run, best chart positions first "
                      "(default: all not visited yet)")
  c.add_argument("--date", default=None,
                 help="snapshot day YYYY-MM-DD used to key the chart-page cache (default: today, "
                      "UTC); the chart date itself is read from each page")
  c.add_argument("--max-retry-after", type=float, default=300.0,
                 help="give up on a page whose 429/5xx Retry-After exceeds this many seconds "
                      "(default: %(default)s)")
  c.add_argument("--no-progress", action="store_true", help="no progress bar")
  q = sub.add_parser("parse", help="parse a saved kworb page and print its rows as CSV",
                     description="Parse a saved page (chart, track or artist songs page, told "
                                 "apart by --url) and print the rows as CSV; for checking the "
                                 "parsers against a real page.")
  q.add_argument("file", help="saved HTML file")
  q.add_argument("--url", required=True,
                 help="the page's kworb URL (region, period or track id come from it)")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  if args.command == "parse":
    with open(args.file, encoding="utf-8") as f:
      text = f.read()
    if _CHART_URL.search(args.url):
      chart_date, df = parse_chart_page(text, args.url)
      print(f"# chart date {chart_date}", file=sys.stderr)
    elif _TRACK_URL.search(args.url):
      df = parse_track_page(text, args.url)
    elif _ARTIST_SONGS_URL.search(args.url):
      summary, df, updated = parse_artist_songs(text, args.url)
      print(f"# {json.dumps(summary)}; last updated {updated}", file=sys.stderr)
    else:
      raise SystemExit(f"--url {args.url!r} is not a kworb chart, track or artist songs URL")
    df.to_csv(sys.stdout, index=False)
    return 0
  regions = REGIONS if args.regions.strip().lower() == "all" else \
      [r for r in args.regions.split(",") if r.strip()]
  fetcher = Fetcher(os.path.join(args.raw, "cache", "kworb"), min_interval=args.min_interval,
                    max_retry_after=args.max_retry_after)
  try:
    report = crawl(regions, args.raw, date=args.date,
                   periods=[p.strip() for p in args.periods.split(",") if p.strip()],
                   fetcher=fetcher, max_tracks=args.max_tracks, progress=not args.no_progress)
  except ValueError as e:  # bad arguments or an unreadable charts.csv: say so, no traceback
    raise SystemExit(f"kworb crawl: {e}") from None
  t = report["track_pages"]
  print(f"charts.csv: {report['rows']['total']} rows (+{report['rows']['added']}); chart pages "
        f"{report['chart_pages']}; track pages {t}; report: "
        f"{os.path.join(args.raw, 'crawl_report.json')}")
  if report["failures"]:
    print(f"{len(report['failures'])} page(s) failed (see the report); run again to retry them",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
