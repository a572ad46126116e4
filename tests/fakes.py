"""Test doubles and small configs shared by several test files."""
import contextlib
import gzip
import http.server
import socket
import threading

import numpy as np
import pandas as pd


class FakeTime:
  """Injected sleep/clock: records every wait, advances a fake clock instead of sleeping."""

  def __init__(self):
    self.now = 1000.0
    self.sleeps = []

  def sleep(self, s):
    self.sleeps.append(s)
    self.now += s

  def clock(self):
    return self.now


def tiny_dataset(tmp_path_factory, n_songs=40, n_artists=10):
  """A small synthetic dataset (3 regions, 5.5 s clips, shards of 8 records); its directory."""
  from data_prep import build, synthetic
  raw = str(tmp_path_factory.mktemp("raw"))
  out = str(tmp_path_factory.mktemp("ds"))
  synthetic.generate(raw, seed=2, n_songs=n_songs, n_artists=n_artists,
                     regions=("global", "us", "kr"), clip_seconds=5.5, weeks=36, fit_chart_oracle=False)
  build.build(build.BuildConfig(raw=raw, out=out, progress=False, records_per_shard=8))
  return out


def tiny_train(c, data):
  """A demo config (configs/mp2.py or mp3.py) shrunk to seconds on CPU over dataset `data`."""
  c.data_dir = data
  c.model.depth = 1
  c.model.input_tdim = 64
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.total_steps = 6
  c.optim.warmup_steps = 2
  c.log_every = 1
  c.eval_every = 1000
  c.checkpoint.every = 3
  c.checkpoint.use_async = False
  c.tensorboard = False
  c.augment.specaug.freq_width = 8
  c.augment.specaug.time_width = 8
  return c


class FaultServer:
  """A real HTTP server on localhost that answers each path from a script of faults.

  `server.script(path, *answers)`: successive requests to `path` get the answers in turn (the
  last one repeats). An answer is a dict: {"status": 200, "body": b"...", "headers": {...}}
  plus at most one fault:
    "truncate": n   -- send only the first n bytes of the body, no Content-Length, then close
    "bad_gzip": True -- Content-Encoding: gzip on bytes that are not gzip
    "bad_chunk": True -- Transfer-Encoding: chunked with a broken chunk size
  `server.hits[path]` counts requests. Use as a context manager (`with FaultServer() as srv`).
  """

  def __init__(self):
    self.scripts, self.hits = {}, {}
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def do_GET(self):
        path = self.path.split("?")[0]
        n = outer.hits.get(path, 0)
        outer.hits[path] = n + 1
        answers = outer.scripts.get(path) or [{"status": 404, "body": b"no script"}]
        a = answers[min(n, len(answers) - 1)]
        body = a.get("body", b"")
        body = body.encode() if isinstance(body, str) else body
        self.send_response(a.get("status", 200))
        for k, v in a.get("headers", {}).items():
          self.send_header(k, v)
        if "truncate" in a:
          self.send_header("Connection", "close")
          self.end_headers()
          self.wfile.write(body[:a["truncate"]])
          self.close_connection = True
        elif a.get("bad_gzip"):
          self.send_header("Content-Encoding", "gzip")
          self.send_header("Content-Length", str(len(body)))
          self.end_headers()
          self.wfile.write(body)
        elif a.get("bad_chunk"):
          self.send_header("Transfer-Encoding", "chunked")
          self.send_header("Connection", "close")
          self.end_headers()
          self.wfile.write(b"5\r\nhello\r\nzz\r\nbroken")
          self.close_connection = True
        else:
          if a.get("gzip"):
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
          self.send_header("Content-Length", str(len(body)))
          self.end_headers()
          self.wfile.write(body)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

  def script(self, path, *answers):
    self.scripts[path] = list(answers)
    self.hits.pop(path, None)

  def __enter__(self):
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def closed_port_url() -> str:
  """A localhost URL nothing listens on (connection refused)."""
  with contextlib.closing(socket.socket()) as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/x"


MISSING_DAY = "2025-03-10"  # 'kr' published no chart that day


def daily_charts(days=90, n_tracks=60, seed=0):
  """Daily top-10 charts of two regions, tracks entering every day or so and staying 5-30 days;
  region 'kr' has no chart on MISSING_DAY."""
  rs = np.random.RandomState(seed)
  start = pd.Timestamp("2025-02-01")
  life = {i: (int(rs.randint(0, days - 5)), int(rs.randint(5, 30))) for i in range(n_tracks)}
  rows = []
  for region in ("jp", "kr"):
    for d in range(days):
      date = (start + pd.Timedelta(days=d)).date().isoformat()
      if region == "kr" and date == MISSING_DAY:
        continue
      on = [i for i, (a, n) in life.items() if a <= d < a + n][:10]
      for pos, i in enumerate(on, 1):
        rows.append(dict(region=region, period="daily", date=date, pos=pos, track_id="",
                         artist=f"artist{i % 17}", title=f"song {i}", featured="", artist_id="",
                         streams=float(10000 * (11 - pos) + d), movement="", on_chart=np.nan,
                         peak=np.nan, source="kworb_csv"))
  return pd.DataFrame(rows)
