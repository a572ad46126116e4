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


# ------------------------------------------------------------------------------------------------
# Compatibility with an implementation this project did not write: the `tfrecord` PyPI package
# (github.com/vahidk/tfrecord, in TEST_REQUIRES): its own reader, writer, index tool and copy of
# TensorFlow's example.proto, and CRC-32C from the `crc32c` package (ours: google-crc32c). It is
# imported inside the tests: when it is missing they fail (ImportError), they never skip.
# ------------------------------------------------------------------------------------------------


def _independent():
  from tfrecord import reader, writer
  from tfrecord.tools import tfrecord2idx
  return reader, writer, tfrecord2idx


def _features(i):
  """Features as data_prep.build.make_example writes them, with edge values."""
  rng = np.random.RandomState(i)
  fbank = rng.randn(5 + i, 8).astype(np.float16)
  fbank[0, :2] = fbank[-1, -2:] = 0  # NUL bytes inside and at the end of the fbank bytes
  r = 1 + i % 3
  return {
      "clip_id": f"itunes:{1000 + i}", "track_id": f"t{i}", "song_id": "ISRC%03d" % i,
      "source": "synthetic", "fbank": fbank.tobytes(), "fbank_shape": np.asarray(fbank.shape, np.int64),
      "regions": ["us", "kr", "th"][:r], "debut": ["2025-10-03", "2025-10-04", "2025-10-05"][:r],
      "mp2_target": np.array([np.nan, 12.5, -0.0][:r], np.float32),
      "mp2_observed_steps": np.array([6, 0, 3][:r], np.int64),
      "series": rng.randn(r, 4).astype(np.float32) * np.float32(1e30) ** (i % 2),
      "series_mask": rng.randint(0, 2, (r, 4)).astype(np.int64),
      "extrinsic": np.array([np.inf, -np.inf, 1e-45, 3.4e38, i], np.float32),
      "label/big": np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, -1, i], np.int64),
  }


_KIND = {"clip_id": "byte", "track_id": "byte", "song_id": "byte", "source": "byte",
         "fbank": "byte", "regions": "byte", "debut": "byte", "fbank_shape": "int",
         "mp2_observed_steps": "int", "series_mask": "int", "label/big": "int",
         "mp2_target": "float", "series": "float", "extrinsic": "float"}


def _as_bytes_list(v):
  return [x.encode() if isinstance(x, str) else x for x in ([v] if isinstance(v, (str, bytes)) else v)]


def _assert_features_equal(got, want, where):
  assert set(got) == set(want), where
  for k, v in want.items():
    if _KIND[k] == "byte":
      assert _as_bytes_list(got[k]) == _as_bytes_list(v), (where, k)
    else:
      dtype = np.int64 if _KIND[k] == "int" else np.float32
      g = np.asarray(got[k])
      assert g.dtype == dtype, (where, k, g.dtype)
      # Bitwise: NaN payload, -0.0, subnormals and infinities must survive as written.
      np.testing.assert_array_equal(g.view(np.int64 if dtype == np.int64 else np.int32),
                                    np.asarray(v, dtype).ravel().view(g.dtype.str.replace("f", "i")),
                                    err_msg=f"{where}: {k}")


def test_independent_reader_reads_our_shards(tmp_path):
  """Shards written by the data_prep.build writer, read back by the `tfrecord` package: frames,
  both CRCs, the .idx files and every decoded tf.train.Example feature equal what we wrote."""
  reader, writer, tfrecord2idx = _independent()
  from data_prep.build import SplitWriter

  # 8 records in shards of 3, 3, 2 (their reader cannot seek through a one-line index:
  # np.loadtxt gives a 1-D array there, with their own index tool's file too).
  feats = [_features(i) for i in range(8)]
  payloads = [tfrecord.encode_example(f) for f in feats]
  w = SplitWriter(str(tmp_path), "train", per_shard=3)
  for p in payloads:
    w.write(p)
  names = w.finish()
  assert names == [tfrecord.shard_name("train", i, 3) for i in range(3)]
  paths = [str(tmp_path / n) for n in names]
  per_shard = [payloads[0:3], payloads[3:6], payloads[6:8]]

  for path, want in zip(paths, per_shard):
    # Framing: their sequential reader finds exactly our payloads...
    got = [bytes(r) for r in reader.tfrecord_iterator(path)]
    assert got == want, path
    # ...and every header/footer is what their writer (their CRC-32C, their masking) produces.
    crc = writer.TFRecordWriter.masked_crc
    expect = b"".join(struct.pack("<Q", len(p)) + crc(struct.pack("<Q", len(p))) + p + crc(p)
                      for p in want)
    with open(path, "rb") as f:
      assert f.read() == expect, path
    # Index: their index tool writes our .idx byte for byte, and their reader seeks through ours.
    tfrecord2idx.create_index(path, str(tmp_path / "theirs.idx"))
    with open(path + ".idx") as ours, open(tmp_path / "theirs.idx") as theirs:
      assert ours.read() == theirs.read(), path
    parts = [[bytes(r) for r in reader.tfrecord_iterator(path, path + ".idx", shard=(i, 2))]
             for i in range(2)]
    assert parts[0] + parts[1] == want, path

  # Features: decoded by their Example proto and loader (with a declared type per feature, which
  # their loader checks), compared with the values we encoded, not with our decoder.
  got = [ex for path in paths for ex in reader.tfrecord_loader(path, None, description=_KIND)]
  assert len(got) == len(feats)
  for i, (g, f) in enumerate(zip(got, feats)):
    _assert_features_equal(g, f, f"record {i}")
  # Bytes lists exactly (their loader turns multi-value lists into numpy bytes, which drops
  # trailing NULs): the raw proto fields, through their own Example class.
  from tfrecord import example_pb2
  for i, (p, f) in enumerate(zip(payloads, feats)):
    ex = example_pb2.Example.FromString(p)
    assert set(ex.features.feature) == set(f)
    for k in f:
      kind = ex.features.feature[k].WhichOneof("kind")
      assert kind == {"byte": "bytes_list", "int": "int64_list", "float": "float_list"}[_KIND[k]], (i, k)
      if _KIND[k] == "byte":
        assert list(ex.features.feature[k].bytes_list.value) == _as_bytes_list(f[k]), (i, k)


def test_our_reader_reads_independently_written_records(tmp_path):
  """Records written by the `tfrecord` package's writer (its proto, its CRC-32C) are read by our
  CRC-checking reader and decoder; our index rebuild equals their index tool's."""
  reader, writer, tfrecord2idx = _independent()
  path = str(tmp_path / "theirs.tfrecord")
  data = [_features(i) for i in range(5)]
  w = writer.TFRecordWriter(path)
  for f in data:
    w.write({k: (_as_bytes_list(v) if _KIND[k] == "byte" else np.asarray(v).ravel().tolist(), _KIND[k])
             for k, v in f.items()})
  w.close()
  tfrecord2idx.create_index(path, path + ".idx")
  src = tfrecord.TFRecordSource([path])  # reads their .idx, checks both CRCs of every record
  assert len(src) == 5
  for i in range(5):
    _assert_features_equal(tfrecord.decode_example(src[i]), data[i], f"record {i}")
  assert [tfrecord.decode_example(r)["clip_id"] for r in tfrecord.iter_records(path)] == [
      [f["clip_id"].encode()] for f in data]
  with open(path + ".idx") as f:
    theirs = f.read()
  tfrecord.write_index(path)
  with open(path + ".idx") as f:
    assert f.read() == theirs
