"""The shared kworb daily-chart CSV (scraped page text) -> chart observations (`tables.CHART_COLUMNS`).

Input: a CSV (optionally .gz) with the columns ``scrape_date, country, pos, p_plus, artist_title,
days, peak, peak_count, streams, streams_delta, streams_7day, streams_7day_delta, total``: one row
per chart position of kworb's daily page ``{country}_daily.html`` as scraped on ``scrape_date``
(see KWORB.md). The page text carries no Spotify ids.

Output (`load_daily_csv`): one row per (region, chart date, position) with the CHART_COLUMNS

- ``region`` = ``country``; ``period`` = 'daily'; ``source`` = 'kworb_csv'; ``track_id`` and
  ``artist_id`` = '' (unknown, so `tables.track_keys` falls back to `tables.song_key`).
- ``artist`` / ``title`` / ``featured``: ``artist_title`` reads "Artist - Title (w/ A, B)". It is
  split at the FIRST " - " (titles may contain " - " themselves, e.g. "NIKI - You'll Be in My
  Heart - Spotify Singles"; an artist name containing " - " would be mis-split, none is known).
  A trailing "(w/ ...)" is removed from the title and its comma-separated names become
  ``featured``, joined with '; ' (the "(w/ ...)" part may itself contain parentheses:
  "(w/ Muộii (Starry Night))" -> "Muộii (Starry Night)"; a featured artist whose name contains
  ", " is split in two — kworb's text gives no way to tell). The title keeps everything else,
  including "(Feat. X)" written by the label.
- ``pos`` (int), ``on_chart`` = ``days`` (days on kworb's full daily chart, which for these
  countries is longer than the top 50 in the file: a song entering the top 50 from below has
  ``days`` > 1 and a signed ``movement``, only first entries of the full chart read 'NEW'),
  ``peak`` = ``peak``, ``streams`` = ``streams``, ``movement`` = ``p_plus`` ('=', '+N', '-N',
  'NEW', 'RE').
- extra columns, kept by `tables.write`: ``scrape_date`` (YYYY-MM-DD), ``peak_count`` (the
  "(x54)" days at peak -> 54, NaN when empty), ``streams_delta``, ``streams_7day``,
  ``streams_7day_delta``, ``total`` (floats; signed deltas keep their sign).
- Numbers: thousands separators removed, a leading '+' dropped; '', '-' and '--' -> NaN.

Chart date. The file has only the scrape date; kworb's daily page shows the latest Spotify chart,
which lags the scrape. What the real file shows (2025-06-11 .. 2026-02-28, 7 countries):

1. Stale scrapes: on 71 (country, scrape_date) snapshots the page had not been updated and the
   chart is byte-identical to the previous day's (every ``days`` counter unchanged); the next
   scrape then jumps ``days`` by 2 (or 5 after the 2025-09-07..10 outage). The scrape of
   2025-06-15 is missing (kr, ph, th, vn jump by 2 on 06-16).
2. Apart from those, every snapshot shows the chart of scrape_date - L for one constant L; with
   L = 2 the weekday with by far the most 'NEW' entries is Friday (Spotify's release day; L = 1
   would put them on Saturdays), and KWORB.md says the page lags by 1-2 days.

So the chart date is inferred, not assumed: per country, snapshots are ordered by scrape date and
each one's advance over the previous snapshot is the most common increase of ``days`` among the
songs listed in both (0 = the page was not updated; a snapshot sharing no song with the previous
one advances by the calendar gap). The cumulative advances give each snapshot's chart-day index;
the index is anchored so that the most common (scrape_date - chart date) over the country's
snapshots equals ``lag_days`` (default 2). A snapshot whose chart date is not later than an
earlier snapshot's (a stale repeat) is dropped: each (region, chart date) comes from the earliest
scrape that showed it. Chart dates never captured (the stale days, the missing scrape) are simply
absent: a missing chart date is missing data, not "off chart" (`targets` treats it so).

Songs under several spellings (kept as shown here; `tables.song_key` merges them downstream):
case changes over time ("IV Of Spades - Aura" -> "IV OF SPADES - Aura"), punctuation
("a Lot Like" / "a Lot like"), a remastered re-upload ("FAMOUS" / "FAMOUS - Remastered"), and
distinct versions charting side by side ("aespa - Dirty Work" and "aespa - Dirty Work (w/ Flo
Milli)" on the same day). No (scrape_date, country, pos) duplicates occur; if one does it is a
ValueError.

Malformed input (a missing column, a row with the wrong number of fields, an unparsable number,
date, position, movement or artist_title without " - ") raises ValueError naming the file, the
line (1 = header; the file is assumed to have one record per line) and the column.

CLI::

    python -m data_prep.kworb_csv IN.csv.gz --raw RAW [--lag-days 2]

writes ``RAW/charts.csv`` (`tables.write`, atomic) and prints a summary.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np
import pandas as pd

from data_prep import tables

CSV_COLUMNS = ["scrape_date", "country", "pos", "p_plus", "artist_title", "days", "peak",
               "peak_count", "streams", "streams_delta", "streams_7day", "streams_7day_delta",
               "total"]
# CSV column -> output column, for the plain numbers.
NUMBER_COLUMNS = {"days": "on_chart", "peak": "peak", "streams": "streams",
                  "streams_delta": "streams_delta", "streams_7day": "streams_7day",
                  "streams_7day_delta": "streams_7day_delta", "total": "total"}
EXTRA_COLUMNS = ["scrape_date", "peak_count", "streams_delta", "streams_7day",
                 "streams_7day_delta", "total"]

_MISSING = {"", "-", "--"}
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)$")
_MOVEMENT = re.compile(r"^(=|NEW|RE|[+-]\d+)$")
_REGION = re.compile(r"^([a-z]{2}|global)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FEATURED = re.compile(r"^(?P<title>.*?)\s*\(w/ (?P<featured>.*)\)$", re.S)


def _fail(path, row, column, value, what):
  raise ValueError(f"{path}: line {int(row) + 2}, column {column!r}: {what} ({value!r})")


def parse_number(values: pd.Series, path: str, column: str) -> pd.Series:
  """Strings like '1,234', '+84,270', '-116,663', '-', '--', '' -> float64 (NaN for missing).

  Raises ValueError (file, line, column) for anything else. `values` has the CSV row numbers
  (0 = first data row) as index.
  """
  s = values.astype(str).str.strip()
  missing = s.isin(_MISSING)
  bad = ~missing & ~s.str.match(_NUMBER)
  if bad.any():
    i = bad.idxmax()
    _fail(path, i, column, values[i], "not a number")
  digits = s.str.replace(",", "", regex=False)
  out = pd.to_numeric(digits.where(~missing), errors="coerce")
  return out.astype(np.float64)


def split_artist_title(artist_title: pd.Series, path: str = "<csv>") -> pd.DataFrame:
  """'Artist - Title (w/ A, B)' -> columns artist, title, featured ('A; B'); see the module doc."""
  s = artist_title.astype(str)
  parts = s.str.split(" - ", n=1, expand=True, regex=False)
  if parts.shape[1] < 2 or parts[1].isna().any() or (parts[0].str.strip() == "").any():
    bad = parts[1].isna() if parts.shape[1] >= 2 else pd.Series(True, index=s.index)
    bad = bad | (parts[0].str.strip() == "")
    i = bad.idxmax()
    _fail(path, i, "artist_title", s[i], "expected 'Artist - Title'")
  artist = parts[0].str.strip()
  rest = parts[1].str.strip()
  m = rest.str.extract(_FEATURED)
  has = m["title"].notna()
  title = rest.where(~has, m["title"].str.strip())
  featured = m["featured"].fillna("").str.split(",").map(
      lambda xs: "; ".join(x.strip() for x in xs if x.strip()))
  return pd.DataFrame({"artist": artist, "title": title, "featured": featured}, index=s.index)


def _chart_dates(snap: pd.DataFrame, lag_days: int) -> pd.Series:
  """Per-snapshot chart dates (see the module doc).

  `snap` has one row per CSV row with columns country, scrape_day (int days since epoch),
  artist_title, on_chart. Returns the chart day (int days since epoch) per row.
  """
  keys = snap[["country", "scrape_day"]].drop_duplicates().sort_values(["country", "scrape_day"])
  keys["rank"] = keys.groupby("country").cumcount()
  rows = snap.merge(keys, on=["country", "scrape_day"], how="left")
  # The same song in consecutive snapshots of a country: increase of its days counter.
  prev = rows[["country", "rank", "artist_title", "on_chart"]].copy()
  prev["rank"] += 1
  both = rows.merge(prev, on=["country", "rank", "artist_title"], suffixes=("", "_prev"))
  both["dd"] = both["on_chart"] - both["on_chart_prev"]
  both = both[both["dd"].notna()]
  step = (both.groupby(["country", "rank", "dd"]).size().rename("n").reset_index()
          .sort_values(["country", "rank", "n", "dd"], ascending=[True, True, False, True])
          .drop_duplicates(["country", "rank"]).set_index(["country", "rank"])["dd"])
  keys = keys.set_index(["country", "rank"])
  keys["step"] = step.reindex(keys.index)
  keys = keys.reset_index()
  gap = keys.groupby("country")["scrape_day"].diff()
  first = keys["rank"] == 0
  keys["step"] = keys["step"].where(keys["step"].notna(), gap).where(~first, 0).astype(np.int64)
  keys["index"] = keys.groupby("country")["step"].cumsum()
  offset = keys["scrape_day"] - keys["index"]
  mode = offset.groupby(keys["country"]).agg(lambda x: x.value_counts().sort_index().idxmax())
  keys["chart_day"] = keys["index"] + keys["country"].map(mode) - lag_days
  return rows.merge(keys[["country", "scrape_day", "chart_day"]], on=["country", "scrape_day"],
                    how="left")["chart_day"].to_numpy()


def load_daily_csv(path: str, *, lag_days: int = 2) -> pd.DataFrame:
  """Reads the kworb daily CSV into chart observations; see the module doc for every rule.

  Returns a DataFrame with `tables.CHART_COLUMNS` (coerced) plus EXTRA_COLUMNS, sorted by
  (region, date, pos), one row per (region, chart date, pos), index 0..n-1.
  """
  try:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
  except pd.errors.ParserError as e:
    raise ValueError(f"{path}: malformed CSV: {e}") from None
  missing = [c for c in CSV_COLUMNS if c not in raw.columns]
  if missing:
    raise ValueError(f"{path}: line 1: missing column(s) {missing}; expected {CSV_COLUMNS}")
  raw = raw.reset_index(drop=True)
  if raw.empty:
    return tables.coerce(pd.DataFrame({c: [] for c in list(tables.CHART_COLUMNS) + EXTRA_COLUMNS}),
                         "charts")

  scrape = raw["scrape_date"].str.strip()
  days = pd.to_datetime(scrape.where(scrape.str.match(_DATE)), format="%Y-%m-%d", errors="coerce")
  if days.isna().any():
    i = days.isna().idxmax()
    _fail(path, i, "scrape_date", raw["scrape_date"][i], "not a YYYY-MM-DD date")
  region = raw["country"].str.strip().str.lower()
  if not region.str.match(_REGION).all():
    i = (~region.str.match(_REGION)).idxmax()
    _fail(path, i, "country", raw["country"][i], "not a region code")
  pos = parse_number(raw["pos"], path, "pos")
  if (pos.isna() | (pos < 1)).any():
    i = (pos.isna() | (pos < 1)).idxmax()
    _fail(path, i, "pos", raw["pos"][i], "not a position >= 1")
  movement = raw["p_plus"].str.strip()
  bad = ~(movement.str.match(_MOVEMENT) | (movement == ""))
  if bad.any():
    i = bad.idxmax()
    _fail(path, i, "p_plus", raw["p_plus"][i], "not a movement (=, +N, -N, NEW, RE)")
  pc = raw["peak_count"].str.strip()
  pc_ok = pc.str.match(r"^\(x\d+\)$") | pc.isin(_MISSING)
  if not pc_ok.all():
    i = (~pc_ok).idxmax()
    _fail(path, i, "peak_count", raw["peak_count"][i], "expected '(xN)' or empty")
  names = split_artist_title(raw["artist_title"], path)

  out = pd.DataFrame({
      "region": region,
      "period": "daily",
      "pos": pos.astype(np.int64),
      "track_id": "",
      "artist": names["artist"],
      "title": names["title"],
      "featured": names["featured"],
      "artist_id": "",
      "movement": movement,
      "source": "kworb_csv",
      "scrape_date": scrape,
      "peak_count": pd.to_numeric(pc.str.extract(r"(\d+)")[0], errors="coerce").astype(np.float64),
  })
  for c, o in NUMBER_COLUMNS.items():
    out[o] = parse_number(raw[c], path, c)

  key = out[["region", "pos"]].assign(_d=scrape)
  dup = key.duplicated(keep="first")
  if dup.any():
    i = dup.idxmax()
    j = (key == key.loc[i]).all(axis=1).idxmax()
    _fail(path, i, "pos", raw["pos"][i],
          f"duplicate position for ({scrape[i]}, {region[i]}), first on line {j + 2}")

  epoch = np.datetime64("1970-01-01", "D")
  scrape_day = (days.to_numpy().astype("datetime64[D]") - epoch).astype(np.int64)
  snap = pd.DataFrame({"country": region, "scrape_day": scrape_day,
                       "artist_title": raw["artist_title"], "on_chart": out["on_chart"]})
  chart_day = _chart_dates(snap, lag_days)
  out["date"] = np.datetime_as_string(epoch + chart_day.astype("timedelta64[D]"), unit="D")
  out["_scrape_day"] = scrape_day
  out["_chart_day"] = chart_day

  # Stale repeats: keep a snapshot only if its chart date is later than every earlier snapshot's.
  snaps = (out[["region", "_scrape_day", "_chart_day"]].drop_duplicates()
           .sort_values(["region", "_scrape_day"]))
  before = snaps.groupby("region")["_chart_day"].cummax().groupby(snaps["region"]).shift()
  snaps = snaps[before.isna() | (snaps["_chart_day"] > before)]
  out = out.merge(snaps[["region", "_scrape_day"]], on=["region", "_scrape_day"])
  out = out.drop(columns=["_scrape_day", "_chart_day"]).sort_values(["region", "date", "pos"], kind="stable")
  cols = list(tables.CHART_COLUMNS) + EXTRA_COLUMNS
  return tables.coerce(out[cols].reset_index(drop=True), "charts")


def summary(charts: pd.DataFrame) -> str:
  """A few lines: rows, regions, chart dates, scrape lags."""
  lag = (pd.to_datetime(charts["scrape_date"]) - pd.to_datetime(charts["date"])).dt.days
  lines = [f"{len(charts):,} chart rows, {charts['region'].nunique()} regions, "
           f"{charts['date'].min()} .. {charts['date'].max()}"]
  for r, g in charts.groupby("region"):
    span = (pd.Timestamp(g["date"].max()) - pd.Timestamp(g["date"].min())).days + 1
    lines.append(f"  {r}: {g['date'].nunique()} chart dates of {span} days "
                 f"({g['date'].min()} .. {g['date'].max()}), scrape lag "
                 f"{sorted(lag[g.index].unique().tolist())} days")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("csv", help="kworb daily CSV (.csv or .csv.gz)")
  ap.add_argument("--raw", required=True, help="raw-data directory; writes RAW/charts.csv")
  ap.add_argument("--lag-days", type=int, default=2,
                  help="most common scrape-to-chart lag in days (default 2, see the module doc)")
  args = ap.parse_args(argv)
  charts = load_daily_csv(args.csv, lag_days=args.lag_days)
  os.makedirs(args.raw, exist_ok=True)
  out = os.path.join(args.raw, "charts.csv")
  tables.write(charts, out, "charts")
  print(summary(charts))
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
