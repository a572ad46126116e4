"""Training logs: stdout line, `metrics.jsonl`, and TensorBoard event files without TensorFlow.

An event file is TFRecord-framed `tensorflow.Event` protos (the framing is
`mpjax.input.tfrecord.frame`). The few proto fields we need are encoded by hand:
  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time

from mpjax import atomic
from mpjax.input import tfrecord


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
  return _varint((num << 3) | wire) + payload


def _len_field(num: int, data: bytes) -> bytes:
  return _field(num, 2, _varint(len(data)) + data)


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  ev = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
  if file_version is not None:
    ev += _len_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _len_field(1, _len_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
        for tag, v in scalars.items())
    ev += _len_field(5, summary)
  return ev


class EventWriter:
  """Appends scalar summaries to `events.out.tfevents.*` in `logdir`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._f.write(tfrecord.frame(encode_event(0, time.time(), file_version="brain.Event:2")))
    self._f.flush()

  def scalars(self, step: int, values: dict[str, float]):
    finite = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if finite:
      self._f.write(tfrecord.frame(encode_event(step, time.time(), finite)))
      self._f.flush()

  def close(self):
    self._f.close()


class MetricLogger:
  """One place for metrics: stdout (rounded), metrics.jsonl (full), TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, is_main: bool = True):
    self.is_main = is_main
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
    self.tb = EventWriter(os.path.join(workdir, "tensorboard")) if (tensorboard and is_main) else None

  def resume(self, step: int):
    """Drops metrics.jsonl rows the resumed run will write again: those after `step` (the
    restored checkpoint) and the test rows at `step` (written after the last save). The file
    is rewritten atomically; afterwards every (step, metric) appears once."""
    if not self.is_main:
      return
    path = self.jsonl.name
    self.jsonl.close()
    rows = []
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill -9: dropped
          rows.append(None)
    keep = [r for r in rows if r is not None and (r.get("step", 0) < step or (
        r.get("step") == step and not all(k.startswith("test/") for k in r if k != "step")))]
    if len(keep) != len(rows):
      atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    self.jsonl = open(path, "a")

  def write(self, step: int, values: dict[str, float], prefix: str = ""):
    if not self.is_main:
      return
    values = {f"{prefix}{k}": float(v) for k, v in values.items()}
    self.jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self.jsonl.flush()
    if self.tb:
      self.tb.scalars(step, values)

  def close(self):
    if self.jsonl:
      self.jsonl.close()
    if self.tb:
      self.tb.close()
