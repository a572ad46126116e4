"""TFRecord framing, CRC checks, offset index, random access, Example codec."""
import os
import pickle
import struct

import numpy as np
import pytest

from mpjax.input import tfrecord


def write(tmp_path, name, payloads):
  path = str(tmp_path / name)
  with tfrecord.ShardWriter(path) as w:
    for p in payloads:
      w.write(p)
  return path


def test_known_crc_and_frame_layout():
  # CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720); masking per TensorFlow.
  crc = 0xE3069283
  assert tfrecord.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  f = tfrecord.frame(b"hello")
  assert len(f) == 5 + 16
  assert struct.unpack("<Q", f[:8])[0] == 5
  assert f[12:17] == b"hello"


def test_roundtrip_random_access_and_index(tmp_path):
  rng = np.random.RandomState(0)
  a = [rng.bytes(rng.randint(0, 3000)) for _ in range(17)]
  b = [rng.bytes(rng.randint(0, 3000)) for _ in range(5)]
  pa = write(tmp_path, tfrecord.shard_name("train", 0, 2), a)
  pb = write(tmp_path, tfrecord.shard_name("train", 1, 2), b)
  assert os.path.basename(pa) == "train-00000-of-00002.tfrecord"
  src = tfrecord.TFRecordSource([pa, pb])
  assert len(src) == 22
  for i in rng.permutation(22):
    assert src[i] == (a + b)[i]
  assert list(tfrecord.iter_records(pb)) == b
  # The rebuilt index equals the written one; the source pickles (Grain worker processes).
  written = tfrecord.read_index(pa).copy()
  tfrecord.write_index(pa)
  np.testing.assert_array_equal(tfrecord.read_index(pa), written)
  src2 = pickle.loads(pickle.dumps(src))
  assert src2[21] == b[-1]
  with pytest.raises(IndexError):
    src[22]


def test_flipped_byte_is_reported_with_file_and_offset(tmp_path):
  payloads = [bytes([i]) * 100 for i in range(4)]
  path = write(tmp_path, "x.tfrecord", payloads)
  frame_len = 116
  with open(path, "r+b") as f:  # flip one data byte inside record 2
    f.seek(2 * frame_len + 12 + 50)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0x01]))
  src = tfrecord.TFRecordSource([path])
  assert src[1] == payloads[1] and src[3] == payloads[3]
  with pytest.raises(tfrecord.CorruptRecordError, match=rf"x\.tfrecord: corrupt TFRecord at byte offset {2 * frame_len}: data CRC") as e:
    src[2]
  assert e.value.path == path and e.value.offset == 2 * frame_len
  with pytest.raises(tfrecord.CorruptRecordError, match=f"offset {2 * frame_len}"):
    list(tfrecord.iter_records(path))
  skipping = tfrecord.TFRecordSource([path], skip_corrupt=True)
  assert [skipping[i] is None for i in range(4)] == [False, False, True, False]
  assert skipping.corrupt_count == 1


def test_corrupt_length_and_truncation(tmp_path):
  path = write(tmp_path, "y.tfrecord", [b"a" * 10, b"b" * 10])
  with open(path, "r+b") as f:
    f.seek(26)  # length field of record 1
    f.write(b"\xff")
  with pytest.raises(tfrecord.CorruptRecordError, match="offset 26: length CRC"):
    tfrecord.TFRecordSource([path])[1]
  path2 = write(tmp_path, "z.tfrecord", [b"a" * 10, b"b" * 10])
  with open(path2, "r+b") as f:
    f.truncate(40)
  with pytest.raises(tfrecord.CorruptRecordError, match="offset 26: file ends inside"):
    tfrecord.TFRecordSource([path2])[1]


def test_missing_index_and_aborted_writer(tmp_path):
  path = str(tmp_path / "w.tfrecord")
  with pytest.raises(RuntimeError):
    with tfrecord.ShardWriter(path) as w:
      w.write(b"x")
      raise RuntimeError("killed mid-shard")
  assert os.listdir(tmp_path) == []  # nothing half-written is left behind
  with open(path, "wb") as f:
    f.write(tfrecord.frame(b"x"))
  with pytest.raises(FileNotFoundError, match=r"w\.tfrecord\.idx: missing offset index"):
    tfrecord.TFRecordSource([path])


def test_example_codec_roundtrip():
  fb = np.random.RandomState(1).randn(7, 4).astype(np.float16)
  feats = {"clip_id": "c1", "regions": ["us", "kr"], "fbank": fb.tobytes(),
           "fbank_shape": np.array(fb.shape), "mp2_target": np.array([1.5, np.nan], np.float32),
           "series_mask": np.array([[1, 0], [0, 1]], np.uint8)}
  ex = tfrecord.decode_example(tfrecord.encode_example(feats))
  assert ex["clip_id"] == [b"c1"] and ex["regions"] == [b"us", b"kr"]
  np.testing.assert_array_equal(np.frombuffer(ex["fbank"][0], np.float16).reshape(ex["fbank_shape"]), fb)
  np.testing.assert_array_equal(ex["mp2_target"], [1.5, np.nan])
  np.testing.assert_array_equal(ex["series_mask"], [1, 0, 0, 1])
  with pytest.raises(TypeError, match="feature 'bad'"):
    tfrecord.encode_example({"bad": np.array([1j])})


def test_tensorflow_reads_our_files_if_installed(tmp_path):
  tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (not a dependency)")
  payloads = [tfrecord.encode_example({"i": np.array([i])}) for i in range(3)]
  path = write(tmp_path, "tf.tfrecord", payloads)
  got = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  assert got == payloads
