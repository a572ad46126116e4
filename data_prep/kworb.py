"""kworb.net: fetch and parse Spotify chart pages and per-track chart histories.

kworb mirrors the Spotify charts (facts in the project's KWORB.md). Two kinds of page matter:

- country chart pages (`country/{cc}_daily.html`, `{cc}_weekly.html`) hold only the LATEST chart;
  kworb keeps no archive, so daily history older than ~35 days exists only in our own snapshots.
  They are the only place the Spotify track id appears (in the title link).
- per-track pages (`track/{id}.html`) hold the track's whole weekly history per country and the
  last ~35 days of daily history; 404 means the track never charted anywhere.

Parsers are pure functions over page text (parsed with `lxml.html`) that check the layout and
the values and raise `KworbLayoutError` naming the URL, table, row and column: a silently
shifted column would poison every target downstream. A body that is not (yet) the page asked
for (an anti-bot interstitial, a truncated download) raises its subclass `KworbIncompletePage`.
`Fetcher` fetches through `data_prep.net` (polite, retrying) into a disk cache that holds only
pages the parser accepted, so a crash or a re-run never fetches a good page twice and always
fetches a failed one again. `crawl` ties them together and is idempotent: kill it anywhere, run it
again, and `RAW/charts.csv` ends up the same as after one uninterrupted run.

    python -m data_prep.kworb crawl --regions us,gb,global --raw RAW
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import os
import re
import sys
import time

import lxml.html
import pandas as pd

from data_prep import net, tables
from mpjax import atomic

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
# Anti-bot interstitials (Cloudflare's "Just a moment..." and the like). Not a bare
# 'challenge-platform': Cloudflare puts /cdn-cgi/challenge-platform/scripts/jsd/main.js into
# ordinary pages too; its challenge page loads .../challenge-platform/h/...
_INTERSTITIAL = re.compile(
    r"<title[^>]*>\s*Just a moment\.\.\.|cf-challenge|challenge-platform/h/|cf_chl_|"
    r"Checking your browser|Enable JavaScript and cookies to continue", re.I)
_HTML_END = re.compile(r"</html\s*>\s*\Z", re.I)


class KworbLayoutError(ValueError):
  """A kworb page does not look like KWORB.md says; `url` and `problem` say where and what."""
  what = "unexpected kworb page layout"

  def __init__(self, url: str, problem: str):
    super().__init__(f"{url}: {self.what}: {problem}")
    self.url = url
    self.problem = problem


class KworbIncompletePage(KworbLayoutError):
  """The body is not (yet) the page asked for: an anti-bot interstitial or a truncated
  download. Worth fetching again later, not worth keeping."""
  what = "incomplete kworb page"


def chart_url(region: str, period: str) -> str:
  return f"{BASE_URL}/country/{region}_{period}.html"


def track_url(track_id: str) -> str:
  return f"{BASE_URL}/track/{track_id}.html"


# --------------------------------------------------------------------------------------------
# HTML: lxml parses (omitted </td> and </tr> included); these helpers read a cell's text and its
# text split per link, which is all the parsers need (artist vs title vs featured links).


def _check_complete(html: str, url: str, table_id: str | None = None):
  """Raises KworbIncompletePage when the body is not (yet) the page asked for: an anti-bot
  interstitial, or a download cut short. Judged on the raw text: lxml would quietly close what
  was cut off, and a chart page cut after row 30 has positions 1..30 without a gap."""
  m = _INTERSTITIAL.search(html)
  if m:
    raise KworbIncompletePage(url, f"anti-bot interstitial page instead of the kworb page "
                                   f"(found {m.group(0)!r})")
  if not _HTML_END.search(html):
    raise KworbIncompletePage(url, f"truncated download: the body ends after "
                                   f"{len(html.encode('utf-8', 'replace'))} bytes without "
                                   f"</html> (last characters: {html[-60:]!r})")
  if table_id:
    m = re.search(rf"<table\b[^>]*\bid\s*=\s*[\"']?{table_id}[\"'\s>]", html, re.I)
    if m and not re.search(r"</table\s*>", html[m.end():], re.I):
      raise KworbIncompletePage(url, f"truncated download: <table id={table_id!r}> is never "
                                     f"closed (no </table> after it)")


def _document(html: str):
  """The lxml document; <br> reads as a space, as browsers show it."""
  parser = lxml.html.HTMLParser(encoding="utf-8")
  doc = lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser)
  for br in doc.iter("br"):
    br.tail = " " + (br.tail or "")
  return doc


def _squash(text: str) -> str:
  return " ".join(text.split())


def _text(el) -> str:
  return _squash(el.text_content())


def _segments(el) -> list[tuple[str, str | None]]:
  """el's text in order as [(text, href or None)]: one segment per link, the text between
  links merged."""
  def link(s):  # the <a> the text node sits in (a tail sits in its element's parent)
    holder = s.getparent().getparent() if s.is_tail else s.getparent()
    return next(iter(holder.xpath("ancestor-or-self::a[1]")), None)
  return [("".join(group), None if a is None else a.get("href", ""))
          for a, group in itertools.groupby(el.xpath(".//text()"), key=link)]


def _headings(doc) -> list:
  """The outermost <h1>, <h2> and class="pagetitle" elements, in page order."""
  found = doc.xpath("//h1 | //h2 | //*[contains(concat(' ', normalize-space(@class), ' '), "
                    "' pagetitle ')]")
  return [h for h in found if not any(a in found for a in h.iterancestors())]


def _rows(table) -> list[list]:
  """The table's rows (thead, tbody and tfoot ones too, not those of nested tables), each the
  list of its <td>/<th> cells."""
  return [row.xpath("./td | ./th") for row in table.xpath("./tr | ./*/tr")]


def _header(table) -> list[str]:
  rows = _rows(table)
  return [_text(c) for c in rows[0]] if rows else []


def _check_header(url: str, what: str, found: list[str], expected: list[str]):
  """Raises naming the first column whose header differs, and both header rows."""
  if [h.lower() for h in found] == [h.lower() for h in expected]:
    return
  for i, (e, f) in enumerate(itertools.zip_longest(expected, found)):
    if (e or "").lower() != (f or "").lower():
      raise KworbLayoutError(
          url, f"{what}: column {i + 1} header expected {e!r}, found {f!r} "
               f"(expected {' | '.join(expected)}; found {' | '.join(found) or 'no header'})")


def _data_rows(table):
  """(row number, cells) for the rows after the header, skipping empty and repeated-header rows."""
  for i, row in enumerate(_rows(table)[1:], start=2):
    if not row or all(c.tag == "th" for c in row):
      continue
    yield i, row


def _number(text: str, url: str, where: str, *, signed: bool = False, minimum: int = 0) -> float:
  """'1,234' -> 1234.0; '-', '--' or empty -> NaN. Whole numbers only: with a sign ('+84,270',
  '-116,663') where `signed`, else unsigned and at least `minimum`."""
  t = text.replace(",", "").replace("\u2009", "").replace(" ", "").strip()
  if t in _MISSING:
    return math.nan
  if not re.fullmatch(r"[+-]?\d+(\.\d+)?", t):
    raise KworbLayoutError(url, f"{where}: expected a number, found {text!r}")
  if re.fullmatch(r"[+-]?\d+" if signed else r"\d+", t) and (signed or int(t) >= minimum):
    return float(t)
  want = "a whole number" if signed else f"a whole number >= {minimum} without sign"
  raise KworbLayoutError(url, f"{where}: expected {want}, found {text!r}")


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


def _artist_title(cell, url: str, where: str) -> dict:
  """Splits 'Artist and Title': `<a artist>Lead</a> - <a track>Title</a> (w/ <a>X</a>, ...)`.

  The track link is the only source of the Spotify track id. Without it (never seen on kworb,
  but page text has no ids either) the text is split at the first ' - ' and track_id is ''.
  """
  segs = _segments(cell)
  idx = next((i for i, (_, href) in enumerate(segs) if href and _TRACK_LINK.search(href)), None)
  if idx is not None:
    lead, tail = segs[:idx], segs[idx + 1:]
    artist = re.sub(r"\s*-\s*$", "", _squash("".join(t for t, _ in lead)))
    title = _squash(segs[idx][0])
    track_id = _TRACK_LINK.search(segs[idx][1]).group(1)
    tail_text = _squash("".join(t for t, _ in tail))
  else:
    text = _text(cell)
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
    raise KworbLayoutError(url, f"{where}: cannot split artist and title in {_text(cell)!r}")
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
  (`... - YYYY/MM/DD` in the title or heading). Positions must run 1..N, each track once.
  """
  m = _CHART_URL.search(url)
  if not m:
    raise ValueError(f"{url}: not a kworb chart page URL (expected .../country/{{cc}}_daily.html "
                     f"or _weekly.html)")
  region, period = m.groups()
  table_id = f"spotify{period}"
  _check_complete(html, url, table_id)
  doc = _document(html)
  found = [t for t in doc.iter("table") if t.get("id") == table_id]
  if not found:
    ids = [t.get("id", "(no id)") for t in doc.iter("table")]
    raise KworbLayoutError(url, f"no <table id={table_id!r}>; tables found: {ids or 'none'}")
  table = found[0]
  expected = CHART_HEADERS[period]
  _check_header(url, f"table#{table_id}", _header(table), expected)

  title = doc.findtext(".//title") or ""
  chart_date = _slash_date(title) or next(
      (d for d in (_slash_date(_text(h)) for h in _headings(doc)) if d), None)
  if chart_date is None:
    raise KworbLayoutError(url, f"no chart date YYYY/MM/DD in the <title> ({title.strip()!r}) "
                                f"or the page heading")

  rows, pos_rows, track_rows = [], {}, {}
  for i, row in _data_rows(table):
    where = f"table#{table_id} row {i}"
    if len(row) != len(expected):
      raise KworbLayoutError(url, f"{where}: expected {len(expected)} cells, found {len(row)}: "
                                  f"{[_text(c) for c in row]}")
    cells = {col: _text(c) for col, c in zip(expected, row)}
    num = lambda col, **kw: _number(cells[col], url, f"{where} column {col!r}", **kw)  # noqa: E731
    pos = cells["Pos"]
    if pos in _MISSING:
      raise KworbLayoutError(url, f"{where}: no position in column 'Pos'")
    if not re.fullmatch(r"\d+", pos) or int(pos) < 1:
      raise KworbLayoutError(url, f"{where} column 'Pos': expected a position 1, 2, 3, ... "
                                  f"(digits only), found {pos!r}")
    pos = int(pos)
    if pos in pos_rows:
      raise KworbLayoutError(url, f"{where} column 'Pos': position {pos} twice, in rows "
                                  f"{pos_rows[pos]} and {i}")
    pos_rows[pos] = i
    movement = cells["P+"]
    if movement and not _MOVEMENT.fullmatch(movement):
      raise KworbLayoutError(url, f"{where} column 'P+': expected NEW, RE, =, +N or -N, "
                                  f"found {movement!r}")
    peak_count = cells["(x?)"]
    if peak_count:
      pc = re.fullmatch(r"\(x([1-9]\d*)\)", peak_count)
      if not pc:
        raise KworbLayoutError(url, f"{where} column '(x?)': expected '(xN)' or empty, "
                                    f"found {peak_count!r}")
      peak_count = float(pc.group(1))
    else:
      peak_count = math.nan
    track = _artist_title(row[expected.index("Artist and Title")], url, where)
    key = track["track_id"] or (track["artist"], track["title"])
    if key in track_rows:
      raise KworbLayoutError(
          url, f"{where} column 'Artist and Title': the same track twice, in rows "
               f"{track_rows[key]} and {i} ({track['artist']} - {track['title']}"
               f"{', track id ' + track['track_id'] if track['track_id'] else ''})")
    track_rows[key] = i
    daily = period == "daily"
    rows.append(dict(
        region=region, period=period, date=chart_date, pos=pos, **track,
        streams=num("Streams"), movement=movement,
        on_chart=num("Days" if daily else "Wks", minimum=1), peak=num("Pk", minimum=1),
        source="kworb_chart", peak_count=peak_count, streams_delta=num("Streams+", signed=True),
        streams_7day=num("7Day") if daily else math.nan,
        streams_7day_delta=num("7Day+", signed=True) if daily else math.nan,
        total=num("Total")))
  missing = next((p for p in range(1, len(rows) + 1) if p not in pos_rows), None)
  if missing is not None:  # then some row has a higher one: name the first such row
    after, i = next((p, i) for p, i in pos_rows.items() if p > missing)
    raise KworbLayoutError(url, f"table#{table_id} column 'Pos': position {missing} missing, "
                                f"row {i} has position {after} (a chart page lists positions "
                                f"1..{len(rows)} without gaps)")
  return chart_date, _frame(rows)


