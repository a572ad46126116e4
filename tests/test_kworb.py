"""kworb parsers (hand-made pages following KWORB.md), the polite caching fetcher, and the
resumable crawl. No network: `responses` answers every request."""
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys

import pandas as pd
import pytest
import requests
import responses

from data_prep import kworb, tables
from fakes import FakeTime, FaultServer

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "kworb")
BASE = "https://kworb.net/spotify"
DAILY_URL = f"{BASE}/country/us_daily.html"
WEEKLY_URL = f"{BASE}/country/gb_weekly.html"
MANGU = "5ZuyCLPxlTzrHCs5m1gNOy"
KOMANG = "2tnVG71enUj33Ic2nFN6kZ"  # answers 404 in the crawl tests
NAN = math.nan


def fixture(name):
  with open(os.path.join(FIX, name), encoding="utf-8") as f:
    return f.read()



def make_fetcher(tmp_path, **kw):
  t = FakeTime()
  kw.setdefault("min_interval", 0.0)
  kw.setdefault("jitter", 0.0)
  f = kworb.Fetcher(str(tmp_path / "cache"), sleep=t.sleep, clock=t.clock, **kw)
  return f, t


# ---------------------------------------------------------------------------------- parsers

DAILY_COLS = ["pos", "movement", "artist", "artist_id", "title", "track_id", "featured", "on_chart",
              "peak", "peak_count", "streams", "streams_delta", "streams_7day",
              "streams_7day_delta", "total"]
DAILY_EXPECTED = [
    (1, "=", "Fourtwnty", "0Xc0AJ4mQy8oCE3oYjGS0O", "Mangu", MANGU, "Charita Utami",
     123, 1, 54, 1769625, -97090, 13164154, -291573, 163416912),
    (2, "+1", "Naykilla", "6bKDvjHG8VxSeDcQhrQZ8P", "Kasih Aba Aba", "1Kp8vZcTa3PWdgYgDk2XnV",
     "Tenxi; Jemsii", 38, 2, NAN, 1133247, 15802, 8342999, 129041, 100077892),
    (3, "NEW", "BLACKPINK", "41MozSoPIsD1dJM0CLPjZF", "JUMP", "3fQkY9DvUjPbTnEa6BmkuX", "",
     1, 3, 1, 969868, NAN, 969868, 969868, 969868),
    (4, "-2", "NIKI", "2kxP07DLgs4xlWz8YHlvfh", "You'll Be in My Heart - Spotify Singles",
     "0hVXuCcriWRGvwMV1r5Yn9", "", 108, 1, 24, 905112, -53896, 7605435, -123406, 116412366),
    (5, "RE", "Simon & Garfunkel", "70cRZdQywnSFp9pnc2WTCE", "The Sound of Silence",
     "5y788ya4NvwhBznoDIcXwK", "", 682, 2, NAN, 880001, NAN, 2001455, 4946, 5065775),
    (6, "+5", "PLAVE", "1NfSB3Bf3w7Vb9a6yEDgwZ", "かくれんぼ", "6mW1fGxvH0OqJ9xZB9sLDy", "",
     12, 6, NAN, 795000, 45230, 5302882, -14911, 23000000),
    (7, "=", "Raim Laode", "4Ws0JmXZbxLmH4gyLXr1zq", "Komang", KOMANG, "",
     859, 1, 64, 744756, -129, 5263038, -45677, 478936728),
]
WEEKLY_EXPECTED = [
    (1, "=", "Fourtwnty", "0Xc0AJ4mQy8oCE3oYjGS0O", "Mangu", MANGU, "Charita Utami",
     18, 1, 9, 12400512, -301220, NAN, NAN, 160201776),
    (2, "NEW", "Sabrina Carpenter", "74KM79TiuVKeVCqs8QtB0B", "Manchild", "42UBPzRMh5yyz0EDPr6fr1",
     "", 1, 2, 1, 9876543, NAN, NAN, NAN, 9876543),
    (3, "RE", "NIKI", "2kxP07DLgs4xlWz8YHlvfh", "You'll Be in My Heart - Spotify Singles",
     "0hVXuCcriWRGvwMV1r5Yn9", "", 15, 1, NAN, 7001000, NAN, NAN, NAN, 116412366),
    (4, "+5", "Doechii", "4E2rKHVDssGJm2SCDOMMJB", "Anxiety", "1Iq8oo9XkmmvCQiGOfORiz",
     "Sleepy Hallow", 10, 3, NAN, 5555555, 84270, NAN, NAN, 60000000),
]
ALL_TRACKS = sorted({r[5] for r in DAILY_EXPECTED + WEEKLY_EXPECTED})


def expected_frame(rows):
  df = pd.DataFrame(rows, columns=DAILY_COLS)
  for c in DAILY_COLS[7:]:
    df[c] = df[c].astype("float64")
  return df


def test_parse_daily_chart_every_field():
  date, df = kworb.parse_chart_page(fixture("us_daily.html"), DAILY_URL)
  assert date == "2026-02-14"
  assert list(df.columns) == list(tables.CHART_COLUMNS) + list(kworb.CHART_EXTRA_COLUMNS)
  assert len(df) == 7
  assert set(df["region"]) == {"us"} and set(df["period"]) == {"daily"}
  assert set(df["date"]) == {"2026-02-14"} and set(df["source"]) == {"kworb_chart"}
  pd.testing.assert_frame_equal(df[DAILY_COLS].reset_index(drop=True),
                                expected_frame(DAILY_EXPECTED), check_dtype=False)
  assert df["pos"].dtype == "int64" and df["streams"].dtype == "float64"
  # Round-trips through the shared table schema.
  tables.coerce(df, "charts")


def test_parse_weekly_chart_every_field():
  date, df = kworb.parse_chart_page(fixture("gb_weekly.html"), WEEKLY_URL)
  assert date == "2026-02-12"
  assert set(df["region"]) == {"gb"} and set(df["period"]) == {"weekly"}
  pd.testing.assert_frame_equal(df[DAILY_COLS].reset_index(drop=True),
                                expected_frame(WEEKLY_EXPECTED), check_dtype=False)


