"""data_prep.build end to end: synthetic raw dir -> TFRecords -> read back and checked."""
import argparse
import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from data_prep import build, synthetic, tables
from mpjax.input import tfrecord

from fakes import MISSING_DAY, daily_charts

SMALL = dict(n_songs=40, n_artists=12, regions=("global", "us", "kr"), clip_seconds=5.5, weeks=40)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("raw"))
  synthetic.generate(d, seed=3, **SMALL, fit_chart_oracle=False)
  return d


def run(raw, out, **kw):
  return build.build(build.BuildConfig(raw=raw, out=str(out), progress=False,
                                       records_per_shard=8, **kw))


def records(out, split):
  paths = sorted(glob.glob(os.path.join(out, f"{split}-*.tfrecord")))
  src = tfrecord.TFRecordSource(paths) if paths else []
  return [tfrecord.decode_example(src[i]) for i in range(len(src))]


def test_records_match_targets_and_schema(raw, tmp_path):
  out = tmp_path / "ds"
  m = run(raw, out)
  man = json.loads((out / "manifest.json").read_text())
  assert man["regions"] == ["global", "kr", "us"]
  T, F = man["horizon"], len(man["feature_names"])
  assert man["labels"] == ["tiktok"]
  total = 0
  clips = tables.read(os.path.join(raw, "clips.csv"), "clips").set_index("clip_id")
  for split in build.SPLITS:
    recs = records(str(out), split)
    assert len(recs) == man["counts"][split]["records"]
    total += len(recs)
    shards = man["shards"][split]
    assert all(s.endswith(f"-of-{len(shards):05d}.tfrecord") for s in shards)
    for r in recs:
      R = len(r["regions"])
      assert R >= 1 and set(x.decode() for x in r["regions"]) <= set(man["regions"])
      assert r["series"].shape == (R * T,) and r["series_mask"].shape == (R * T,)
      assert r["extrinsic"].shape == (R * F,) and r["mp2_target"].shape == (R,)
      shape = tuple(r["fbank_shape"])
      fb = np.frombuffer(r["fbank"][0], np.float16).reshape(shape)
      assert shape[1] == 128 and shape[0] == 1 + (int(5.5 * 16000) - 400) // 160
      assert np.isfinite(fb).all()
      assert r["source"] == [b"synthetic"]
      assert r["label/tiktok"][0] in (0, 1)
      assert clips.loc[r["clip_id"][0].decode(), "track_id"] == r["track_id"][0].decode()
      mask = r["series_mask"].reshape(R, T)
      series = r["series"].reshape(R, T)
      assert (series[mask == 0] == 0).all() and (series[mask == 1] > 0).all()
  assert total == m["counts"]["train"]["records"] + m["counts"]["val"]["records"] + m["counts"]["test"]["records"]
  assert man["skipped"]["total"] + total == len(clips)


def test_targets_in_records_equal_chart_rows(raw, tmp_path):
  """One record's series is the log1p of the chart streams from its debut on (independent check)."""
  out = tmp_path / "ds"
  run(raw, out)
  charts = tables.read(os.path.join(raw, "charts.csv"), "charts")
  rec = records(str(out), "train")[0]
  tid = rec["track_id"][0].decode()
  T = 26
  for j, region in enumerate(x.decode() for x in rec["regions"]):
    rows = charts[(charts.track_id == tid) & (charts.region == region)].sort_values("date")
    debut = rec["debut"][j].decode()
    assert debut == rows["date"].iloc[0]
    dates = pd.to_datetime(rows["date"])
    steps = ((dates - pd.Timestamp(debut)).dt.days // 7).to_numpy()
    expect = np.zeros(T, np.float32)
    keep = steps < T
    expect[steps[keep]] = np.log1p(rows["streams"].to_numpy()[keep])
    np.testing.assert_allclose(rec["series"].reshape(-1, T)[j], expect, rtol=1e-6)
    mp2 = np.log1p(rows["streams"].to_numpy()[steps < 6].sum())
    np.testing.assert_allclose(rec["mp2_target"][j], mp2, rtol=1e-6)


def test_split_by_song_never_leaks_and_stats_are_train_only(raw, tmp_path):
  out = tmp_path / "ds"
  man = run(raw, out)
  songs = {s: {r["song_id"][0] for r in records(str(out), s)} for s in build.SPLITS}
  assert not songs["train"] & songs["val"] and not songs["train"] & songs["test"]
  assert not songs["val"] & songs["test"]
  # Album versions (several clips of one song) exist and stay together.
  tracks = tables.read(os.path.join(raw, "tracks.csv"), "tracks")
  assert tracks["song_id"].duplicated().any()
  x = np.concatenate([np.frombuffer(r["fbank"][0], np.float16).astype(np.float64)
                      for r in records(str(out), "train")])
  assert man["fbank"]["mean"] == pytest.approx(x.mean(), rel=1e-9)
  assert man["fbank"]["std"] == pytest.approx(x.std(), rel=1e-6)


def test_same_input_same_bytes(raw, tmp_path):
  run(raw, tmp_path / "a")
  run(raw, tmp_path / "b")
  def digest(d):
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in sorted(glob.glob(str(d / "*.tfrecord*")))}
  assert digest(tmp_path / "a") == digest(tmp_path / "b") and digest(tmp_path / "a")
  ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
  mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
  ma["provenance"].pop("build_args"), mb["provenance"].pop("build_args")
  assert ma == mb


