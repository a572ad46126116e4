"""data_prep.kworb_csv: the shared kworb daily CSV -> chart observations."""
import math
import os

import numpy as np
import pandas as pd
import pytest

from data_prep import kworb_csv, tables

HERE = os.path.dirname(os.path.abspath(__file__))
EXCERPT = os.path.join(HERE, "fixtures", "charts", "kworb_daily_excerpt.csv")
# Cut from the shared kworb_daily_top50_2025-06_2026-02.csv.gz by fixtures/charts/make_kworb_daily_cut.py.
REAL_CUT = os.path.join(HERE, "fixtures", "charts", "kworb_daily_cut.csv.gz")


@pytest.fixture(scope="module")
def excerpt():
  return kworb_csv.load_daily_csv(EXCERPT)


def _row(df, region, title):
  rows = df[(df["region"] == region) & (df["title"] == title)]
  assert len(rows) >= 1, (region, title)
  return rows.iloc[0]


def test_excerpt_schema_and_counts(excerpt):
  assert list(excerpt.columns) == list(tables.CHART_COLUMNS) + kworb_csv.EXTRA_COLUMNS
  # 47 data rows; the 10 rows of the stale ph scrape of 2025-06-20 are dropped.
  assert len(excerpt) == 37
  assert set(excerpt["period"]) == {"daily"} and set(excerpt["source"]) == {"kworb_csv"}
  assert set(excerpt["track_id"]) == {""} and set(excerpt["artist_id"]) == {""}
  assert excerpt["pos"].dtype == np.int64
  assert not excerpt.duplicated(["region", "date", "pos"]).any()


def test_featured_split(excerpt):
  r = _row(excerpt, "id", "Mangu")
  assert (r["artist"], r["featured"]) == ("Fourtwnty", "Charita Utami")
  assert r["date"] == "2025-06-19" and r["scrape_date"] == "2025-06-21"
  assert (r["pos"], r["movement"], r["on_chart"], r["peak"]) == (1, "=", 123.0, 1.0)
  assert (r["peak_count"], r["streams"], r["streams_delta"]) == (54.0, 1769625.0, -97090.0)
  assert (r["streams_7day"], r["streams_7day_delta"], r["total"]) == (13164154.0, -291573.0,
                                                                       163416912.0)
  r = _row(excerpt, "id", "Ngapain Repot")  # quoted cell, two featured artists
  assert (r["artist"], r["featured"]) == ("Toton Caribo", "Wizz Baker; Fresly Nikijuluw")
  r = _row(excerpt, "vn", "Chuyện Đôi Ta")  # parentheses inside the artist and inside "(w/ ...)"
  assert (r["artist"], r["featured"]) == ("Emcee L (Da LAB)", "Muộii (Starry Night)")
  assert r["date"] == "2025-06-09"


def test_title_with_dash(excerpt):
  r = _row(excerpt, "id", "You'll Be in My Heart - Spotify Singles")
  assert (r["artist"], r["featured"], r["pos"], r["streams"]) == ("NIKI", "", 3, 1032738.0)
  r = _row(excerpt, "ph", "Tingin")
  assert (r["artist"], r["featured"]) == ("Cup of Joe", "Janine")


def test_new_re_and_signed_deltas(excerpt):
  r = _row(excerpt, "kr", "With you")
  assert (r["artist"], r["featured"], r["movement"]) == ("Jimin", "HA SUNG WOON", "RE")
  assert r["on_chart"] == 682.0 and r["peak_count"] == 1.0 and r["streams"] == 17615.0
  assert math.isnan(r["streams_delta"]) and r["streams_7day_delta"] == 17615.0
  r = _row(excerpt, "id", "Alamak")
  assert (r["movement"], r["on_chart"], r["featured"]) == ("NEW", 1.0, "Adrian Khalif")
  assert math.isnan(r["streams_delta"]) and r["date"] == "2025-10-03"  # a Friday
  t = excerpt[(excerpt["region"] == "ph") & (excerpt["title"] == "Tibok")].set_index("date")
  assert t.loc["2025-06-17", "movement"] == "+4"
  assert t.loc["2025-06-17", "streams_delta"] == 82035.0
  assert t.loc["2025-06-17", "streams_7day_delta"] == -169791.0
  assert t.loc["2025-06-20", "movement"] == "+1"
  assert excerpt.loc[excerpt["title"] == "Kalimutan Ka", "peak_count"].isna().all()


def test_chart_dates_and_stale_scrape(excerpt):
  ph = excerpt[excerpt["region"] == "ph"]
  # Scrapes 06-19, 06-20 (identical page: dropped), 06-21 (days +2), 06-22 -> charts 2 days earlier.
  dates = ph.groupby("date")["scrape_date"].unique().map(list).to_dict()
  assert dates == {"2025-06-17": ["2025-06-19"], "2025-06-19": ["2025-06-21"],
                   "2025-06-20": ["2025-06-22"]}
  assert (ph.groupby("date").size() == 10).all()
  multo = ph[ph["title"] == "Multo"].set_index("date")
  assert multo["on_chart"].to_dict() == {"2025-06-17": 159.0, "2025-06-19": 161.0,
                                         "2025-06-20": 162.0}
  lag = pd.to_datetime(excerpt["scrape_date"]) - pd.to_datetime(excerpt["date"])
  assert (lag.dt.days == 2).all()
  assert (kworb_csv.load_daily_csv(EXCERPT, lag_days=1)["date"]
          == (pd.to_datetime(excerpt["scrape_date"]) - pd.Timedelta(days=1))
          .dt.strftime("%Y-%m-%d").to_numpy()).all()