def test_chart_cell_without_track_link_falls_back_to_text():
  html = fixture("us_daily.html").replace(
      f'<a href="../track/{MANGU}.html">Mangu</a>', "Mangu")
  _, df = kworb.parse_chart_page(html, DAILY_URL)
  row = df.iloc[0]
  assert (row["artist"], row["title"], row["track_id"]) == ("Fourtwnty", "Mangu", "")
  assert row["featured"] == "Charita Utami" and row["artist_id"] == "0Xc0AJ4mQy8oCE3oYjGS0O"


def test_layout_error_wrong_table_id_names_url_and_table():
  with pytest.raises(kworb.KworbLayoutError) as e:
    kworb.parse_chart_page(fixture("daily_wrong_table_id.html"), DAILY_URL)
  msg = str(e.value)
  assert DAILY_URL in msg and "spotifydaily" in msg and "spotifydaily_v2" in msg
  assert e.value.url == DAILY_URL
  # A weekly page served under a daily URL is a layout error too.
  with pytest.raises(kworb.KworbLayoutError, match=r"no <table id='spotifydaily'>.*spotifyweekly"):
    kworb.parse_chart_page(fixture("gb_weekly.html"), DAILY_URL)


def test_layout_error_missing_column_names_expected_and_found_header():
  with pytest.raises(kworb.KworbLayoutError) as e:
    kworb.parse_chart_page(fixture("daily_missing_column.html"), DAILY_URL)
  msg = str(e.value)
  assert DAILY_URL in msg
  assert "column 10 header expected '7Day+', found 'Total'" in msg


def test_layout_errors_in_rows_dates_and_urls():
  daily = fixture("us_daily.html")
  with pytest.raises(kworb.KworbLayoutError, match=r"no chart date YYYY/MM/DD"):
    kworb.parse_chart_page(daily.replace("2026/02/14", "today"), DAILY_URL)
  with pytest.raises(kworb.KworbLayoutError, match=r"row 3 column 'Streams': expected a number, "
                                                   r"found '1,133,247 streams'"):
    kworb.parse_chart_page(daily.replace("1,133,247<", "1,133,247 streams<"), DAILY_URL)
  with pytest.raises(kworb.KworbLayoutError, match=r"row 2: expected 11 cells, found 10"):
    kworb.parse_chart_page(daily.replace("<td>(x54)</td>", ""), DAILY_URL)
  with pytest.raises(kworb.KworbLayoutError, match=r"column 'P\+'.*found 'UP'"):
    kworb.parse_chart_page(daily.replace('"np">=<', '"np">UP<', 1), DAILY_URL)
  with pytest.raises(ValueError, match="not a kworb chart page URL"):
    kworb.parse_chart_page(daily, f"{BASE}/country/us_monthly.html")


TRACK_URL = f"{BASE}/track/{MANGU}.html"
TRACK_EXPECTED = [  # (period, date, region, pos, streams)
    ("weekly", "2026-02-12", "global", 180, 5901234), ("weekly", "2026-02-12", "id", 1, 12400512),
    ("weekly", "2026-02-12", "my", 45, 310220), ("weekly", "2026-02-05", "global", 175, 6001002),
    ("weekly", "2026-02-05", "id", 1, 12701732), ("weekly", "2026-02-05", "my", 52, 290001),
    ("weekly", "2026-01-29", "id", 2, 11999000), ("weekly", "2026-01-29", "us", 199, 2100000),
    ("daily", "2026-02-14", "id", 1, 1769625), ("daily", "2026-02-13", "global", 190, 850000),
    ("daily", "2026-02-13", "id", 1, 1866715),
]


def test_parse_track_page_both_tables():
  df = kworb.parse_track_page(fixture("track.html"), TRACK_URL)
  got = list(zip(df["period"], df["date"], df["region"], df["pos"], df["streams"]))
  assert got == [(p, d, r, pos, float(s)) for p, d, r, pos, s in TRACK_EXPECTED]
  assert set(df["track_id"]) == {MANGU} and set(df["source"]) == {"kworb_track"}
  assert set(df["artist"]) == {"Fourtwnty"} and set(df["title"]) == {"Mangu"}
  assert set(df["artist_id"]) == {"0Xc0AJ4mQy8oCE3oYjGS0O"} and set(df["featured"]) == {""}
  assert set(df["movement"]) == {""}
  assert df[["on_chart", "peak"] + list(kworb.CHART_EXTRA_COLUMNS)].isna().all().all()
  tables.coerce(df, "charts")


def test_track_page_without_heading_has_empty_artist_and_title():
  html = re.sub(r'<span class="pagetitle">.*?</span>\n', "", fixture("track.html"))
  df = kworb.parse_track_page(html, TRACK_URL)
  assert len(df) == 11 and set(df["artist"]) == {""} and set(df["title"]) == {""}


def test_track_page_layout_errors():
  html = fixture("track.html")
  one_table = html[:html.rindex("<br>\n<table>")] + "</div></div></body></html>"
  with pytest.raises(kworb.KworbLayoutError, match=r"expected 2 tables .*found 1") as e:
    kworb.parse_track_page(one_table, TRACK_URL)
  assert TRACK_URL in str(e.value)
  with pytest.raises(kworb.KworbLayoutError,
                     match=r"weekly table row 4 column 'my': expected 'pos \(streams\)' or '--', "
                           r"found '45 \[310,220\]'"):
    kworb.parse_track_page(html.replace("(310,220)", "[310,220]"), TRACK_URL)
  with pytest.raises(kworb.KworbLayoutError, match=r"column 3 header: .* found 'Indonesia'"):
    kworb.parse_track_page(html.replace("<th>ID</th>", "<th>Indonesia</th>", 1), TRACK_URL)
  with pytest.raises(kworb.KworbLayoutError, match=r"expected 'Total', 'Peak' or a date .* "
                                                   r"found 'Average'"):
    kworb.parse_track_page(html.replace("<td>Peak</td>", "<td>Average</td>", 1), TRACK_URL)