def test_bad_audio_is_skipped_and_listed(raw, tmp_path):
  bad_raw = tmp_path / "raw"
  shutil.copytree(raw, bad_raw)
  clips = tables.read(str(bad_raw / "clips.csv"), "clips")
  first = clips.iloc[0]
  (bad_raw / first.audio_path).write_bytes(b"RIFF\x00\x00garbage")
  second = clips.iloc[1]
  os.remove(bad_raw / second.audio_path)
  man = run(str(bad_raw), tmp_path / "ds")
  skipped = pd.read_csv(tmp_path / "ds" / "skipped.csv")
  reasons = dict(zip(skipped.clip_id, skipped.reason))
  assert reasons[first.clip_id] == "corrupt"
  assert reasons[second.clip_id] in ("missing", "corrupt")
  assert man["skipped"]["total"] == len(skipped)
  assert "corrupt" in (tmp_path / "ds" / "build_report.md").read_text()
  # The detail says why, not only which file.
  details = dict(zip(skipped.clip_id, skipped.detail))
  assert details[first.clip_id].startswith(first.audio_path + ": soundfile:")
  assert details[second.clip_id] == f"{second.audio_path}: no such file"


def test_clipped_audio_is_reported_or_skipped(raw, tmp_path):
  import soundfile as sf
  clip_raw = tmp_path / "raw"
  shutil.copytree(raw, clip_raw)
  clips = tables.read(str(clip_raw / "clips.csv"), "clips")
  first = clips.iloc[0]
  path = clip_raw / first.audio_path
  wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
  loud = np.clip(wave * 50.0, -1.0, 1.0)  # hard clipping: most samples at full scale
  sf.write(str(path), loud, sr, subtype="FLOAT" if path.suffix == ".wav" else None)
  kept = run(str(clip_raw), tmp_path / "kept")
  assert kept["level_problems_kept"] >= 1
  assert first.clip_id not in set(pd.read_csv(tmp_path / "kept" / "skipped.csv").clip_id)
  listed = pd.read_csv(tmp_path / "kept" / "level_problems.csv")
  assert "clipped" in dict(zip(listed.clip_id, listed.detail))[first.clip_id]
  strict = build.build(build.BuildConfig(raw=str(clip_raw), out=str(tmp_path / "strict"),
                                         progress=False, skip_clipped=True))
  skipped = pd.read_csv(tmp_path / "strict" / "skipped.csv")
  assert dict(zip(skipped.clip_id, skipped.reason))[first.clip_id] == "clipped"
  assert strict["skipped"]["total"] == kept["skipped"]["total"] + 1


def test_existing_dataset_is_never_overwritten_and_bad_config_named(raw, tmp_path):
  run(raw, tmp_path / "ds")
  before = sorted(os.listdir(tmp_path / "ds"))
  with pytest.raises(FileExistsError, match="already holds TFRecord shards"):
    run(raw, tmp_path / "ds")
  assert sorted(os.listdir(tmp_path / "ds")) == before
  with pytest.raises(ValueError, match="--split-by debut needs --debut-cutoffs"):
    run(raw, tmp_path / "x", split_by="debut")
  with pytest.raises(ValueError, match="fractions"):
    run(raw, tmp_path / "x", fractions=(0.5, 0.6, 0.1))


def test_split_by_debut_date(raw, tmp_path):
  out = tmp_path / "ds"
  man = run(raw, out, split_by="debut", debut_cutoffs=("2024-02-15", "2024-03-14"))
  firsts = {s: [min(d.decode() for d in r["debut"]) for r in records(str(out), s)] for s in build.SPLITS}
  assert man["counts"]["train"]["records"] and man["counts"]["test"]["records"]
  # A record's own earliest debut can be later than its song's (other versions), never earlier.
  assert all(d >= "2024-03-14" for d in firsts["test"])
  assert all(d >= "2024-02-15" for d in firsts["val"])


