"""mpjax.input.pipeline on a small synthetic dataset: batches, order, sharding, resume, eval,
corrupt records; the manifest checks and the record parser of mpjax.records it reads through."""
import json
import os
import shutil

import numpy as np
import pytest

import grain
from data_prep import build, synthetic
from mpjax import records
from mpjax.audio import fbank
from mpjax.input import pipeline, tfrecord

TDIM = 256
AUG = dict(specaug=dict(freq_masks=1, freq_width=24, time_masks=1, time_width=48), roll=True,
           gain_db=6.0, tilt_db=3.0, pitch_bins=2.0, mixup_alpha=0.5, mixup_prob=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  raw, out = str(root / "raw"), str(root / "ds")
  synthetic.generate(raw, seed=1, n_songs=30, n_artists=8, regions=("global", "us", "kr"),
                     clip_seconds=5.5, weeks=36, fit_chart_oracle=False)
  build.build(build.BuildConfig(raw=raw, out=out, progress=False, records_per_shard=8))
  return out


@pytest.fixture(scope="module")
def manifest(data):
  with open(os.path.join(data, "manifest.json")) as f:
    return json.load(f)


def make(data, split="train", train=True, seed=0, augment=None, **cfg):
  cfg = {"batch_size": 4, "input_tdim": TDIM, **cfg}
  kw = {k: cfg.pop(k) for k in ("process_index", "process_count") if k in cfg}
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return pipeline.make_dataset(data, split, cfg=cfg, seed=seed, train=train, augment=augment, **kw)


def take(ds, n):
  it = iter(ds)
  out = [next(it) for _ in range(n)]
  return out


def records_of(batches):
  return [int(r) for b in batches for r, v in zip(b["record"], b["valid"]) if v > 0]


def decoded(data, split):
  m = json.load(open(os.path.join(data, "manifest.json")))
  src = tfrecord.TFRecordSource([os.path.join(data, s) for s in m["shards"][split]])
  return [tfrecord.decode_example(src[i]) for i in range(len(src))]


def test_train_batch_shapes_and_dtypes(data, manifest):
  (b,) = take(make(data, augment=AUG, regions_per_example=2), 1)
  H, F, L = manifest["horizon"], len(manifest["feature_names"]), len(manifest["labels"])
  expect = {"fbank": ((4, TDIM, 128), np.float32), "region_ids": ((4, 2), np.int32),
            "region_mask": ((4, 2), np.float32), "mp2": ((4, 2), np.float32),
            "mp2_weight": ((4, 2), np.float32), "longevity": ((4, 2), np.float32),
            "longevity_weight": ((4, 2), np.float32), "series": ((4, 2, H), np.float32),
            "series_mask": ((4, 2, H), np.float32), "series_known": ((4, 2, H), np.float32),
            "series_floor": ((4, 2, H), np.float32),
            "weekday": ((4, 2), np.int32), "extrinsic": ((4, 2, F), np.float32),
            "labels": ((4, L), np.int32), "record": ((4,), np.int32), "valid": ((4,), np.float32),
            "mixup_lambda": ((4,), np.float32)}
  assert set(b) == set(expect)
  for k, (shape, dtype) in expect.items():
    assert b[k].shape == shape and b[k].dtype == dtype, k
    assert np.isfinite(b[k]).all(), k
  assert type(b["fbank"]) is np.ndarray


def test_normalisation_stats_applied(data):
  xs = [b["fbank"] for b in take(make(data, batch_size=8, num_epochs=3), 9)]
  x = np.concatenate(xs)
  # 5.5 s clips = 548 frames > TDIM: no padding; (x - mean) / (2 std) over the train split.
  assert abs(float(x.mean())) < 0.05
  assert float(x.std()) == pytest.approx(0.5, abs=0.05)


def test_targets_follow_the_records(data, manifest):
  recs = decoded(data, "train")
  regions = manifest["regions"]
  H = manifest["horizon"]
  assert min(len(r["regions"]) for r in recs) < 3  # some record needs padding slots
  for b in make(data, regions_per_example=3, batch_size=1, num_epochs=1):
    for i in range(len(b["record"])):
      ex = recs[int(b["record"][i])]
      codes = [c.decode() for c in ex["regions"]]
      real = b["region_mask"][i] > 0
      assert real.sum() == min(3, len(codes))
      for slot in np.flatnonzero(real):
        code = regions[b["region_ids"][i, slot]]
        row = codes.index(code)
        target = ex["mp2_target"][row]
        if np.isfinite(target):
          assert b["mp2"][i, slot] == pytest.approx(target)
          assert b["mp2_weight"][i, slot] == 1
        else:
          assert b["mp2_weight"][i, slot] == 0 and b["mp2"][i, slot] == 0
        lon = ex["longevity_target"][row]
        assert b["longevity_weight"][i, slot] == float(np.isfinite(lon))
        assert b["longevity"][i, slot] == pytest.approx(lon if np.isfinite(lon) else 0.0)
        np.testing.assert_array_equal(b["series_mask"][i, slot],
                                      ex["series_mask"].reshape(-1, H)[row])
        floor, known = ex["series_floor"].reshape(-1, H)[row], ex["series_known"].reshape(-1, H)[row]
        np.testing.assert_array_equal(b["series_floor"][i, slot], np.where(known > 0, floor, 0))
      # Padding slots (fewer regions than requested) count for nothing.
      assert (b["mp2_weight"][i, ~real] == 0).all() and (b["series_mask"][i, ~real] == 0).all()
      assert (b["longevity_weight"][i, ~real] == 0).all() and (b["series_floor"][i, ~real] == 0).all()
      assert (b["region_ids"][i, ~real] == 0).all()
      assert len(set(b["region_ids"][i, real].tolist())) == real.sum()  # no region twice


def test_require_full_mp2(data, manifest):
  recs = decoded(data, "train")
  kept = dropped = 0
  for b in list(make(data, train=False, require_full_mp2=True)):
    for i in np.flatnonzero(b["valid"]):
      ex = recs[int(b["record"][i])]
      steps = dict(zip([c.decode() for c in ex["regions"]], ex["mp2_observed_steps"]))
      for slot in np.flatnonzero(b["region_mask"][i]):
        full = steps[manifest["regions"][b["region_ids"][i, slot]]] == manifest["mp2_weeks"]
        assert b["mp2_weight"][i, slot] == float(full)
        kept, dropped = kept + full, dropped + (not full)
  assert kept and dropped


def test_record_without_series_floor_still_loads(data, manifest):
  """A record written before series_floor existed: NaN floors from the reader, 0 in a batch
  (the censored loss then uses its proxy floor); the other fields as before."""
  ex = decoded(data, "train")[0]
  assert "series_floor" in ex and np.isfinite(ex["series_floor"]).any()
  schema = records.Schema(manifest)
  old = tfrecord.encode_example({k: v for k, v in ex.items() if k != "series_floor"})
  new_rec, old_rec = records.parse(tfrecord.encode_example(ex), schema), records.parse(old, schema)
  assert old_rec["series_floor"].shape == new_rec["series_floor"].shape
  assert old_rec["series_floor"].dtype == np.float32 and np.isnan(old_rec["series_floor"]).all()
  for k in ("series", "series_mask", "series_known", "mp2", "extrinsic"):
    np.testing.assert_array_equal(old_rec[k], new_rec[k])
  m = pipeline._Meta(manifest, pipeline.check_config({"input_tdim": 8}), None, data)
  rows = np.arange(len(old_rec["regions"]))
  t = pipeline._targets(old_rec, rows, old_rec["regions"], m)
  assert (t["series_floor"] == 0).all()
  assert (pipeline._targets(new_rec, rows, new_rec["regions"], m)["series_floor"] > 0).any()


def test_missing_targets_get_zero_weight_and_sample_valid_regions(data, manifest):
  m = pipeline._Meta(manifest, pipeline.check_config({"input_tdim": 8, "regions_per_example": 2,
                                                      "sample_valid_regions": True}), None, data)
  H, F = manifest["horizon"], len(manifest["feature_names"])
  ex = {"record": 0, "fbank16": np.zeros((20, 128), np.float16),
        "regions": np.array([0, 2], np.int32), "mp2": np.array([np.nan, 12.0], np.float32),
        "mp2_observed_steps": np.array([2, 6]), "series": np.full((2, H), 9.0, np.float32),
        "series_mask": np.ones((2, H), bool), "series_known": np.ones((2, H), bool),
        "weekday": np.array([4, 5], np.int32), "extrinsic": np.ones((2, F), np.float32),
        "labels": np.zeros(len(manifest["labels"]), np.int32)}
  t = pipeline._targets(ex, np.array([0, 1, -1]), np.array([0, 2, 0]), m)
  np.testing.assert_array_equal(t["weekday"], [4, 5, -1])
  np.testing.assert_array_equal(t["series_known"].sum(1), [H, H, 0])
  np.testing.assert_array_equal(t["mp2_weight"], [0, 1, 0])
  np.testing.assert_array_equal(t["mp2"], [0, 12, 0])  # never NaN in a batch
  np.testing.assert_array_equal(t["region_mask"], [1, 1, 0])
  assert t["series_mask"][2].sum() == 0 and t["extrinsic"][2].sum() == 0
  node = pipeline.TrainExamples(grain.MapDataset.source([ex]), m, seed=0)
  for i in range(10):  # only the region with a target is drawn (the other slot is padding)
    e = node[i]
    np.testing.assert_array_equal(e["region_ids"], [2, 0])
    np.testing.assert_array_equal(e["region_mask"], [1, 0])


def test_crop_is_pad_or_cut_then_normalize(data, manifest):
  m = pipeline._Meta(manifest, pipeline.check_config({"input_tdim": 300}), None, data)
  fb16 = (np.random.default_rng(0).normal(size=(250, 128)) * 3 - 5).astype(np.float16)
  for start in (0, 10):
    x, n = pipeline.crop(fb16, start, m.tdim, m.mean, m.std)
    ref = fbank.normalize(fbank.pad_or_cut(fb16[start:].astype(np.float32), 300), m.mean, m.std)
    assert n == 250 - start and x.dtype == np.float32
    np.testing.assert_array_equal(x, ref)


def test_same_seed_same_order_different_seed_different(data):
  a = records_of(take(make(data, seed=3), 6))
  b = records_of(take(make(data, seed=3), 6))
  c = records_of(take(make(data, seed=4), 6))
  assert a == b and a != c
  # Same seed also gives the same crops and augmentations.
  x = take(make(data, seed=3, augment=AUG), 2)
  y = take(make(data, seed=3, augment=AUG), 2)
  for u, v in zip(x, y):
    for k in u:
      np.testing.assert_array_equal(u[k], v[k])


def test_epochs_are_reshuffled_permutations(data, manifest):
  n = manifest["counts"]["train"]["records"]
  ds = make(data, batch_size=1, num_epochs=2)
  seen = records_of(list(ds))
  assert len(seen) == 2 * n
  e1, e2 = seen[:n], seen[n:]
  assert sorted(e1) == sorted(e2) == list(range(n)) and e1 != e2


def test_two_processes_see_disjoint_examples_covering_everything(data, manifest):
  n = manifest["counts"]["train"]["records"]
  parts = [records_of(list(make(data, batch_size=2, num_epochs=1, process_index=p,
                                process_count=2))) for p in (0, 1)]
  assert len(parts[0]) == len(parts[1]) == n // 2
  assert not set(parts[0]) & set(parts[1])
  assert len(set(parts[0]) | set(parts[1])) == n - n % 2  # the run's last n mod P dropped
  # Eval: every record exactly once over the processes, same number of full batches each.
  nv = manifest["counts"]["val"]["records"]
  ev = [list(make(data, "val", train=False, batch_size=2, process_index=p, process_count=2))
        for p in (0, 1)]
  assert len(ev[0]) == len(ev[1])
  assert all(b["fbank"].shape[0] == 1 for e in ev for b in e)
  got = records_of(ev[0]) + records_of(ev[1])
  assert sorted(got) == list(range(nv))


def test_the_global_stream_does_not_depend_on_the_process_count(data, manifest):
  """Across epoch boundaries too: process p of P reads global positions p, p + P, ..."""
  n = manifest["counts"]["train"]["records"]
  assert n % 2  # an odd split: the case where per-epoch splitting would differ
  one = list(make(data, batch_size=2, num_epochs=3, augment=AUG))
  two = [list(make(data, batch_size=2, num_epochs=3, augment=AUG, process_index=p,
                   process_count=2)) for p in (0, 1)]
  flat = lambda batches, k: [x for b in batches for x in b[k]]
  for k in ("record", "fbank", "region_ids"):
    a = flat(one, k)
    merged = [flat(two[i % 2], k)[i // 2] for i in range(2 * len(flat(two[0], k)))]
    assert len(merged) >= 3 * n - 1
    for i, (u, v) in enumerate(zip(merged, a)):
      np.testing.assert_array_equal(u, v, err_msg=f"{k} at stream position {i}")


def test_iterator_state_restores_the_same_batches(data):
  ds = make(data, augment=AUG, regions_per_example=2)
  it = iter(ds)
  for _ in range(8):  # past the first epoch boundary (27 records, 4 per batch)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = iter(make(data, augment=AUG, regions_per_example=2))  # a NEW pipeline and iterator
  it2.set_state(json.loads(json.dumps(state)))  # the state survives JSON (Grain checkpoints)
  for e in expected:
    g = next(it2)
    for k in e:
      np.testing.assert_array_equal(g[k], e[k])


def test_iterator_state_with_worker_processes(data):
  ds = make(data, workers=2, augment=AUG)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it.close()
  it2 = iter(make(data, workers=2, augment=AUG))
  it2.set_state(state)
  got = [next(it2) for _ in range(3)]
  it2.close()
  for e, g in zip(expected, got):
    assert type(g["fbank"]) is np.ndarray
    for k in e:
      np.testing.assert_array_equal(g[k], e[k])
  # Eval with workers: the same full batches in the same order as in-process.
  a = list(make(data, train=False, eval_batch_size=4))
  b = list(make(data, train=False, eval_batch_size=4, workers=2))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_eval_is_deterministic_and_sees_every_record_once(data, manifest):
  n = manifest["counts"]["train"]["records"]
  a = list(make(data, train=False, eval_batch_size=5))
  b = list(make(data, train=False, eval_batch_size=5))
  assert len(a) == -(-n // 5) and all(x["fbank"].shape[0] == 5 for x in a)  # full, padded
  assert sorted(records_of(a)) == list(range(n))
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  pad = np.concatenate([x["valid"] for x in a]) == 0
  assert pad.sum() == len(a) * 5 - n
  assert (np.concatenate([x["mp2_weight"] for x in a])[pad] == 0).all()
  # All regions, in vocabulary order, in every row.
  V = len(manifest["regions"])
  assert (a[0]["region_ids"] == np.arange(V)).all()
  # Multi-crop eval: [B, crops, T, mel]; the first and last crops are the clip's ends.
  (m,) = take(make(data, train=False, eval_batch_size=2, eval_crops=3), 1)
  assert m["fbank"].shape == (2, 3, TDIM, 128)
  assert not np.array_equal(m["fbank"][0, 0], m["fbank"][0, 2])


def test_crop_longer_than_record_is_padded(data, manifest):
  (b,) = take(make(data, train=False, input_tdim=600, eval_batch_size=2), 1)
  frames = 1 + (int(5.5 * 16000) - 400) // 160
  fb = manifest["fbank"]
  pad_value = (0.0 - fb["mean"]) / (2 * fb["std"])  # zero log-mel, normalised (official AST)
  np.testing.assert_allclose(b["fbank"][:, frames:], pad_value, rtol=1e-5)
  assert not np.allclose(b["fbank"][:, frames - 1], pad_value)


def test_bad_config_gives_clear_errors(data, tmp_path):
  with pytest.raises(ValueError, match="split='dev'"):
    make(data, split="dev")
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    make(str(tmp_path))
  with pytest.raises(ValueError, match=r"input\.batch_size=5 is not divisible by process_count=2"):
    make(data, batch_size=5, process_count=2)
  with pytest.raises(ValueError, match=r"input\.eval_batch_size=3"):
    make(data, train=False, eval_batch_size=3, process_count=2)
  with pytest.raises(ValueError, match=r"input\.batch_sise: unknown field"):
    make(data, batch_sise=4)
  with pytest.raises(ValueError, match=r"input\.regions_per_example=9"):
    make(data, regions_per_example=9)
  with pytest.raises(ValueError, match=r"input\.pad_region_id=7"):
    make(data, pad_region_id=7)
  with pytest.raises(ValueError, match=r"seed=-1"):
    make(data, seed=-1)
  with pytest.raises(ValueError, match=r"augment\.mixup"):
    make(data, augment=dict(mixup=0.5))


def corrupt_copy(data, tmp_path):
  out = tmp_path / "ds"
  shutil.copytree(data, out)
  path = str(out / "train-00001-of-00004.tfrecord")
  offset, length = tfrecord.read_index(path)[2]
  with open(path, "r+b") as f:  # flip one byte inside the payload of the shard's 3rd record
    f.seek(int(offset) + 12 + 100)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0x40]))
  return str(out), path, int(offset), 8 + 2  # global index: shard 1 holds records 8..15


def test_corrupt_record_is_named_or_skipped(data, tmp_path):
  ds_dir, path, offset, index = corrupt_copy(data, tmp_path)
  with pytest.raises(tfrecord.CorruptRecordError) as e:
    list(make(ds_dir, shuffle=False, num_epochs=1))
  assert path in str(e.value) and f"byte offset {offset}" in str(e.value)
  assert e.value.path == path and e.value.offset == offset
  before = pipeline.corrupt_counts().get(path, 0)
  seen = records_of(list(make(ds_dir, batch_size=1, shuffle=False, num_epochs=1,
                              skip_corrupt=True)))
  n = len(decoded(data, "train"))
  assert sorted(seen) == [i for i in range(n) if i != index]
  assert pipeline.corrupt_counts()[path] == before + 1
  # Eval keeps its batch count: the bad record becomes a valid=0 element.
  ev = list(make(ds_dir, train=False, eval_batch_size=4, skip_corrupt=True))
  valid = {int(r): v for b in ev for r, v in zip(b["record"], b["valid"])}
  assert valid[index] == 0 and sum(valid.values()) == n - 1


def test_non_finite_spectrogram_is_named(data, tmp_path):
  out = tmp_path / "ds"
  shutil.copytree(data, out)
  path = str(out / "train-00001-of-00004.tfrecord")
  src = tfrecord.TFRecordSource([path])
  exs = [tfrecord.decode_example(src[i]) for i in range(len(src))]
  fb = np.frombuffer(exs[2]["fbank"][0], np.float16).copy()
  fb[[5, 700]] = np.nan
  exs[2]["fbank"] = [fb.tobytes()]
  with tfrecord.ShardWriter(path) as w:
    for ex in exs:
      w.write(tfrecord.encode_example(ex))
  offset = int(tfrecord.read_index(path)[2][0])
  clip = exs[2]["clip_id"][0].decode()
  with pytest.raises(records.NonFiniteInput) as e:
    list(make(str(out), shuffle=False, num_epochs=1))
  msg = str(e.value)
  assert path in msg and f"byte offset {offset}" in msg and repr(clip) in msg
  assert "2 non-finite (NaN/Inf) values" in msg


@pytest.mark.parametrize("edit,match", [
    (lambda lines: lines[:3] + lines[4:], r"line 4: record at offset \d+ .*expected offset"),
    (lambda lines: lines[:3] + [lines[2]] + lines[3:], r"line 4: record at offset \d+ .*expected offset"),
    (lambda lines: lines[:2] + ["12 x\n"] + lines[3:], r"line 3: expected 'offset length' \(two integers\), got '12 x'"),
    (lambda lines: lines[:-1], r"records end at byte \d+, but .* has \d+ bytes"),
])
def test_damaged_shard_index_is_named(data, tmp_path, edit, match):
  out = tmp_path / "ds"
  shutil.copytree(data, out)
  idx = str(out / "train-00001-of-00004.tfrecord.idx")
  lines = open(idx).readlines()
  open(idx, "w").writelines(edit(lines))
  with pytest.raises(ValueError, match=match) as e:
    make(str(out), shuffle=False, num_epochs=1)
  assert idx in str(e.value)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("horizon"), r"manifest.json: horizon: missing"),
    (lambda m: m["fbank"].__setitem__("mean", float("nan")), r"fbank.mean: nan is not a finite number"),
    (lambda m: m["regions"].reverse(), r"regions: .* is not sorted and unique"),
    (lambda m: m["shards"]["val"].append(m["shards"]["test"][0]), r"shards.val: \['test-.*are not val shards"),
    (lambda m: m["counts"]["train"].__setitem__("records", 999), r"counts 999 train records, but the indexes of its 4 shards hold \d+"),
])
def test_inconsistent_manifest_is_named(data, tmp_path, edit, match):
  out = tmp_path / "ds"
  shutil.copytree(data, out)
  path = out / "manifest.json"
  m = json.load(open(path))
  edit(m)
  path.write_text(json.dumps(m))
  with pytest.raises(ValueError, match=match):
    make(str(out), shuffle=False, num_epochs=1)


