"""The one HTTP client of data_prep: kworb pages, Spotify, Deezer, iTunes and preview downloads.

- Retries are urllib3's :class:`Retry` on the ``requests`` session's adapter: connection
  errors, 429 and 5xx are retried with exponential back-off plus jitter, and ``Retry-After``
  is honoured, but the waits of one request never add up to more than ``max_wait`` seconds. A
  request whose next wait would pass that cap gives up at once (a 429 asking for an hour is
  not slept on); when the server asked for more than the whole cap, its host is blocked for
  that long and later requests to it fail fast with :class:`RateLimited`.
- Politeness: a sliding-window limit per host (``limits``: host -> (requests, seconds)).
- Failures: :meth:`Http.request` turns every ``requests``/``urllib3`` exception (connection,
  timeout, broken gzip, a body cut mid-chunk, ...) into :class:`HttpError` naming the URL and
  the cause, so a stage records the failure for that item and goes on.
- ``get_json`` caches JSON answers on disk by full URL:
  ``{cache_dir}/{host}/{sha256(url)[:2]}/{sha256(url)}.json``; a re-run repeats no lookup.
- ``sleep`` and ``clock`` are injectable, so tests run without waiting; every retry is logged
  and kept in ``retries`` (url, cause, wait in seconds), and counted in ``stats``.

Hosts that answer throttling with 403 and no ``Retry-After`` (iTunes) get their own adapter,
where 403 is retried like 429 with the slower ``throttle_backoff``.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import random
import time
import urllib.parse

import requests
import urllib3
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError

from mpjax import atomic

log = logging.getLogger(__name__)

USER_AGENT = "mpjax-data-prep/0.1 (music popularity research; polite, cached; previews are " \
             "not redistributed)"
RETRY_STATUSES = (429, 500, 502, 503, 504)
THROTTLE_STATUSES = (429, 503)


class HttpError(Exception):
  """A request that failed for good (after retries). `status` is None for network errors."""

  def __init__(self, status, url, detail=""):
    super().__init__(status, url, detail)
    self.status, self.url, self.detail = status, url, detail

  def __str__(self):
    what = f"HTTP {self.status}" if self.status is not None else "network error"
    return f"{what} for {self.url}" + (f": {self.detail}" if self.detail else "")


class RateLimited(HttpError):
  """The server throttled us and asked for (or we would need) a longer wait than allowed."""

  def __init__(self, status, url, retry_after, detail=""):
    super().__init__(status, url, detail)
    self.retry_after = retry_after

  def __str__(self):
    status = f"HTTP {self.status}, " if self.status is not None else ""
    return (f"rate limited ({status}retry after {self.retry_after:.0f} s) for {self.url}"
            + (f": {self.detail}" if self.detail else ""))


def describe(e: BaseException) -> str:
  """'ContentDecodingError: ...' in one line of at most 300 characters."""
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text}"[:300]


_HEADER_PARSER = urllib3.util.Retry()
_HEADER_PARSER.retry_after_max = float("inf")  # urllib3 >= 2.6 clips parsed values to this


def retry_after_s(value) -> float | None:
  """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent/unreadable."""
  if value is None or not str(value).strip():
    return None
  try:
    return float(_HEADER_PARSER.parse_retry_after(str(value)))
  except InvalidHeader:
    return None


class Retry(urllib3.util.Retry):
  """urllib3's Retry with jittered exponential back-off and a cap on one request's total wait.

  The wait before retry n (n = 1, 2, ...) is the response's Retry-After when it has one, else
  ``backoff_factor * 2**(n-1) + uniform(0, backoff_jitter)``, at most ``backoff_max``. When the
  waits so far plus the next one would exceed ``max_wait``, the request gives up: a retried
  status returns its last response (``raise_on_status=False``), an error raises as requests
  does after its last retry.
  """

  def __init__(self, *args, max_wait: float = 300.0, waited: float = 0.0, sleep=time.sleep,
               on_retry=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.max_wait = max_wait
    self.waited = waited
    self.next_wait = 0.0
    self._sleep = sleep
    self.on_retry = on_retry  # (url, cause, wait) -> None

  def new(self, **kw):
    for name, value in (("max_wait", self.max_wait), ("waited", self.waited),
                        ("sleep", self._sleep), ("on_retry", self.on_retry)):
      kw.setdefault(name, value)
    return super().new(**kw)

  def get_backoff_time(self) -> float:
    n = 0
    for h in reversed(self.history):
      if h.redirect_location is not None:
        break
      n += 1
    if n == 0:
      return 0.0
    wait = self.backoff_factor * 2 ** (n - 1) + random.uniform(0, self.backoff_jitter)
    return float(min(self.backoff_max, wait))

  def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                _stacktrace=None):
    new = super().increment(method, url, response, error, _pool, _stacktrace)
    if _pool is not None and url and url.startswith("/"):
      url = f"{_pool.scheme}://{_pool.host}{url}"
    wait = None
    if response is not None and self.respect_retry_after_header:
      try:
        wait = new.get_retry_after(response)
      except InvalidHeader:
        wait = None
    if wait is None:
      wait = new.get_backoff_time()
    cause = f"HTTP {response.status}" if response is not None and response.status else \
        (describe(error) if error else "unknown")
    if new.waited + wait > new.max_wait:
      log.warning("giving up on %s (%s): waiting %.0f s more would pass the %.0f s cap on one "
                  "request's waits", url, cause, wait, new.max_wait)
      raise MaxRetryError(_pool, url, error or ResponseError(
          f"{cause}; next wait {wait:.0f} s would pass the {new.max_wait:.0f} s cap"))
    new.waited += wait
    new.next_wait = wait
    log.info("retrying %s in %.1f s (%s)", url, wait, cause)
    if new.on_retry is not None:
      new.on_retry(url, cause, wait)
    return new

  def sleep(self, response=None):
    if self.next_wait > 0:
      self._sleep(self.next_wait)


class Http:
  """requests session with capped retries + per-host rate limits + JSON cache (module doc).

  Args:
    cache_dir: where `get_json` caches answers (None: no cache).
    limits: {host: (max_requests, per_seconds)}; other hosts get `default_limit`.
    throttle_403_hosts: hosts whose 403 without Retry-After means "throttled" (iTunes).
    max_wait: most seconds one request may spend waiting between its retries (Retry-After
      and back-off together); a Retry-After above it blocks the host for that long.
    max_tries: attempts per request (network errors, 5xx, throttling).
    backoff: first back-off (s), doubled per retry, plus up to `jitter` s at random.
    throttle_backoff: the same for throttle_403_hosts.
    sleep, clock: injectable (tests); clock must be monotonic seconds.
  """

  def __init__(self, cache_dir=None, *, limits=None, default_limit=(10, 1.0),
               throttle_403_hosts=(), max_wait=60.0, max_tries=4, backoff=2.0,
               throttle_backoff=20.0, jitter=1.0, timeout=30.0, user_agent=USER_AGENT,
               sleep=time.sleep, clock=time.monotonic):
    self.cache_dir = cache_dir
    self.limits = dict(limits or {})
    self.default_limit = default_limit
    self.throttle_403_hosts = frozenset(throttle_403_hosts)
    self.max_wait = float(max_wait)
    self.max_tries = int(max_tries)
    self.backoff = float(backoff)
    self.timeout = timeout
    self.sleep = sleep
    self.clock = clock
    self._sent = collections.defaultdict(collections.deque)
    self._blocked_until = {}
    self.stats = collections.Counter()  # requests, retries, wait_s, cache_hit, failed
    self.retries = collections.deque(maxlen=10_000)  # (url, cause, wait s)
    self.session = requests.Session()
    self.session.headers["User-Agent"] = user_agent
    self.session.mount("http://", self._adapter(RETRY_STATUSES, backoff, jitter))
    self.session.mount("https://", self._adapter(RETRY_STATUSES, backoff, jitter))
    for host in self.throttle_403_hosts:
      for scheme in ("http", "https"):
        self.session.mount(f"{scheme}://{host}/",
                           self._adapter((403, *RETRY_STATUSES), throttle_backoff, jitter))

  def __repr__(self):
    return f"Http(cache_dir={self.cache_dir!r}, limits={self.limits!r})"

  def _adapter(self, statuses, backoff, jitter):
    retry = Retry(total=self.max_tries - 1, status_forcelist=statuses, backoff_factor=backoff,
                  backoff_jitter=jitter, backoff_max=self.max_wait, raise_on_status=False,
                  raise_on_redirect=False, max_wait=self.max_wait, sleep=self._wait,
                  on_retry=self._count_retry)
    return requests.adapters.HTTPAdapter(max_retries=retry)

  def _count_retry(self, url, cause, wait):
    self.stats["retries"] += 1
    self.retries.append((url, cause, wait))

  def _wait(self, seconds):
    self.stats["wait_s"] += seconds
    self.sleep(seconds)

  # -- rate limiting ---------------------------------------------------------------------------

  def throttle(self, host):
    """Waits until one more request to `host` fits in its sliding window, and counts it."""
    n, per = self.limits.get(host, self.default_limit)
    sent = self._sent[host]
    now = self.clock()
    while sent and now - sent[0] >= per:
      sent.popleft()
    if len(sent) >= n:
      self._wait(per - (now - sent[0]))
      now = self.clock()
      while sent and now - sent[0] >= per:
        sent.popleft()
    sent.append(now)
    self.stats["requests"] += 1

  def block(self, host, seconds):
    """Marks `host` as refusing us for `seconds` (requests fail fast until then)."""
    self._blocked_until[host] = max(self._blocked_until.get(host, 0.0), self.clock() + seconds)

  def blocked(self, host):
    """Seconds until `host` may be asked again (0.0 when not blocked)."""
    return max(0.0, self._blocked_until.get(host, 0.0) - self.clock())

  def gave_up_throttled(self, url, status, headers) -> RateLimited:
    """The RateLimited for a throttled answer retries could not get past; a Retry-After over
    the cap also blocks the host for that long."""
    host = urllib.parse.urlsplit(url).hostname or ""
    retry_after = retry_after_s(headers.get("Retry-After"))
    if retry_after is not None and retry_after > self.max_wait:
      self.block(host, retry_after)
      log.warning("%s asks us to wait %.0f s (cap %.0f s): not asking it again in this run",
                  host, retry_after, self.max_wait)
      return RateLimited(status, url, retry_after, "Retry-After above the cap")
    return RateLimited(status, url, retry_after or 0.0,
                       f"still throttled after {self.max_tries} attempts")

  # -- requests --------------------------------------------------------------------------------

  def request(self, url, params=None, *, stream=False):
    """GET with rate limit and retries. Returns the response for statuses it does not retry
    (2xx, 3xx, most 4xx); raises RateLimited / HttpError when it gives up, whatever went
    wrong (every requests exception included)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    wait = self.blocked(host)
    if wait > 0:
      raise RateLimited(None, url, wait, f"{host} is blocked for another {wait:.0f} s")
    self.throttle(host)
    try:
      resp = self.session.get(url, params=params, stream=stream, timeout=self.timeout)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
      self.stats["failed"] += 1
      raise HttpError(None, url, describe(e)) from None
    status = resp.status_code
    if status in THROTTLE_STATUSES or (status == 403 and host in self.throttle_403_hosts):
      resp.close()
      self.stats["failed"] += 1
      raise self.gave_up_throttled(resp.url or url, status, resp.headers)
    if status >= 500:
      resp.close()
      self.stats["failed"] += 1
      raise HttpError(status, resp.url or url, f"server error, gave up after {self.max_tries} "
                                               f"attempts")
    return resp

  def back_off(self, url, retry=None, cause="") -> Retry | None:
    """Waits before asking `url` again after a failure urllib3 cannot see (a throttle inside a
    200 answer, a page cut short), on the adapter's schedule and under the same cap on one
    request's waits. Start with retry=None and pass back what it returns; None means the
    attempts or the cap are used up: give up."""
    retry = retry if retry is not None else self.session.get_adapter(url).max_retries
    try:
      retry = retry.increment("GET", url, error=ResponseError(cause))
    except MaxRetryError:
      return None
    retry.sleep()
    return retry

  def full_url(self, url, params=None):
    return requests.Request("GET", url, params=params).prepare().url

  def cache_path(self, url):
    key = hashlib.sha256(url.encode()).hexdigest()
    host = urllib.parse.urlsplit(url).hostname or "nohost"
    return os.path.join(self.cache_dir, host, key[:2], key + ".json")

  def get_json(self, url, params=None, *, cache=True, refresh=False, retry_if=None,
               cacheable=None):
    """GET a JSON document. Returns (body, from_cache).

    cache: read/write the on-disk cache (never use it for signed or secret-bearing URLs).
    refresh: ignore a cached copy (but still overwrite it).
    retry_if: body -> bool; True means "a throttle in disguise" (Deezer's HTTP-200 quota
      error): backed off like a 429 (same waits, same cap), never cached.
    cacheable: body -> bool; False keeps an answer out of the cache (e.g. a transient error).
    """
    full = self.full_url(url, params)
    path = self.cache_path(full) if (cache and self.cache_dir) else None
    if path and not refresh and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        self.stats["cache_hit"] += 1
        return json.load(f)["body"], True
    retry = None
    for attempt in range(self.max_tries):
      resp = self.request(full)
      if not 200 <= resp.status_code < 300:
        raise HttpError(resp.status_code, full, resp.text[:200])
      try:
        body = resp.json()
      except ValueError:
        raise HttpError(resp.status_code, full, "response is not JSON") from None
      if retry_if is None or not retry_if(body):
        if path and (cacheable is None or cacheable(body)):
          atomic.write_json(path, {"url": full, "fetched": time.time(), "body": body},
                            indent=None, ensure_ascii=False)
        return body, False
      retry = self.back_off(full, retry, "throttled (error in the answer's body)")
      if retry is None:
        break
    self.stats["failed"] += 1
    raise RateLimited(resp.status_code, full, 0.0, f"still throttled after {attempt + 1} "
                                                   f"attempts (error in the answer's body)")
