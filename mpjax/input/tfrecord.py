"""TFRecord shards without TensorFlow: framing, CRC32C, offset index, tf.train.Example codec.

The record format is the contract between `data_prep` (writes) and `mpjax.input` (reads).

Framing (identical to TensorFlow's, so `tf.data.TFRecordDataset` reads our files)::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

little-endian; masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32).

Index: `NAME.tfrecord.idx` beside each shard, one line per record, `offset length` in bytes
(`offset` = start of the record's frame, `length` = whole frame incl. header and CRCs; the
format of the `tfrecord` PyPI package). It is written last, and the shard itself is written to
a temporary name and renamed, so a shard with an index is always complete.

`TFRecordSource` is a Grain `RandomAccessDataSource` (`__len__`, `__getitem__`) over many
shards, CRC-checked on every read; a bad record raises `CorruptRecordError` naming the file and
byte offset (or is counted and replaced by None when `skip_corrupt=True`).
"""
from __future__ import annotations

import bisect
import os
import struct
from typing import Any, Iterable, Mapping, Sequence

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def masked_crc32c(data: bytes | memoryview) -> int:
  crc = google_crc32c.value(bytes(data))
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord frame around `data`."""
  length = struct.pack("<Q", len(data))
  return length + _FOOTER.pack(masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


class CorruptRecordError(ValueError):
  """A record failed its length or CRC check. `.path` and `.offset` say where."""

  def __init__(self, path: str, offset: int, what: str):
    super().__init__(f"{path}: corrupt TFRecord at byte offset {offset}: {what}")
    self.path, self.offset = path, offset


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def shard_name(prefix: str, index: int, count: int) -> str:
  """`prefix-00003-of-00016.tfrecord`, the DESIGN.md shard naming."""
  return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


class ShardWriter:
  """Writes one shard and its index; complete on `close()`, absent if never closed.

  with ShardWriter(path) as w:
    w.write(example_bytes)
  """

  def __init__(self, path: str):
    self.path = path
    self._tmp = f"{path}.tmp-{os.getpid()}"
    self._f = open(self._tmp, "wb")
    self._index: list[tuple[int, int]] = []
    self._offset = 0

  def write(self, data: bytes):
    rec = frame(data)
    self._f.write(rec)
    self._index.append((self._offset, len(rec)))
    self._offset += len(rec)

  def __len__(self):
    return len(self._index)

  def close(self):
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    os.replace(self._tmp, self.path)
    idx_tmp = f"{self.path}.idx.tmp-{os.getpid()}"
    with open(idx_tmp, "w") as f:
      f.writelines(f"{o} {n}\n" for o, n in self._index)
    os.replace(idx_tmp, self.path + ".idx")

  def abort(self):
    self._f.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_index(path: str) -> list[tuple[int, int]]:
  """(Re)builds the `.idx` for an existing shard by scanning its frames (checks CRCs)."""
  index = []
  with open(path, "rb") as f:
    data = f.read()
  off = 0
  while off < len(data):
    length, _ = _read_frame(data, off, path)
    index.append((off, length + 16))
    off += length + 16
  with open(path + ".idx", "w") as f:
    f.writelines(f"{o} {n}\n" for o, n in index)
  return index


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _read_frame(buf: bytes, off: int, path: str, check_crc: bool = True) -> tuple[int, bytes]:
  if len(buf) - off < 12:
    raise CorruptRecordError(path, off, "truncated header")
  length, length_crc = _HEADER.unpack_from(buf, off)
  if check_crc and masked_crc32c(buf[off:off + 8]) != length_crc:
    raise CorruptRecordError(path, off, "length CRC mismatch")
  end = off + 12 + length
  if len(buf) < end + 4:
    raise CorruptRecordError(path, off, f"truncated record (length {length})")
  data = buf[off + 12:end]
  if check_crc and masked_crc32c(data) != _FOOTER.unpack_from(buf, end)[0]:
    raise CorruptRecordError(path, off, "data CRC mismatch")
  return length, data


def read_index(path: str) -> np.ndarray:
  """[n, 2] int64 (offset, frame length) from `path.idx`."""
  idx = path + ".idx"
  if not os.path.exists(idx):
    raise FileNotFoundError(f"{idx}: missing offset index for {path} "
                            "(rebuild it with mpjax.input.tfrecord.write_index)")
  rows = []
  with open(idx) as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{idx}, line {line_no}: expected 'offset length' (two integers), "
                         f"got {line.rstrip()!r}")
      rows.append((int(parts[0]), int(parts[1])))
  arr = np.asarray(rows, np.int64).reshape(-1, 2)
  # Frames are written back to back: a removed, repeated or edited line breaks the chain
  # (records would be dropped or repeated with no other sign).
  size = os.path.getsize(path) if os.path.exists(path) else None
  starts = np.concatenate([[0], np.cumsum(arr[:, 1])[:-1]]).astype(np.int64)
  bad = np.flatnonzero((arr[:, 0] != starts) | (arr[:, 1] < 16))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"{idx}, line {i + 1}: record at offset {arr[i, 0]} (length {arr[i, 1]}), "
                     f"expected offset {starts[i]} and length >= 16: the index does not match "
                     f"{path} (rebuild it with mpjax.input.tfrecord.write_index)")
  expected = int(arr[:, 1].sum())
  # A shorter file (truncated shard) is left to the reader: the records it cut are then named
  # one by one (CorruptRecordError), and skip_corrupt can skip them.
  if size is not None and expected < size:
    raise ValueError(f"{idx}: its {len(arr)} records end at byte {expected}, but {path} has "
                     f"{size} bytes (rebuild it with mpjax.input.tfrecord.write_index)")
  return arr


def iter_records(path: str, check_crc: bool = True) -> Iterable[bytes]:
  """Sequential read of one shard (no index needed)."""
  with open(path, "rb") as f:
    buf = f.read()
  off = 0
  while off < len(buf):
    length, data = _read_frame(buf, off, path, check_crc)
    yield bytes(data)
    off += length + 16


class TFRecordSource:
  """Random access over TFRecord shards through their offset indexes (Grain data source).

  Pickles cheaply (paths + indexes); files are opened lazily per process.
  """

  def __init__(self, paths: Sequence[str], *, check_crc: bool = True, skip_corrupt: bool = False):
    if not paths:
      raise ValueError("TFRecordSource: no shard paths given")
    self.paths = [os.fspath(p) for p in paths]
    self.check_crc = check_crc
    self.skip_corrupt = skip_corrupt
    self.corrupt_count = 0
    self._index = [read_index(p) for p in self.paths]
    self._starts = np.cumsum([0] + [len(i) for i in self._index]).tolist()
    self._fds: dict[int, int] = {}

  def __len__(self) -> int:
    return self._starts[-1]

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fds"] = {}
    return state

  def locate(self, i: int) -> tuple[int, int, int]:
    """(shard number, byte offset, frame length) of global record i."""
    if not 0 <= i < len(self):
      raise IndexError(f"record {i} out of range [0, {len(self)})")
    s = bisect.bisect_right(self._starts, i) - 1
    off, n = self._index[s][i - self._starts[s]]
    return s, int(off), int(n)

  def __getitem__(self, i: int) -> bytes | None:
    s, off, n = self.locate(int(i))
    path = self.paths[s]
    fd = self._fds.get(s)
    if fd is None:
      fd = self._fds[s] = os.open(path, os.O_RDONLY)
    buf = os.pread(fd, n, off)
    try:
      if len(buf) != n:
        raise CorruptRecordError(path, off, f"file ends inside the record ({len(buf)} of {n} bytes)")
      length, data = _read_frame(buf, 0, path, self.check_crc)
      if length + 16 != n:
        raise CorruptRecordError(path, off, f"index says {n} bytes, frame says {length + 16}")
    except CorruptRecordError as e:
      if not self.skip_corrupt:
        raise CorruptRecordError(path, off, str(e).split(": ", 2)[-1]) from None
      self.corrupt_count += 1
      return None
    return bytes(data)

  def __repr__(self):
    return f"TFRecordSource({len(self.paths)} shards, {len(self)} records)"

  def __del__(self):
    for fd in getattr(self, "_fds", {}).values():
      try:
        os.close(fd)
      except OSError:
        pass


# ------------------------------------------------------------------------------------------------
# tf.train.Example without TensorFlow (tfds bundles the proto)
# ------------------------------------------------------------------------------------------------


def encode_example(features: Mapping[str, Any]) -> bytes:
  """dict -> serialized tf.train.Example.

  bytes/str (or lists of them) -> bytes_list; integer arrays/ints -> int64_list; float
  arrays/floats -> float_list (flattened: keep shapes in their own int64 feature).
  """
  from tensorflow_datasets.proto import tf_example_pb2

  ex = tf_example_pb2.Example()
  for key, value in features.items():
    feat = ex.features.feature[key]
    if isinstance(value, (bytes, str)):
      value = [value]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
      feat.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in value)
      continue
    arr = np.asarray(value)
    if arr.dtype.kind in "iub":
      feat.int64_list.value.extend(arr.astype(np.int64).ravel().tolist())
    elif arr.dtype.kind == "f":
      feat.float_list.value.extend(arr.astype(np.float32).ravel().tolist())
    elif arr.size == 0:
      feat.bytes_list.SetInParent()
    else:
      raise TypeError(f"encode_example: feature {key!r} has unsupported dtype {arr.dtype}")
  return ex.SerializeToString()


def decode_example(data: bytes) -> dict[str, Any]:
  """serialized tf.train.Example -> {name: list[bytes] | int64 array | float32 array}."""
  from tensorflow_datasets.proto import tf_example_pb2

  ex = tf_example_pb2.Example.FromString(data)
  out = {}
  for key, feat in ex.features.feature.items():
    kind = feat.WhichOneof("kind")
    if kind == "bytes_list":
      out[key] = list(feat.bytes_list.value)
    elif kind == "int64_list":
      out[key] = np.asarray(feat.int64_list.value, np.int64)
    elif kind == "float_list":
      out[key] = np.asarray(feat.float_list.value, np.float32)
    else:
      out[key] = []
  return out