ARTIST_URL = f"{BASE}/artist/0Xc0AJ4mQy8oCE3oYjGS0O_songs.html"


def test_parse_artist_songs():
  summary, songs, updated = kworb.parse_artist_songs(fixture("artist_songs.html"), ARTIST_URL)
  assert updated == "2026-02-14"
  assert summary == {
      "artist_id": "0Xc0AJ4mQy8oCE3oYjGS0O",
      "streams": dict(total=1234567890.0, as_lead=1100000000.0, solo=950000000.0,
                      as_feature=134567890.0),
      "daily": dict(total=2345678.0, as_lead=2100000.0, solo=1800000.0, as_feature=245678.0),
      "tracks": dict(total=120.0, as_lead=98.0, solo=80.0, as_feature=22.0)}
  assert list(songs.columns) == ["title", "track_id", "streams", "daily"]
  assert songs["title"].tolist() == ["Mangu", "Hitam & Putih", "Aku Tenang"]
  assert songs["track_id"].tolist() == [MANGU, "7q3kkfcYsTCMsdyOoArdcJ", ""]
  assert songs["streams"].tolist() == [400123456.0, 300000000.0, 12345678.0]
  assert songs["daily"].tolist()[:2] == [1769625.0, 250000.0] and math.isnan(songs["daily"][2])


def test_artist_songs_layout_errors():
  html = fixture("artist_songs.html")
  with pytest.raises(kworb.KworbLayoutError, match=r"no song table with header 'Song Title \| "
                                                   r"Streams \| Daily'.*'Song'") as e:
    kworb.parse_artist_songs(html.replace(">Song Title<", ">Song<"), ARTIST_URL)
  assert ARTIST_URL in str(e.value)
  with pytest.raises(kworb.KworbLayoutError, match=r"no summary table .*As lead"):
    kworb.parse_artist_songs(html.replace(">As lead<", ">Lead<"), ARTIST_URL)
  with pytest.raises(kworb.KworbLayoutError, match=r"row\(s\) \['Tracks'\] missing"):
    kworb.parse_artist_songs(re.sub(r"<tr><td>Tracks</td>.*?</tr>", "", html), ARTIST_URL)


# ---------------------------------------------------------------------------------- fetcher

URL = f"{BASE}/track/{MANGU}.html"


def waits(f):
  """The waits between retries the fetcher planned (responses does not sleep them)."""
  return [w for _, _, w in f.http.retries]


@responses.activate
def test_429_with_retry_after_then_success(tmp_path):
  responses.get(URL, status=429, headers={"Retry-After": "7"})
  responses.get(URL, body="<html>ok</html>")
  f, t = make_fetcher(tmp_path)
  page = f.get(URL)
  assert page.ok and page.text == "<html>ok</html>" and not page.from_cache
  assert waits(f) == [7.0]
  assert len(responses.calls) == 2 and f.http.stats["retries"] == 1


@responses.activate
def test_5xx_backs_off_exponentially_then_success(tmp_path):
  responses.get(URL, status=500)
  responses.get(URL, status=503)
  responses.get(URL, body="fine")
  f, t = make_fetcher(tmp_path, backoff=1.5)
  assert f.get(URL).text == "fine"
  assert waits(f) == [1.5, 3.0]


@responses.activate
def test_network_error_is_a_failed_page_asked_again_next_time(tmp_path):
  responses.get(URL, body=requests.exceptions.ContentDecodingError("broken gzip"))
  responses.get(URL, body="fine")
  f, t = make_fetcher(tmp_path)
  page = f.get(URL)
  assert not page.ok and page.status is None and "ContentDecodingError" in page.reason
  assert f.cached(URL) is None and f.stats["failed"] == 1
  assert f.get(URL).text == "fine"


@responses.activate
def test_retry_after_above_cap_gives_up_with_reason(tmp_path):
  responses.get(URL, status=429, headers={"Retry-After": "3600"})
  f, t = make_fetcher(tmp_path, max_wait=60)
  page = f.get(URL)
  assert not page.ok and page.status == 429
  assert "retry after 3600 s" in page.reason and "Retry-After above the cap" in page.reason
  assert t.sleeps == [] and len(responses.calls) == 1
  assert f.cached(URL) is None  # not cached: asked again next time
  assert f.stats["failed"] == 1


@responses.activate
def test_retries_exhausted_and_4xx_not_retried(tmp_path):
  for _ in range(3):
    responses.get(URL, status=502)
  other = f"{BASE}/track/other.html"
  responses.get(other, status=403)
  f, t = make_fetcher(tmp_path, max_tries=3, backoff=1.0)
  page = f.get(URL)
  assert page.status == 502 and "gave up after 3 attempts" in page.reason
  assert waits(f) == [1.0, 2.0]
  page = f.get(other)
  assert page.status == 403 and "not retried" in page.reason and waits(f) == [1.0, 2.0]


def chart_parser(text):
  return kworb.parse_chart_page(text, DAILY_URL)


@pytest.mark.parametrize("bad", ["truncated", "interstitial"])
def test_incomplete_page_is_not_cached_and_fetched_again(tmp_path, bad):
  # The reported defect: a chart page cut short (no Content-Length) or a 200 "Just a
  # moment..." page was cached as good; reruns kept it and that day's rows were lost.
  daily = fixture("us_daily.html")
  answer = ({"status": 200, "body": daily, "truncate": daily.index("</table>")}
            if bad == "truncated" else {"status": 200, "body": CLOUDFLARE})
  with FaultServer() as srv:
    path = "/spotify/country/us_daily.html"
    srv.script(path, answer, answer, answer, {"status": 200, "body": daily})
    f, t = make_fetcher(tmp_path, max_tries=3, backoff=5.0)
    page = f.get(srv.url + path, parse=chart_parser)  # 3 tries in this run, all bad
    assert not page.ok and "not cached" in page.reason and f.cached(srv.url + path) is None
    assert srv.hits[path] == 3 and t.sleeps == [5.0, 10.0]
    page = make_fetcher(tmp_path)[0].get(srv.url + path, parse=chart_parser)  # the next run
    assert page.ok and not page.from_cache and len(page.parsed[1]) == 7
    assert srv.hits[path] == 4
    again = make_fetcher(tmp_path)[0].get(srv.url + path, parse=chart_parser)
    assert again.from_cache and len(again.parsed[1]) == 7 and srv.hits[path] == 4