def test_manifest_that_is_not_json_is_named(data, tmp_path):
  out = tmp_path / "ds"
  shutil.copytree(data, out)
  (out / "manifest.json").write_text('{"regions": [')
  with pytest.raises(ValueError, match=r"manifest.json: not valid JSON"):
    records.load_manifest(str(out))


def test_public_reader_is_the_pipelines_parser(data, manifest):
  recs = list(records.read(data, "val"))
  meta = pipeline._Meta(manifest, pipeline.check_config(None), None, data)
  paths = records.split_paths(data, manifest, "val")
  source = pipeline.ExampleSource(paths, meta)
  raw = decoded(data, "val")
  assert len(recs) == len(source) == len(raw) == manifest["counts"]["val"]["records"] > 0
  for i, rec in enumerate(recs):
    assert rec["record"] == i and rec["song_id"] == raw[i]["song_id"][0].decode()
    assert rec["track_id"] == raw[i]["track_id"][0].decode() != ""
    same = source[i]
    assert same.keys() == rec.keys()
    for k, v in rec.items():
      np.testing.assert_array_equal(same[k], v, err_msg=k)
  with pytest.raises(ValueError, match=r"split='dev': unknown; .* has splits \['test', 'train', 'val'\]"):
    records.read(data, "dev")  # checked at the call, not at the first record