def test_chart_only_build_from_real_csv_excerpt(tmp_path):
  from data_prep import kworb_csv
  src = os.path.join(os.path.dirname(__file__), "fixtures", "charts")
  csvs = sorted(glob.glob(os.path.join(src, "*.csv*")))
  assert csvs, "fixture excerpt of the real kworb CSV is missing"
  raw = tmp_path / "raw"
  raw.mkdir()
  tables.write(kworb_csv.load_daily_csv(csvs[0]), str(raw / "charts.csv"), "charts")
  man = run(str(raw), tmp_path / "ds", chart_only=True, period="daily", horizon=7)
  assert man["has_audio"] is False
  recs = [r for s in build.SPLITS for r in records(str(tmp_path / "ds"), s)]
  assert recs and all(tuple(r["fbank_shape"]) == (0, 128) for r in recs)


def test_cli_help_and_one_command_demo(tmp_path, capsys):
  with pytest.raises(SystemExit):
    build.main(["--help"])
  text = capsys.readouterr().out
  for opt in ("--raw", "--out", "--period", "--horizon", "--mp2-weeks", "--split-by", "--split",
              "--debut-cutoffs", "--window", "--seed", "--records-per-shard", "--chart-only"):
    assert opt in text
  synthetic.main(["--out", str(tmp_path / "raw"), "--songs", "16", "--artists", "6",
                  "--clip-seconds", "5.5", "--weeks", "36", "--quiet", "--build", str(tmp_path / "ds")])
  man = json.loads((tmp_path / "ds" / "manifest.json").read_text())
  assert sum(c["records"] for c in man["counts"].values()) > 0


def test_window_argument_takes_an_open_end():
  # The targets take an open end ('' = open); the CLI used to reject it.
  assert build._window("2025-09-01,") == ("2025-09-01", "")
  assert build._window(",2025-12-31") == ("", "2025-12-31")
  assert build._window("2025-09-01,2025-12-31") == ("2025-09-01", "2025-12-31")
  for bad in (",", "2025-09-01", "2025-13-01,", "a,b"):
    with pytest.raises(argparse.ArgumentTypeError):
      build._window(bad)


# ------------------------------------------------------------------------------------------------
# Daily chart-only data: known days and the time split (--cutoff)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daily_raw(tmp_path_factory):
  d = tmp_path_factory.mktemp("daily_raw")
  tables.write(daily_charts(), str(d / "charts.csv"), "charts")
  return str(d)


def _steps(rec):
  """[(region, debut, step day, mask, known)] of a record, one per region and step."""
  h = len(rec["series_mask"]) // len(rec["regions"])
  out = []
  for j, (r, debut) in enumerate(zip(rec["regions"], rec["debut"])):
    d0 = pd.Timestamp(debut.decode())
    for t in range(h):
      out.append((r.decode(), debut.decode(), (d0 + pd.Timedelta(days=t)).date().isoformat(),
                  int(rec["series_mask"][j * h + t]), int(rec["series_known"][j * h + t])))
  return out


def test_series_known_written_and_read(daily_raw, tmp_path):
  from mpjax.input import pipeline
  out = tmp_path / "ds"
  man = run(daily_raw, out, chart_only=True, period="daily", horizon=14)
  assert "series_known" in man["record_schema"]
  steps = [s for sp in build.SPLITS for rec in records(str(out), sp) for s in _steps(rec)]
  last_day = "2025-05-01"  # the data end: 2025-02-01 + 89 days
  seen_missing = 0
  for region, debut, day, mask, known in steps:
    assert mask <= known
    expect = day <= last_day and not (region == "kr" and day == MISSING_DAY)
    assert known == expect, (region, debut, day)
    seen_missing += region == "kr" and day == MISSING_DAY
  assert seen_missing >= 3  # several kr series cross the missing chart day
  # Read back by the input pipeline: the same flags, per region of the vocabulary.
  src = pipeline.make_dataset(str(out), "train", cfg=_input_cfg(), augment=None, seed=0,
                              train=False)
  batch = next(iter(src))
  assert batch["series_known"].shape == batch["series_mask"].shape
  assert np.all(batch["series_mask"] <= batch["series_known"])
  assert set(np.unique(batch["weekday"])) <= set(range(-1, 7))
  real = batch["region_mask"] > 0
  assert np.all(batch["weekday"][real] >= 0) and np.all(batch["weekday"][~real] == -1)