def test_incomplete_page_then_good_one_in_the_same_run(tmp_path):
  daily = fixture("us_daily.html")
  with FaultServer() as srv:
    path = "/spotify/country/us_daily.html"
    srv.script(path, {"status": 200, "body": daily, "truncate": 2000},
               {"status": 200, "body": daily})
    f, t = make_fetcher(tmp_path, backoff=3.0)
    page = f.get(srv.url + path, parse=chart_parser)
    assert page.ok and len(page.parsed[1]) == 7 and srv.hits[path] == 2 and t.sleeps == [3.0]
    assert f.cached(srv.url + path).text == daily


@responses.activate
def test_bad_page_cached_by_an_older_version_is_fetched_again(tmp_path):
  daily = fixture("us_daily.html")
  f, _ = make_fetcher(tmp_path)
  f._store(DAILY_URL, DAILY_URL, 200, daily[:3000].encode(), "2026-02-14T00:00:00+00:00", "")
  responses.get(DAILY_URL, body=daily)
  page = f.get(DAILY_URL, parse=chart_parser)
  assert page.ok and not page.from_cache and len(responses.calls) == 1
  assert f.stats["refetched"] == 1 and f.cached(DAILY_URL).text == daily


@responses.activate
def test_polite_interval_between_requests(tmp_path):
  for i in range(3):
    responses.get(f"{BASE}/track/t{i}.html", body="x")
  f, t = make_fetcher(tmp_path, min_interval=1.0)
  f.get(f"{BASE}/track/t0.html")
  f.get(f"{BASE}/track/t1.html")
  t.now += 0.25  # time spent elsewhere counts toward the interval
  f.get(f"{BASE}/track/t2.html")
  assert t.sleeps == [1.0, 0.75]
  assert "mpjax" in responses.calls[0].request.headers["User-Agent"]


@responses.activate
def test_cache_by_sha256_atomic_and_refresh(tmp_path):
  responses.get(URL, body="v1")
  responses.get(URL, body="v2")
  f, _ = make_fetcher(tmp_path)
  assert f.get(URL).text == "v1"
  h = hashlib.sha256(URL.encode()).hexdigest()
  assert sorted(os.listdir(tmp_path / "cache")) == [f"{h}.html", f"{h}.json"]  # no temp files
  meta = json.loads((tmp_path / "cache" / f"{h}.json").read_text())
  assert meta["url"] == URL and meta["status"] == 200 and meta["fetched_at"]
  f2, _ = make_fetcher(tmp_path)  # a new process: still cached
  page = f2.get(URL)
  assert page.from_cache and page.text == "v1" and len(responses.calls) == 1
  assert f2.get(URL, refresh=True).text == "v2" and len(responses.calls) == 2
  # A chart page is cached per snapshot day: another key is another entry.
  assert f2.cached(f"{URL}@2026-02-15") is None


@responses.activate
def test_404_cached_as_never_charted(tmp_path):
  responses.get(URL, status=404)
  f, _ = make_fetcher(tmp_path)
  page = f.get(URL)
  assert page.not_found and "never charted" in page.reason
  page = make_fetcher(tmp_path)[0].get(URL)
  assert page.not_found and page.from_cache and len(responses.calls) == 1


# ---------------------------------------------------------------------------------- crawl

class Killed(BaseException):
  """Stands in for a kill -9 / Ctrl-C: nothing catches it."""


class Site:
  """Mocked kworb: us/gb daily and weekly pages, every track page (KOMANG: 404).

  `kill_at`: raise Killed on that request number (1-based) instead of answering.
  `track_status`: {track_id: (status, headers)} overrides.
  """

  def __init__(self, rsps, kill_at=None, track_status=None, broken_chart=None, chart_body=None):
    self.kill_at, self.track_status = kill_at, track_status or {}
    self.requests, self.answered = 0, []
    for cc in ("us", "gb", "global"):
      for period, name in (("daily", "us_daily.html"), ("weekly", "gb_weekly.html")):
        url = kworb.chart_url(cc, period)
        body = fixture("daily_wrong_table_id.html" if url == broken_chart else name)
        body = (chart_body or {}).get(url, body)
        answer = self._answer(lambda body=body: (200, {}, body))
        rsps.add_callback(responses.GET, url, callback=answer)
    rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/track/\w+\.html"),
                      callback=self._answer(self._track))
    self._req = None

  def _track(self):
    tid = re.search(r"/track/(\w+)\.html", self._req.url).group(1)
    if tid in self.track_status:
      status, headers = self.track_status[tid]
      return status, headers, ""
    if tid == KOMANG:
      return 404, {}, "not found"
    return 200, {}, fixture("track.html")

  def _answer(self, make):
    def callback(request):
      self.requests += 1
      if self.requests == self.kill_at:
        raise Killed(f"killed at request {self.requests}")
      self._req = request
      answer = make()
      self.answered.append(request.url)
      return answer
    return callback

  def track_requests(self):
    return [re.search(r"/track/(\w+)\.html", u).group(1) for u in self.answered if "/track/" in u]