def test_cli_writes_charts(tmp_path, excerpt):
  kworb_csv.main([EXCERPT, "--raw", str(tmp_path / "raw")])
  back = tables.read(str(tmp_path / "raw" / "charts.csv"), "charts")
  assert len(back) == len(excerpt)
  assert back["title"].tolist() == excerpt["title"].tolist()
  np.testing.assert_array_equal(pd.to_numeric(back["streams_delta"]), excerpt["streams_delta"])


def _write(tmp_path, text, name="bad.csv"):
  p = tmp_path / name
  p.write_text(text, encoding="utf-8")
  return str(p)


def _lines(n=4):
  with open(EXCERPT, encoding="utf-8") as f:
    return f.read().splitlines()[:n + 1]


@pytest.mark.parametrize("line,column,old,new", [
    (3, "streams", '"1,133,247"', '"1,13x,247"'),
    (4, "streams", '"1,032,738"', '"10,32,738"'),
    (2, "days", ",123,", ",abc,"),
    (3, "pos", "id,2,", "id,0,"),
    (5, "p_plus", ",=,", ",UP,"),
    (2, "artist_title", "Fourtwnty - Mangu", "Fourtwnty Mangu"),
    (3, "scrape_date", "2025-06-21,id,2", "2025/06/21,id,2"),
    (4, "peak_count", "(x24)", "x24"),
    (5, "streams_7day_delta", '"+46,259"', '"+-46,259"'),
])
def test_malformed_value(tmp_path, line, column, old, new):
  lines = _lines()
  assert old in lines[line - 1]
  lines[line - 1] = lines[line - 1].replace(old, new, 1)
  path = _write(tmp_path, "\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=f"{path}: line {line}, column '{column}'"):
    kworb_csv.load_daily_csv(path)


def test_malformed_structure(tmp_path):
  lines = _lines()
  head = lines[0].replace(",streams,", ",plays,")
  path = _write(tmp_path, "\n".join([head] + lines[1:]) + "\n", "nocol.csv")
  with pytest.raises(ValueError, match=r"nocol.csv: line 1: missing column\(s\) \['streams'\]"):
    kworb_csv.load_daily_csv(path)
  path = _write(tmp_path, "\n".join(lines[:2] + [lines[2] + ",1,2"] + lines[3:]) + "\n",
                "fields.csv")
  with pytest.raises(ValueError, match="fields.csv: malformed CSV"):
    kworb_csv.load_daily_csv(path)
  path = _write(tmp_path, "\n".join(lines[:3] + [lines[2]]) + "\n", "dup.csv")
  with pytest.raises(ValueError, match="dup.csv: line 4, column 'pos': duplicate position"):
    kworb_csv.load_daily_csv(path)


def test_real_cut():
  """The real kworb CSV, cut to 'my' and 'sg' scraped 2025-09-05 .. 2025-11-10 (6,700 rows: the
  2025-09-07..10 outage, stale pages, Taylor Swift's album Friday).

  Golden values: tests/fixtures/charts/make_kworb_daily_cut.py derives them from the fixture
  with pandas alone (a stale page = the same (artist_title, days) rows as the country's previous
  scrape; chart date = scrape date - 2 days), not with kworb_csv. The same derivation on the whole
  shared file gives the counts this test had there (90,350 rows, 71 stale pages, 86,800 kept,
  NEW 152 of 238 on Fridays, 300 missing deltas).
  """
  df = kworb_csv.load_daily_csv(REAL_CUT)
  raw = pd.read_csv(REAL_CUT, dtype=str)
  assert len(raw) == 6700
  # 14 stale (country, scrape) snapshots of 50 rows are dropped.
  assert len(df) == 6700 - 14 * 50 == 6000
  assert sorted(df["region"].unique()) == ["my", "sg"]
  per = df.groupby(["region", "date"])["pos"]
  assert (per.size() == 50).all() and (per.min() == 1).all() and (per.max() == 50).all()
  assert df.groupby("region")["date"].nunique().to_dict() == {"my": 60, "sg": 60}
  assert (df["date"].min(), df["date"].max()) == ("2025-09-03", "2025-11-08")
  lag = (pd.to_datetime(df["scrape_date"]) - pd.to_datetime(df["date"])).dt.days
  assert (lag == 2).all()
  # After the outage (stale scrapes 09-07..10) the 09-11 page jumps 5 chart days: 09-04 -> 09-09.
  my = sorted(df.loc[df["region"] == "my", "date"].unique())
  assert my[my.index("2025-09-04") + 1] == "2025-09-09"
  # Spotify releases on Fridays: 'NEW' entries fall on Friday charts.
  new = pd.to_datetime(df.loc[df["movement"] == "NEW", "date"]).dt.day_name().value_counts()
  assert new.index[0] == "Friday" and new.iloc[0] == 32 and new.sum() == 34
  assert df["streams"].notna().all() and (df["streams"] > 0).all()
  assert df["on_chart"].notna().all() and df["peak"].notna().all()
  assert int(df["streams_delta"].isna().sum()) == 37  # NEW/RE rows have no delta
  assert (df["title"] != "").all() and (df["artist"] != "").all()
  taylor = df[(df["artist"] == "Taylor Swift") & (df["movement"] == "NEW")]
  assert set(taylor["date"]) >= {"2025-10-03"}