def test_series_floor_written_and_read(daily_raw, tmp_path):
  """Each step's floor = log1p(the streams of its chart's last position), read from the chart
  rows (fakes.daily_charts); NaN where the step's chart is missing (kr on MISSING_DAY) or past
  the data end; the reader returns it [r, H], a batch carries it with 0 where unknown."""
  from mpjax import records as records_lib
  from mpjax.input import pipeline
  out = tmp_path / "ds"
  man = run(daily_raw, out, chart_only=True, period="daily", horizon=14)
  assert "series_floor" in man["record_schema"] and "series_floor" in man["definitions"]
  last = daily_charts().sort_values("pos").groupby(["region", "date"])["streams"].last()
  checked = missing = 0
  for sp in build.SPLITS:
    for rec in records(str(out), sp):
      for j, (region, debut, day, mask, known) in enumerate(_steps(rec)):
        if known:
          assert rec["series_floor"][j] == pytest.approx(np.log1p(last[(region, day)]), rel=1e-6)
          checked += 1
        else:
          assert np.isnan(rec["series_floor"][j]), (region, debut, day)
          missing += region == "kr" and day == MISSING_DAY
  assert checked > 100 and missing >= 3
  raw = records(str(out), "train")
  for rec, got in zip(raw, records_lib.read(str(out), "train")):
    assert got["series_floor"].dtype == np.float32
    np.testing.assert_array_equal(got["series_floor"], rec["series_floor"].reshape(-1, 14))
  batch = next(iter(pipeline.make_dataset(str(out), "train", cfg=_input_cfg(), augment=None,
                                          seed=0, train=False)))
  floor, known = batch["series_floor"], batch["series_known"] > 0
  assert floor.shape == batch["series_known"].shape and floor.dtype == np.float32
  assert (floor[known] >= np.log1p(10000)).all() and (floor[~known] == 0).all()


def _input_cfg():
  from configs import mp3 as mp3_config
  c = mp3_config.get_config("kworb").input
  c.batch_size = c.eval_batch_size = 8
  return c


def test_records_without_series_known_fall_back_to_the_last_observation():
  from mpjax import records
  mask = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(records.known_before_last_observed(mask),
                                [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])


def test_cutoff_leaves_no_later_value_in_training(daily_raw, tmp_path):
  cutoff = "2025-04-01"
  out = tmp_path / "ds"
  man = run(daily_raw, out, chart_only=True, period="daily", horizon=14, split_by="cutoff",
            cutoff=cutoff, val_days=10)
  assert man["split"]["cutoff"] == cutoff
  assert man["split"]["val_debuts"] == ["2025-03-08", "2025-03-18"]  # 10 days before cutoff - 14
  assert all(man["counts"][s]["records"] for s in build.SPLITS)
  cut_short = 0
  for split in ("train", "val"):
    for rec in records(str(out), split):
      for region, debut, day, mask, known in _steps(rec):
        assert debut < cutoff
        if day >= cutoff:
          assert mask == 0 and known == 0, (split, region, debut, day)
          cut_short += split == "train"
        if split == "val":
          assert "2025-03-08" <= debut < "2025-03-18" or debut >= "2025-03-18"
  assert cut_short > 0  # series crossing the cutoff exist, and were cut there
  for rec in records(str(out), "test"):
    assert all(d.decode() >= cutoff for d in rec["debut"])
  # The same data without a cutoff: those late steps are known (the cut is the build's doing).
  full = tmp_path / "full"
  run(daily_raw, full, chart_only=True, period="daily", horizon=14)
  late = [s for sp in build.SPLITS for rec in records(str(full), sp) for s in _steps(rec)
          if s[1] < cutoff <= s[2]]
  assert late and any(known for *_, known in late)


def test_cutoff_cli_is_named_when_misused(daily_raw, tmp_path, capsys):
  with pytest.raises(SystemExit):
    build.main(["--raw", daily_raw, "--out", str(tmp_path / "x"), "--chart-only", "--cutoff",
                "2025-13-01"])
  assert "2025-13-01" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    build.main(["--raw", daily_raw, "--out", str(tmp_path / "x"), "--chart-only", "--cutoff",
                "2025-04-01", "--split-by", "debut"])
  assert "--cutoff sets the split" in capsys.readouterr().err
  with pytest.raises(ValueError, match="cutoff"):
    run(daily_raw, tmp_path / "y", chart_only=True, split_by="cutoff")


def test_cutoff_val_window_ends_a_val_horizon_before_the_cutoff():
  cfg = lambda **kw: build.BuildConfig(raw="r", out="o", period="daily", horizon=91,  # noqa: E731
                                       split_by="cutoff", cutoff="2025-11-01", **kw)
  assert build.cutoff_val_window(cfg()) == ("2025-07-05", "2025-08-02")
  assert build.cutoff_val_window(cfg(val_horizon=35)) == ("2025-08-30", "2025-09-27")
  weekly = build.BuildConfig(raw="r", out="o", horizon=4, split_by="cutoff", cutoff="2025-11-01",
                             val_days=7)
  assert build.cutoff_val_window(weekly) == ("2025-09-27", "2025-10-04")