def run_crawl(raw, site_kw=None, fetcher_kw=None, sites=None, **kw):
  """One crawl of us+gb against a fresh mocked site; returns (report, site).

  `sites` (a list) receives the site even when the crawl is killed.
  """
  with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
    site = Site(rsps, **(site_kw or {}))
    if sites is not None:
      sites.append(site)
    t = FakeTime()
    fetcher = kworb.Fetcher(os.path.join(raw, "cache", "kworb"), min_interval=0.0, jitter=0.0,
                            sleep=t.sleep,
                            clock=t.clock, **(fetcher_kw or {}))
    kw.setdefault("date", "2026-02-15")
    report = kworb.crawl(["us", "gb"], raw, fetcher=fetcher, progress=False, **kw)
  return report, site


N_REQUESTS = 4 + len(ALL_TRACKS)  # 4 chart pages, 9 track pages
KEY = ["region", "period", "date", "source", "track_id"]


def test_crawl_end_to_end(tmp_path):
  raw = str(tmp_path)
  report, site = run_crawl(raw)
  assert site.requests == N_REQUESTS
  assert sorted(site.track_requests()) == ALL_TRACKS
  charts = kworb.read_charts(os.path.join(raw, "charts.csv"))
  chart_rows = charts[charts["source"] == "kworb_chart"]
  track_rows = charts[charts["source"] == "kworb_track"]
  assert len(chart_rows) == 2 * (7 + 4) and len(track_rows) == 8 * 11
  assert not charts.duplicated(KEY).any()
  assert KOMANG not in set(track_rows["track_id"])
  us = chart_rows[(chart_rows["region"] == "us") & (chart_rows["period"] == "daily")]
  assert us.set_index("pos").loc[3, "track_id"] == "3fQkY9DvUjPbTnEa6BmkuX"
  assert us.set_index("pos").loc[1, "peak_count"] == 54.0
  mangu = track_rows[(track_rows["track_id"] == MANGU) & (track_rows["period"] == "daily")]
  assert sorted(zip(mangu["date"], mangu["region"], mangu["streams"])) == [
      ("2026-02-13", "global", 850000.0), ("2026-02-13", "id", 1866715.0),
      ("2026-02-14", "id", 1769625.0)]
  assert report["chart_pages"] == {"fetched": 4}
  assert report["track_pages"] == {"todo": 9, "fetched": 8, "not_found": 1, "remaining": 0}
  assert report["not_found"] == [KOMANG] and report["failures"] == []
  assert report["rows"] == {"total": 110, "added": 110}
  assert sorted((c["region"], c["period"], c["chart_date"], c["rows"]) for c in report["charts"]) \
      == [("gb", "daily", "2026-02-14", 7), ("gb", "weekly", "2026-02-12", 4),
          ("us", "daily", "2026-02-14", 7), ("us", "weekly", "2026-02-12", 4)]
  with open(os.path.join(raw, "crawl_report.json")) as f:
    assert json.load(f)["not_found"] == [KOMANG]
  with open(os.path.join(raw, "kworb_progress.json")) as f:
    progress = json.load(f)["tracks"]
  assert progress[KOMANG] == "not_found" and sum(v == "ok" for v in progress.values()) == 8


def test_second_crawl_makes_no_http_call_and_keeps_other_rows(tmp_path):
  raw = str(tmp_path)
  # Another stage's rows already in charts.csv survive the merge.
  other = kworb._frame([dict(region="id", period="daily", date="2025-06-21", pos=1, track_id="",
                             artist="Fourtwnty", title="Mangu", featured="", artist_id="",
                             streams=1769625.0, movement="=", on_chart=123.0, peak=1.0,
                             source="kworb_csv")], extras=False)
  tables.write(other, os.path.join(raw, "charts.csv"), "charts")
  run_crawl(raw)
  path = os.path.join(raw, "charts.csv")
  before = read_bytes(path)
  report, site = run_crawl(raw)
  assert site.requests == 0
  assert read_bytes(path) == before
  assert report["chart_pages"] == {"cached": 4} and report["track_pages"]["todo"] == 0
  charts = kworb.read_charts(path)
  assert (charts["source"] == "kworb_csv").sum() == 1 and len(charts) == 111


def test_404_track_never_requested_again(tmp_path):
  raw = str(tmp_path)
  run_crawl(raw)
  os.remove(os.path.join(raw, "kworb_progress.json"))  # even with progress lost: from the cache
  report, site = run_crawl(raw)
  assert site.requests == 0 and report["track_pages"]["not_found"] == 1
  # The next day: the chart pages are snapshotted again, the track pages are not.
  report, site = run_crawl(raw, date="2026-02-16")
  assert site.requests == 4 and site.track_requests() == []
  assert report["rows"]["added"] == 0  # same chart dates: no duplicates


def test_max_tracks_takes_best_positions_first(tmp_path):
  raw = str(tmp_path)
  report, site = run_crawl(raw, max_tracks=3)
  # Best position 1: Mangu; then position 2: Kasih Aba Aba and Manchild (by id).
  assert site.track_requests() == [MANGU, "1Kp8vZcTa3PWdgYgDk2XnV", "42UBPzRMh5yyz0EDPr6fr1"]
  assert report["track_pages"]["remaining"] == 6
  report, site = run_crawl(raw)
  assert len(site.track_requests()) == 6 and site.requests == 6


def test_failures_recorded_and_retried_next_run(tmp_path):
  raw = str(tmp_path)
  slow = "1Iq8oo9XkmmvCQiGOfORiz"
  report, site = run_crawl(
      raw, site_kw=dict(track_status={slow: (429, {"Retry-After": "86400"})},
                        broken_chart=kworb.chart_url("gb", "daily")),
      fetcher_kw=dict(max_wait=600))
  reasons = {f["url"]: f["reason"] for f in report["failures"]}
  assert "retry after 86400 s" in reasons[kworb.track_url(slow)]
  assert "Retry-After above the cap" in reasons[kworb.track_url(slow)]
  assert "no <table id='spotifydaily'>" in reasons[kworb.chart_url("gb", "daily")]
  # kworb.net asked for a day: the host is blocked, the crawl stops instead of failing fast on
  # every remaining page.
  left = site.track_requests()[-1:] == [slow] and report["track_pages"]["remaining"]
  assert report["track_pages"]["failed"] == 1 and left >= 1
  assert f"stopped with {left - 1} track page(s) left" in report["stopped"]
  with open(os.path.join(raw, "crawl_report.json")) as f:
    assert len(json.load(f)["failures"]) == 2
  # The next run asks for both failed pages again (a page that did not parse is never cached),
  # and for the pages left.
  report, site = run_crawl(raw, site_kw=dict(broken_chart=kworb.chart_url("gb", "daily")))
  assert site.answered[:2] == [kworb.chart_url("gb", "daily"), kworb.track_url(slow)]
  assert len(site.track_requests()) == left
  assert [f["url"] for f in report["failures"]] == [kworb.chart_url("gb", "daily")]
  assert report["track_pages"]["remaining"] == 0