def _heading_artist_title(doc) -> tuple[str, str, str]:
  """(artist, title, artist_id) from the page heading 'Artist - Title' ('' where absent)."""
  headings = _headings(doc)
  if not headings:
    return "", "", ""
  segs = _segments(headings[0])
  artist_idx = [i for i, (_, h) in enumerate(segs) if h and _ARTIST_LINK.search(h)]
  if artist_idx:
    i = artist_idx[0]
    artist = _squash(segs[i][0])
    title = re.sub(r"^\s*-\s*", "", _squash("".join(t for t, _ in segs[i + 1:])))
    return artist, title, _ARTIST_LINK.search(segs[i][1]).group(1)
  m = re.match(r"(.*?) - (.*)$", _text(headings[0]))
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
  _check_complete(html, url)
  doc = _document(html)
  all_tables = list(doc.iter("table"))
  found = [t for t in all_tables if _header(t)[:1] and _header(t)[0].lower() == "date"]
  if len(found) != 2:
    firsts = [(_header(t) or ["(empty)"])[0] for t in all_tables]
    raise KworbLayoutError(
        url, f"expected 2 tables with header 'Date | Global | US | ...' (weekly, then daily), "
             f"found {len(found)} among {len(all_tables)} table(s) whose first headers are "
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
    date_rows = {}
    for i, row in _data_rows(table):
      where = f"{period} table row {i}"
      label = _text(row[0])
      if label.lower() in ("total", "peak"):
        continue
      date = _slash_date(label) if re.fullmatch(r"\d{4}/\d{2}/\d{2}", label) else None
      if date is None:
        raise KworbLayoutError(url, f"{where}: expected 'Total', 'Peak' or a date YYYY/MM/DD "
                                    f"in column 'Date', found {label!r}")
      if date in date_rows:
        raise KworbLayoutError(url, f"{where} column 'Date': date {label} twice, in rows "
                                    f"{date_rows[date]} and {i}")
      date_rows[date] = i
      if len(row) != len(header):
        raise KworbLayoutError(url, f"{where}: expected {len(header)} cells "
                                    f"({' | '.join(header)}), found {len(row)}")
      for region, cell in zip(regions, row[1:]):
        text = _text(cell)
        if text in _MISSING:
          continue
        c = re.fullmatch(r"(-?\d+)\s*(?:\((-?[\d,]+)\))?", text)
        if not c:
          raise KworbLayoutError(url, f"{where} column {region!r}: expected 'pos (streams)' or "
                                      f"'--', found {text!r}")
        if int(c.group(1)) < 1 or (c.group(2) or "").startswith("-"):
          raise KworbLayoutError(url, f"{where} column {region!r}: expected 'pos (streams)' "
                                      f"with pos >= 1 and streams >= 0, found {text!r}")
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
  _check_complete(html, url)
  doc = _document(html)
  all_tables = list(doc.iter("table"))
  headers = [_header(t) for t in all_tables]
  lower = lambda hs: [h.lower() for h in hs]  # noqa: E731
  summary_t = next((t for t, h in zip(all_tables, headers)
                    if lower(h[1:]) == lower(SUMMARY_HEADERS)), None)
  if summary_t is None:
    raise KworbLayoutError(url, f"no summary table with header ' | {' | '.join(SUMMARY_HEADERS)}'; "
                                f"table headers found: {headers or 'no tables'}")
  songs_t = next((t for t, h in zip(all_tables, headers) if lower(h) == lower(SONG_HEADERS)), None)
  if songs_t is None:
    raise KworbLayoutError(url, f"no song table with header '{' | '.join(SONG_HEADERS)}'; "
                                f"table headers found: {headers}")
  keys = [h.lower().replace(" ", "_") for h in SUMMARY_HEADERS]
  summary = {"artist_id": m.group(1)}
  for i, row in _data_rows(summary_t):
    label = _text(row[0])
    if label.lower() not in lower(SUMMARY_ROWS):
      raise KworbLayoutError(url, f"summary table row {i}: expected one of {SUMMARY_ROWS}, "
                                  f"found {label!r}")
    if len(row) != len(SUMMARY_HEADERS) + 1:
      raise KworbLayoutError(url, f"summary table row {i} ({label}): expected "
                                  f"{len(SUMMARY_HEADERS) + 1} cells, found {len(row)}")
    summary[label.lower()] = {
        k: _number(_text(c), url, f"summary table row {i} ({label}) column {h!r}")
        for k, h, c in zip(keys, SUMMARY_HEADERS, row[1:])}
  missing = [r for r in SUMMARY_ROWS if r.lower() not in summary]
  if missing:
    raise KworbLayoutError(url, f"summary table: row(s) {missing} missing")
  songs = []
  for i, row in _data_rows(songs_t):
    if len(row) != len(SONG_HEADERS):
      raise KworbLayoutError(url, f"song table row {i}: expected {len(SONG_HEADERS)} cells, "
                                  f"found {len(row)}")
    links = [_TRACK_LINK.search(a.get("href", "")) for a in row[0].iter("a")]
    links = [l for l in links if l]
    songs.append(dict(title=_text(row[0]), track_id=links[0].group(1) if links else "",
                      streams=_number(_text(row[1]), url, f"song table row {i} column 'Streams'"),
                      daily=_number(_text(row[2]), url, f"song table row {i} column 'Daily'")))
  songs = pd.DataFrame(songs, columns=["title", "track_id", "streams", "daily"])
  songs[["streams", "daily"]] = songs[["streams", "daily"]].astype("float64")
  m = re.search(r"Last updated:\s*(\d{4}/\d{2}/\d{2})", _text(doc))
  return summary, songs, _slash_date(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# HTTP


@dataclasses.dataclass
class Page:
  """One fetched (or cached) page. `status` None: no HTTP answer (connection failures).

  `parsed` is what the caller's `parse` made of it; `reason` says why a page is not usable
  ('' for a good page).
  """
  url: str
  key: str
  status: int | None
  text: str
  fetched_at: str
  from_cache: bool
  reason: str = ""
  parsed: object = None

  @property
  def ok(self) -> bool:
    return self.status == 200 and not self.reason

  @property
  def not_found(self) -> bool:
    return self.status == 404


class Fetcher:
  """kworb pages through :class:`data_prep.net.Http`, with a disk cache of validated pages.

  - Cache: `{cache_dir}/{sha256(key)}.html` (body) + `.json` (key, url, status, fetched_at),
    written atomically; the key is the URL unless given (chart pages add the snapshot day).
    A 200 page is cached only after `parse` accepted it, so a download cut short, an anti-bot
    interstitial or a page the parser rejects is never stored and is fetched again on the next
    run; a cached page that `parse` now rejects is dropped and fetched again. 404 is cached
    (a track page that 404s never charted, and is never asked again).
  - Politeness: at least `min_interval` seconds between request starts.
  - Retries: net.Http's (429/5xx/connection errors with jittered back-off, Retry-After honoured
    while one page's waits stay under `max_wait`); a page that arrives incomplete
    (KworbIncompletePage) is asked again on the same schedule. Other statuses are not retried.
  - `sleep` and `clock` are injectable so tests run instantly and can check every wait.
  """

  def __init__(self, cache_dir: str, *, min_interval: float = 1.0, max_tries: int = 6,
               backoff: float = 2.0, jitter: float = 1.0, max_wait: float = 300.0,
               timeout: float = 30.0, sleep=time.sleep, clock=time.monotonic):
    self.cache_dir = cache_dir
    self.http = net.Http(default_limit=(1, min_interval), max_wait=max_wait,
                         max_tries=max_tries, backoff=backoff, jitter=jitter, timeout=timeout,
                         user_agent=USER_AGENT, sleep=sleep, clock=clock)
    self.stats = collections.Counter()  # fetched, cached, not_found, failed, refetched
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
                meta.get("reason", "") if meta["status"] != 200 else "")

  def get(self, url: str, *, key: str | None = None, refresh: bool = False,
          parse=None) -> Page:
    """The page at `url`, from the cache under `key` (default: the URL) unless `refresh`.

    parse: text -> anything, raising KworbLayoutError for a page that is not right; its
      result is `page.parsed`. Only pages it accepts are cached.
    """
    key = key or url
    if not refresh:
      page = self.cached(key)
      if page is not None:
        if page.status == 200 and parse is not None:
          try:
            page.parsed = parse(page.text)
          except KworbLayoutError as e:
            log.warning("cached copy of %s is not a good page (%s): fetching it again", url,
                        e.problem)
            self.stats["refetched"] += 1
            page = None
        if page is not None:
          self.stats["cached"] += 1
          return page
    retry = None
    while True:
      fetched_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
      try:
        resp = self.http.request(url)
      except net.HttpError as e:
        return self._failed(Page(url, key, e.status, "", fetched_at, False, str(e)))
      if resp.status_code == 404:
        reason = "HTTP 404: not found (track pages: never charted)"
        self._store(key, url, 404, b"", fetched_at, reason)
        self.stats["not_found"] += 1
        return Page(url, key, 404, "", fetched_at, False, reason)
      if resp.status_code != 200:
        return self._failed(Page(url, key, resp.status_code, "", fetched_at, False,
                                 f"HTTP {resp.status_code}: not retried"))
      body = resp.content
      page = Page(url, key, 200, body.decode("utf-8", errors="replace"), fetched_at, False)
      try:
        page.parsed = parse(page.text) if parse is not None else None
      except KworbIncompletePage as e:
        retry = self.http.back_off(url, retry, e.problem)
        if retry is not None:
          continue
        page.reason = f"not cached: {e.problem}"
        return self._failed(page)
      except KworbLayoutError as e:
        page.reason = f"not cached: {e}"
        return self._failed(page)
      self._store(key, url, 200, body, fetched_at, "")
      self.stats["fetched"] += 1
      return page

  def _failed(self, page: Page) -> Page:
    self.stats["failed"] += 1
    log.warning("gave up on %s: %s", page.url, page.reason)
    return page

  def _store(self, key, url, status, body, fetched_at, reason):
    body_path = self.cache_path(key)
    if status == 200:
      atomic.write_bytes(body_path, body)
    meta = dict(key=key, url=url, status=status, fetched_at=fetched_at, reason=reason,
                bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    # written last: marks the entry done
    atomic.write_json(body_path[:-len(".html")] + ".json", meta, sort_keys=True)


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

  def fail(kind, url, reason):  # the fetcher logged it
    report[kind]["failed"] += 1
    report["failures"].append(dict(url=url, reason=reason))

  # 1. Chart snapshots.
  charts = read_charts(charts_path)
  rows_before = len(charts)
  frames = []
  for region in regions:
    for period in periods:
      url = chart_url(region, period)
      page = fetcher.get(url, key=f"{url}@{snapshot}",
                         parse=lambda text, url=url: parse_chart_page(text, url))
      if not page.ok:
        fail("chart_pages", url, page.reason or f"HTTP {page.status}")
        continue
      report["chart_pages"]["cached" if page.from_cache else "fetched"] += 1
      chart_date, rows = page.parsed
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
    atomic.write_json(progress_path, dict(tracks=done), sort_keys=True)
    pending.clear()
    pending_done.clear()

  host = "kworb.net"
  for i, track_id in enumerate(tqdm(todo, desc="kworb track pages", unit="page",
                                    disable=not progress)):
    if fetcher.http.blocked(host) > 0:  # it asked for a longer wait than --max-wait
      report["stopped"] = (f"{host} asked us to wait {fetcher.http.blocked(host):.0f} s: "
                           f"stopped with {len(todo) - i} track page(s) left for the next run")
      log.warning("%s", report["stopped"])
      break
    url = track_url(track_id)
    page = fetcher.get(url, parse=lambda text, url=url: parse_track_page(text, url))
    if page.not_found:
      report["track_pages"]["not_found"] += 1
      report["not_found"].append(track_id)
      pending_done[track_id] = "not_found"
    elif not page.ok:
      fail("track_pages", url, page.reason or f"HTTP {page.status}")
      continue
    else:
      report["track_pages"]["cached" if page.from_cache else "fetched"] += 1
      pending.append(page.parsed)
      pending_done[track_id] = "ok"
    if len(pending_done) >= flush_every:
      flush()
  flush()

  report["track_pages"]["remaining"] = sum(t not in done for t in _track_order(charts))
  report["rows"] = dict(total=len(charts), added=len(charts) - rows_before)
  http = fetcher.http.stats
  report["http"] = dict(requests=http["requests"], retries=http["retries"],
                        wait_s=round(http["wait_s"], 1), pages=dict(fetcher.stats))
  report["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
  report["chart_pages"] = dict(report["chart_pages"])
  report["track_pages"] = dict(report["track_pages"])
  atomic.write_json(os.path.join(raw_dir, "crawl_report.json"), report, sort_keys=True)
  return report


def summary(report: dict, report_path: str = "") -> str:
  """What a crawl did, in a few lines: pages fetched / cached / failed, retries, failures."""
  def counts(c, names):
    return ", ".join(f"{c.get(n, 0)} {n.replace('_', ' ')}" for n in names)
  http = report["http"]
  lines = [
      "chart pages: " + counts(report["chart_pages"], ("fetched", "cached", "failed")),
      "track pages: " + counts(report["track_pages"],
                               ("fetched", "cached", "not_found", "failed", "remaining")),
      f"http: {http['requests']} requests, {http['retries']} retries ({http['wait_s']:.0f} s "
      f"waited); {http['pages'].get('refetched', 0)} bad cached page(s) fetched again",
      f"charts.csv: {report['rows']['total']} rows (+{report['rows']['added']})"
      + (f"; report: {report_path}" if report_path else "")]
  failures = report["failures"]
  if report.get("stopped"):
    lines.append(report["stopped"])
  if failures:
    lines.append(f"{len(failures)} page(s) failed; none of them was cached, so running the same "
                 f"command again fetches exactly those:")
    lines += [f"  {f['url']}: {f['reason']}" for f in failures[:10]]
    if len(failures) > 10:
      lines.append(f"  ... and {len(failures) - 10} more (all in the report)")
  return "\n".join(lines)


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
                  "weekly and daily history. Pages are cached under RAW/cache/kworb once they "
                  "parse, so a re-run (or a run after a crash) never fetches a good page twice, "
                  "and always fetches again a page that failed. Writes RAW/crawl_report.json, "
                  "prints a summary and exits 1 when some pages failed (run again to retry).")
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
  c.add_argument("--max-wait", type=float, default=300.0,
                 help="most seconds one page may spend waiting between its retries (Retry-After "
                      "and back-off together); past that the page fails for this run "
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
      totals, df, updated = parse_artist_songs(text, args.url)
      print(f"# {json.dumps(totals)}; last updated {updated}", file=sys.stderr)
    else:
      raise SystemExit(f"--url {args.url!r} is not a kworb chart, track or artist songs URL")
    df.to_csv(sys.stdout, index=False)
    return 0
  regions = REGIONS if args.regions.strip().lower() == "all" else \
      [r for r in args.regions.split(",") if r.strip()]
  fetcher = Fetcher(os.path.join(args.raw, "cache", "kworb"), min_interval=args.min_interval,
                    max_wait=args.max_wait)
  try:
    report = crawl(regions, args.raw, date=args.date,
                   periods=[p.strip() for p in args.periods.split(",") if p.strip()],
                   fetcher=fetcher, max_tracks=args.max_tracks, progress=not args.no_progress)
  except ValueError as e:  # bad arguments or an unreadable charts.csv: say so, no traceback
    raise SystemExit(f"kworb crawl: {e}") from None
  print(summary(report, os.path.join(args.raw, "crawl_report.json")))
  return 1 if report["failures"] or report.get("stopped") else 0


if __name__ == "__main__":
  sys.exit(main())
