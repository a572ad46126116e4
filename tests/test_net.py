"""data_prep.net: the one HTTP client. Retries and faults run against a real local server
(fakes.FaultServer), so urllib3's own retry loop, decoding and chunk parsing are exercised."""
import os
import random

import pytest
import responses

from data_prep import audio, net
from fakes import FakeTime, FaultServer, closed_port_url


def make_http(ft, **kw):
  kw.setdefault("jitter", 0.0)
  return net.Http(sleep=ft.sleep, clock=ft.clock, default_limit=(1000, 1.0), **kw)


def test_5xx_backs_off_exponentially_then_succeeds():
  ft = FakeTime()
  with FaultServer() as srv:
    srv.script("/p", {"status": 503}, {"status": 500}, {"status": 200, "body": b"ok"})
    http = make_http(ft, backoff=2.0)
    resp = http.request(srv.url + "/p")
    assert resp.status_code == 200 and resp.text == "ok" and srv.hits["/p"] == 3
  assert ft.sleeps == [2.0, 4.0]  # urllib3 slept through our Retry: 2 * 2**(n-1)
  assert http.stats["retries"] == 2 and [c for _, c, _ in http.retries] == ["HTTP 503",
                                                                           "HTTP 500"]


def test_backoff_has_jitter():
  random.seed(0)
  ft = FakeTime()
  with FaultServer() as srv:
    srv.script("/p", {"status": 502}, {"status": 502}, {"status": 200})
    make_http(ft, backoff=2.0, jitter=1.0).request(srv.url + "/p")
  assert 2.0 < ft.sleeps[0] < 3.0 and 4.0 < ft.sleeps[1] < 5.0
  assert ft.sleeps != [2.0, 4.0]


def test_retry_after_is_honoured_but_the_total_wait_is_capped():
  # The reported defect: 299 s honoured on each of 5 retries stalled one page 25 minutes.
  ft = FakeTime()
  with FaultServer() as srv:
    srv.script("/p", {"status": 429, "headers": {"Retry-After": "299"}})
    http = make_http(ft, max_wait=300, max_tries=6)
    with pytest.raises(net.RateLimited) as e:
      http.request(srv.url + "/p")
    assert srv.hits["/p"] == 2  # one wait of 299 s; a second would pass the cap
  assert ft.sleeps == [299.0] and "still throttled" in str(e.value)
  assert http.blocked("127.0.0.1") == 0  # 299 s is within the cap: the host is not blocked


def test_retry_after_above_the_cap_blocks_the_host_without_sleeping():
  ft = FakeTime()
  with FaultServer() as srv:
    srv.script("/p", {"status": 429, "headers": {"Retry-After": "3600"}})
    http = make_http(ft, max_wait=60)
    with pytest.raises(net.RateLimited) as e:
      http.request(srv.url + "/p")
    assert e.value.retry_after == 3600 and ft.sleeps == [] and srv.hits["/p"] == 1
    with pytest.raises(net.RateLimited, match="blocked"):
      http.request(srv.url + "/p")
    assert srv.hits["/p"] == 1


def test_connection_errors_are_retried_then_one_http_error():
  ft = FakeTime()
  http = make_http(ft, backoff=1.0, max_tries=4)
  url = closed_port_url()
  with pytest.raises(net.HttpError) as e:
    http.request(url)
  assert e.value.status is None and "ConnectionError" in e.value.detail and url in str(e.value)
  assert ft.sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("fault,name", [({"bad_gzip": True}, "ContentDecodingError"),
                                        ({"bad_chunk": True}, "ChunkedEncodingError")])
def test_broken_bodies_are_an_http_error_not_a_crash(fault, name):
  # The reported defect: ContentDecodingError / ChunkedEncodingError escaped and killed stages.
  with FaultServer() as srv:
    srv.script("/p", {"status": 200, "body": b"this is not gzip data", **fault})
    http = make_http(FakeTime())
    with pytest.raises(net.HttpError) as e:
      http.request(srv.url + "/p")
    assert name in e.value.detail
    with pytest.raises(net.HttpError):
      http.get_json(srv.url + "/p")


def test_a_gzip_body_decodes():
  with FaultServer() as srv:
    srv.script("/j", {"status": 200, "body": b'{"a": 1}', "gzip": True})
    assert make_http(FakeTime()).get_json(srv.url + "/j") == ({"a": 1}, False)


@pytest.mark.parametrize("fault", [{"bad_chunk": True}, {"bad_gzip": True}])
def test_download_records_broken_bodies_and_leaves_no_file(tmp_path, fault):
  with FaultServer() as srv:
    srv.script("/a.mp3", {"status": 200, "body": b"\xff\xfb" + b"\x00" * 4000,
                          "headers": {"Content-Type": "audio/mpeg"}, **fault})
    with pytest.raises(audio.DownloadError) as e:
      audio.download(srv.url + "/a.mp3", str(tmp_path), make_http(FakeTime()))
  assert e.value.reason == "network"
  assert [f for _, _, fs in os.walk(tmp_path) for f in fs] == []


def test_retry_after_header_forms():
  assert net.retry_after_s("7") == 7.0
  assert net.retry_after_s(None) is None and net.retry_after_s("soon") is None
  assert net.retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
  assert net.retry_after_s("Fri, 01 Jan 2100 00:00:00 GMT") > 1e9


def test_sliding_window_rate_limit():
  ft = FakeTime()
  http = net.Http(limits={"api.deezer.com": (50, 5.0)}, sleep=ft.sleep, clock=ft.clock)
  for _ in range(50):
    http.throttle("api.deezer.com")
  assert ft.sleeps == []
  http.throttle("api.deezer.com")
  assert ft.sleeps == [pytest.approx(5.0)]
  ft.now += 10
  for _ in range(50):
    http.throttle("api.deezer.com")
  assert len(ft.sleeps) == 1


@responses.activate
def test_get_json_caches_by_url(tmp_path):
  responses.get("https://api.example/q", json={"n": 1})
  http = make_http(FakeTime(), cache_dir=str(tmp_path / "cache"))
  assert http.get_json("https://api.example/q", {"a": "x y"}) == ({"n": 1}, False)
  assert http.get_json("https://api.example/q", {"a": "x y"}) == ({"n": 1}, True)
  assert http.get_json("https://api.example/q", {"a": "other"}) == ({"n": 1}, False)
  assert len(responses.calls) == 2
  assert len([f for _, _, fs in os.walk(tmp_path / "cache" / "api.example") for f in fs]) == 2
  assert http.get_json("https://api.example/q", {"a": "x y"}, refresh=True)[1] is False
  assert http.get_json("https://api.example/q", {"a": "z"}, cache=False)[1] is False
  assert http.get_json("https://api.example/q", {"a": "z"}, cache=False)[1] is False
  assert len(responses.calls) == 5


def test_throttle_in_the_body_backs_off_under_the_same_cap(tmp_path):
  ft = FakeTime()
  with FaultServer() as srv:
    srv.script("/q", {"status": 200, "body": b'{"error": {"code": 4}}'})
    http = make_http(ft, cache_dir=str(tmp_path), backoff=10.0, max_wait=35.0, max_tries=5)
    with pytest.raises(net.RateLimited, match="in the answer's body"):
      http.get_json(srv.url + "/q", retry_if=lambda b: "error" in b)
    assert srv.hits["/q"] == 3  # waits 10 + 20; a third (40) would pass 35 s
  assert ft.sleeps == [10.0, 20.0]
  assert not os.path.exists(tmp_path / "127.0.0.1")  # a throttle answer is never cached