def test_chart_page_cut_short_loses_no_day(tmp_path):
  # A chart page cut after 3 of 7 rows: not cached, the crawl fails that page (exit 1), and the
  # next run the same day fetches it again and gets every row.
  raw = str(tmp_path)
  daily = fixture("us_daily.html")
  cut = daily[:[m.start() for m in re.finditer("</tr>", daily)][3] + 5]
  url = kworb.chart_url("us", "daily")
  report, _ = run_crawl(raw, site_kw=dict(chart_body={url: cut}))
  assert [f["url"] for f in report["failures"]] == [url]
  assert "truncated download" in report["failures"][0]["reason"]
  assert "fetches exactly those" in kworb.summary(report)
  charts = kworb.read_charts(os.path.join(raw, "charts.csv"))
  assert not ((charts["region"] == "us") & (charts["period"] == "daily")
              & (charts["source"] == "kworb_chart")).any()
  report, site = run_crawl(raw)
  assert report["failures"] == [] and url in site.answered
  charts = kworb.read_charts(os.path.join(raw, "charts.csv"))
  assert ((charts["region"] == "us") & (charts["period"] == "daily")
          & (charts["source"] == "kworb_chart")).sum() == 7


def read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def clean_charts(tmp_path_factory):
  """charts.csv of one uninterrupted crawl: what every killed-and-resumed crawl must match."""
  raw = str(tmp_path_factory.mktemp("clean"))
  run_crawl(raw, flush_every=2)
  return read_bytes(os.path.join(raw, "charts.csv"))


def _check_same(raw, expected):
  assert read_bytes(os.path.join(raw, "charts.csv")) == expected
  charts = kworb.read_charts(os.path.join(raw, "charts.csv"))
  assert not charts.duplicated(KEY).any() and len(charts) == 110


@pytest.mark.parametrize("seed", range(5))
def test_killed_at_random_fetch_then_resumed(tmp_path, seed, clean_charts):
  expected = clean_charts
  raw = str(tmp_path / "killed")
  rng = random.Random(seed)
  sites = []
  for attempt in range(3):  # killed twice at random requests, then left to finish
    answered = sum(len(s.answered) for s in sites)
    kill_at = rng.randint(1, N_REQUESTS - answered) if attempt < 2 else None
    if attempt < 2:
      with pytest.raises(Killed):
        run_crawl(raw, site_kw=dict(kill_at=kill_at), sites=sites, flush_every=2)
    else:
      run_crawl(raw, sites=sites, flush_every=2)
  _check_same(raw, expected)
  # Every page was answered exactly once over the three runs: nothing fetched twice.
  answered = [u for s in sites for u in s.answered]
  assert len(answered) == N_REQUESTS and len(set(answered)) == N_REQUESTS


@pytest.mark.parametrize("seed", range(3))
def test_killed_at_random_write_then_resumed(tmp_path, monkeypatch, seed, clean_charts):
  expected = clean_charts
  raw = str(tmp_path / "killed")
  real_replace = os.replace
  calls = []

  def counting(src, dst):
    calls.append(dst)
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", counting)
  run_crawl(str(tmp_path / "count"), flush_every=2)
  n_writes = len(calls)
  kill_at = random.Random(seed).randint(1, n_writes)
  calls.clear()

  def killing(src, dst):
    calls.append(dst)
    if len(calls) == kill_at:
      raise Killed(f"killed before renaming {dst}")
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", killing)
  with pytest.raises(Killed):
    run_crawl(raw, flush_every=2)
  monkeypatch.setattr(os, "replace", real_replace)
  _, site = run_crawl(raw, flush_every=2)
  _check_same(raw, expected)
  assert len(set(site.answered)) == len(site.answered)


def test_killed_at_every_table_write_then_resumed(tmp_path, monkeypatch, clean_charts):
  """The writes that matter are charts.csv and the progress file: kill at each one in turn."""
  expected = clean_charts
  real_replace = os.replace
  state = dict(seen=0, kill_at=None)

  def killing(src, dst):
    if os.path.basename(dst) in ("charts.csv", "kworb_progress.json"):
      state["seen"] += 1
      if state["seen"] == state["kill_at"]:
        raise Killed(f"killed before renaming {dst}")
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", killing)
  run_crawl(str(tmp_path / "count"), flush_every=2)
  n = state["seen"]
  assert n == 11  # charts.csv after the chart pages, then charts.csv + progress per flush (5)
  for kill_at in range(1, n + 1):
    raw = str(tmp_path / f"killed{kill_at}")
    state.update(seen=0, kill_at=kill_at)
    with pytest.raises(Killed):
      run_crawl(raw, flush_every=2)
    state.update(kill_at=None)
    _, site = run_crawl(raw, flush_every=2)
    _check_same(raw, expected)
    assert all("/track/" in u for u in site.answered)  # chart pages came from the cache


# ---------------------------------------------------------------------------------- CLI

def test_cli_help_explains_every_option():
  out = subprocess.run([sys.executable, "-m", "data_prep.kworb", "crawl", "--help"],
                       capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__))).stdout
  for opt in ("--regions", "--raw", "--periods", "--min-interval", "--max-tracks", "--date",
              "--max-wait", "--no-progress"):
    assert opt in out
  assert "us,gb,global" in out and "seconds between requests" in out


def test_cli_crawl(tmp_path, capsys):
  with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
    site = Site(rsps)
    rc = kworb.main(["crawl", "--regions", "us", "--raw", str(tmp_path), "--periods", "daily",
                     "--min-interval", "0", "--max-tracks", "2", "--date", "2026-02-15",
                     "--no-progress"])
  assert rc == 0 and site.requests == 3
  assert "charts.csv: 29 rows (+29)" in capsys.readouterr().out
  with pytest.raises(ValueError, match="regions must be"):
    kworb.crawl(["usa"], str(tmp_path), progress=False)


def test_cli_parse_prints_rows(capsys, tmp_path):
  assert kworb.main(["parse", os.path.join(FIX, "us_daily.html"), "--url", DAILY_URL]) == 0
  out = capsys.readouterr()
  lines = out.out.strip().splitlines()
  assert lines[0].startswith("region,period,date,pos,track_id") and len(lines) == 8
  assert "chart date 2026-02-14" in out.err
  with pytest.raises(SystemExit, match="regions must be"):
    kworb.main(["crawl", "--regions", "usa", "--raw", str(tmp_path), "--no-progress"])


# ------------------------------------------------- parsers: impossible values, incomplete pages

def assert_layout_error(parse, html, url, *parts, cls=None):
  """parse(html, url) raises KworbLayoutError (or `cls`) whose message names the URL and parts."""
  with pytest.raises(cls or kworb.KworbLayoutError) as e:
    parse(html, url)
  msg = str(e.value)
  assert e.value.url == url and msg.startswith(f"{url}: ")
  for part in parts:
    assert part in msg, (part, msg)
  return msg


@pytest.mark.parametrize("bad", ["5.7", "0", "-3", "+5"])
def test_chart_position_must_be_positive_digits(bad):
  html = fixture("us_daily.html").replace("<tr><td>5</td>", f"<tr><td>{bad}</td>")
  assert_layout_error(kworb.parse_chart_page, html, DAILY_URL,
                      "table#spotifydaily row 6 column 'Pos': expected a position",
                      f"found {bad!r}")


@pytest.mark.parametrize("old, new, row, column, want", [
    ("<td>1,133,247</td>", "<td>+5</td>", 3, "Streams", ">= 0 without sign, found '+5'"),
    ("<td>905,112</td>", "<td>-905,112</td>", 5, "Streams", ">= 0 without sign, found '-905"),
    ("<td>100,077,892</td>", "<td>-1</td>", 3, "Total", ">= 0 without sign, found '-1'"),
    ("<td>8,342,999</td>", "<td>8,342,999.5</td>", 3, "7Day", ">= 0 without sign, found '8,"),
    ("<td>38</td>", "<td>0</td>", 3, "Days", ">= 1 without sign, found '0'"),
    ("<td>3</td><td>(x1)</td>", "<td>-3</td><td>(x1)</td>", 4, "Pk",
     ">= 1 without sign, found '-3'"),
    ("<td>+15,802</td>", "<td>+15,802.5</td>", 3, "Streams+",
     "expected a whole number, found '+15,802.5'"),
])
def test_chart_impossible_numbers(old, new, row, column, want):
  html = fixture("us_daily.html")
  assert html.count(old) == 1
  assert_layout_error(kworb.parse_chart_page, html.replace(old, new), DAILY_URL,
                      f"table#spotifydaily row {row} column {column!r}: expected", want)


def test_chart_signed_deltas_and_missing_values_still_accepted():
  html = fixture("us_daily.html").replace("<td>+129,041</td>", "<td>-129,041</td>")
  _, df = kworb.parse_chart_page(html.replace("<td>1,133,247</td>", "<td>--</td>"), DAILY_URL)
  assert df["streams_7day_delta"][1] == -129041.0 and math.isnan(df["streams"][1])


def test_chart_duplicate_and_missing_positions():
  html = fixture("us_daily.html")
  assert_layout_error(kworb.parse_chart_page, html.replace("<tr><td>5</td>", "<tr><td>4</td>"),
                      DAILY_URL, "row 6 column 'Pos': position 4 twice, in rows 5 and 6")
  assert_layout_error(kworb.parse_chart_page, html.replace("<tr><td>5</td>", "<tr><td>8</td>"),
                      DAILY_URL, "column 'Pos': position 5 missing, row 6 has position 8",
                      "positions 1..7 without gaps")
  dropped = re.sub(r"<tr><td>3</td>.*?</tr>\n", "", html)  # a row lost from the middle
  assert_layout_error(kworb.parse_chart_page, dropped, DAILY_URL,
                      "position 3 missing, row 4 has position 4")


def test_chart_same_track_twice():
  html = fixture("us_daily.html")
  twice = html.replace("0hVXuCcriWRGvwMV1r5Yn9", MANGU)
  assert_layout_error(kworb.parse_chart_page, twice, DAILY_URL,
                      "row 5 column 'Artist and Title': the same track twice, in rows 2 and 5",
                      f"track id {MANGU}")
  # Without track links the track is artist + title.
  no_ids = html.replace(f'<a href="../track/{MANGU}.html">Mangu</a>', "Mangu").replace(
      '<a href="../artist/4Ws0JmXZbxLmH4gyLXr1zq.html">Raim Laode</a> - '
      '<a href="../track/2tnVG71enUj33Ic2nFN6kZ.html">Komang</a>', "Fourtwnty - Mangu")
  assert_layout_error(kworb.parse_chart_page, no_ids, DAILY_URL,
                      "row 8 column 'Artist and Title': the same track twice, in rows 2 and 8",
                      "(Fourtwnty - Mangu)")


def test_track_page_impossible_cells_and_duplicate_dates():
  html = fixture("track.html")
  for old, new in [('<span class="p">45</span>', '<span class="p">0</span>'),
                   ("(310,220)", "(-310,220)")]:
    cell = "0 (310,220)" if new.endswith("</span>") else "45 (-310,220)"
    assert_layout_error(kworb.parse_track_page, html.replace(old, new), TRACK_URL,
                        "weekly table row 4 column 'my': expected 'pos (streams)' with pos >= 1 "
                        f"and streams >= 0, found {cell!r}")
  assert_layout_error(kworb.parse_track_page, html.replace("2026/02/05", "2026/02/12"), TRACK_URL,
                      "weekly table row 5 column 'Date': date 2026/02/12 twice, in rows 4 and 5")
  assert_layout_error(kworb.parse_track_page, html.replace("2026/02/13", "2026/02/14"), TRACK_URL,
                      "daily table row 5 column 'Date': date 2026/02/14 twice, in rows 4 and 5")


def test_artist_songs_negative_numbers():
  html = fixture("artist_songs.html")
  assert_layout_error(kworb.parse_artist_songs, html.replace("12,345,678", "-12,345,678"),
                      ARTIST_URL, "song table row 4 column 'Streams': expected a whole number "
                                  ">= 0 without sign, found '-12,345,678'")
  assert_layout_error(kworb.parse_artist_songs, html.replace("134,567,890", "-134,567,890"),
                      ARTIST_URL, "summary table row 2 (Streams) column 'As feature': expected")


def long_daily(n):
  """us_daily.html with n rows, each like row 1 with its own position and track id."""
  html = fixture("us_daily.html")
  first = re.search(r"<tr><td>1</td>.*?</tr>\n", html).group(0)
  rows = "".join(first.replace("<td>1</td>", f"<td>{p}</td>", 1).replace(MANGU, f"t{p:03d}")
                 for p in range(1, n + 1))
  return html[:html.index(first)] + rows + html[html.index("</tbody>"):]


def test_chart_page_cut_short_is_incomplete():
  html = long_daily(50)
  assert len(kworb.parse_chart_page(html, DAILY_URL)[1]) == 50
  cut = html[:html.index("<tr><td>31</td>") + 40]  # mid-row, after 30 complete rows
  msg = assert_layout_error(kworb.parse_chart_page, cut, DAILY_URL, "incomplete kworb page",
                            f"truncated download: the body ends after {len(cut.encode())} bytes "
                            "without </html>", cls=kworb.KworbIncompletePage)
  assert "unexpected kworb page layout" not in msg
  at_row_end = html[:html.index("<tr><td>31</td>")]  # right after a complete </tr>
  assert at_row_end.endswith("</tr>\n")
  for cut in (at_row_end, at_row_end.rstrip("\n")):
    assert_layout_error(kworb.parse_chart_page, cut, DAILY_URL, "truncated download",
                        "without </html>", cls=kworb.KworbIncompletePage)
  unclosed = fixture("us_daily.html").replace("</table>", "")
  assert_layout_error(kworb.parse_chart_page, unclosed, DAILY_URL,
                      "truncated download: <table id='spotifydaily'> is never closed",
                      cls=kworb.KworbIncompletePage)
  # Only the raw text ends the page: case and trailing whitespace do not matter.
  ending = fixture("us_daily.html").replace("</html>", "</HTML >\r\n\n")
  assert len(kworb.parse_chart_page(ending, DAILY_URL)[1]) == 7


def test_track_and_artist_pages_cut_short_are_incomplete():
  track = fixture("track.html")
  assert_layout_error(kworb.parse_track_page, track[:track.index("</table>") + 8], TRACK_URL,
                      "truncated download", cls=kworb.KworbIncompletePage)
  songs = fixture("artist_songs.html")
  assert_layout_error(kworb.parse_artist_songs, songs[:songs.rindex("<br>")], ARTIST_URL,
                      "truncated download", cls=kworb.KworbIncompletePage)


CLOUDFLARE = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow">
<link href="/cdn-cgi/styles/challenges.css" rel="stylesheet"></head>
<body class="no-js"><div class="main-wrapper" role="main"><div class="main-content">
<h1 class="zone-name-title h1">kworb.net</h1>
<noscript><div class="h2"><span id="challenge-error-text">Enable JavaScript and cookies to
continue</span></div></noscript></div></div>
<script>(function(){window._cf_chl_opt={cvId: '3',cZone: "kworb.net",cType: 'managed',
cRay: '8f1e2d3c4b5a6978'};var cpo=document.createElement('script');
cpo.src='/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1?ray=8f1e2d3c4b5a6978';
document.getElementsByTagName('head')[0].appendChild(cpo);}());</script></body></html>
"""


@pytest.mark.parametrize("parse, url", [(kworb.parse_chart_page, DAILY_URL),
                                        (kworb.parse_track_page, TRACK_URL),
                                        (kworb.parse_artist_songs, ARTIST_URL)])
def test_cloudflare_interstitial_is_incomplete(parse, url):
  assert_layout_error(parse, CLOUDFLARE, url, "incomplete kworb page: anti-bot interstitial page",
                      cls=kworb.KworbIncompletePage)
  # Each marker alone is enough (the title, the challenge script, the no-script text).
  for marker in ("<title>Just a moment...</title>", "window._cf_chl_opt={}",
                 "Checking your browser before accessing kworb.net"):
    page = f"<html><head>{marker}</head><body></body></html>"
    assert_layout_error(parse, page, url, "anti-bot interstitial", cls=kworb.KworbIncompletePage)


def test_cloudflare_script_on_a_real_page_is_not_an_interstitial():
  """Cloudflare injects this script into ordinary pages: they still parse."""
  jsd = ("<script>(function(){var a=document.createElement('script');"
         "a.src='/cdn-cgi/challenge-platform/scripts/jsd/main.js';"
         "document.getElementsByTagName('head')[0].appendChild(a);})();</script>")
  html = fixture("us_daily.html").replace("</body>", jsd + "</body>")
  assert len(kworb.parse_chart_page(html, DAILY_URL)[1]) == 7
