"""The record format's one home (DESIGN.md 3): the manifest, the record schema and its parser,
the one public record reader, and the train-split target statistics.

`data_prep.build` writes through it (the target statistics it puts in the manifest),
`mpjax.input.pipeline` parses every record with it, the analyses read with it::

    manifest = records.load_manifest(data_dir)          # checked: names the file and the field
    for rec in records.read(data_dir, "train", manifest=manifest):
      rec["song_id"], rec["regions"], rec["series"], rec["fbank16"] ...

`read` yields, per record of the split in the pipeline's `record` order (shard order, then
order within a shard), the dict `parse` returns (r = regions the record charted in, H =
manifest horizon, F = extrinsic features, L = manifest labels)::

    record               int      index of the record in its split
    clip_id, song_id, track_id  str   ("" when the record has none)
    fbank16              float16 [frames, mel]  the stored log-mel (a view of the record bytes)
    regions              int32 [r]       manifest vocabulary ids
    mp2                  float32 [r]     MP2 target (NaN = none)
    mp2_observed_steps   int64 [r]       weeks of the first N observed on the chart
    longevity            float32 [r]     longevity target (NaN = none, and for records built
                                         before it was written)
    series               float32 [r, H]  log1p streams per step (meaningful where series_mask)
    series_mask          bool [r, H]     observed on the chart
    series_known         bool [r, H]     that step's chart is in the data (records built
                                         before it was written: `known_before_last_observed`)
    series_floor         float32 [r, H]  log1p of the chart's floor that step (its lowest
                                         streams): an off-chart known step is below it; NaN
                                         where unknown, and everywhere in records built before
                                         it was written (the censored loss then falls back to
                                         its proxy floor)
    weekday              int32 [r]       weekday of the debut (0 = Monday), -1 unknown
    debut                list[str] [r]   debut date per region, YYYY-MM-DD ("" unknown)
    extrinsic            float32 [r, F]  features known at debut (manifest feature_names)
    labels               int32 [L]       -1 unknown / 0 / 1

Every record is CRC-checked; a record that does not match the manifest raises ValueError
(a spectrogram holding NaN/Inf `NonFiniteInput`) naming the shard and byte offset.

The TFRecord framing and the tf.train.Example codec underneath are `mpjax.input.tfrecord`
(the wire format, no dependency beyond numpy and crc32c: the bottom layer, like this module).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
from typing import Iterator

import numpy as np

from mpjax.input import tfrecord

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------


def load_manifest(data_dir: str) -> dict:
  path = os.path.join(os.fspath(data_dir), "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path}: no manifest.json in data_dir={data_dir!r}; build a dataset with "
        "`python -m data_prep.build` (or `python -m data_prep.synthetic --out RAW --build DATA`)")
  with open(path) as f:
    try:
      manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  check_manifest(manifest, path)
  return manifest


def check_manifest(m: dict, path: str = "manifest.json") -> None:
  """The fields the reader relies on, with a message naming the file and the field."""
  def bad(field, why):
    raise ValueError(f"{path}: {field}: {why}")

  if not isinstance(m, dict):
    bad("(top level)", "expected a JSON object")
  for key in ("regions", "feature_names", "horizon", "mp2_weeks", "fbank", "shards"):
    if key not in m:
      bad(key, "missing (was this written by data_prep.build?)")
  regions = m["regions"]
  if not (isinstance(regions, list) and (regions or m.get("audio_only"))
          and all(isinstance(r, str) for r in regions)):
    bad("regions", f"expected a non-empty list of region codes, got {regions!r}")
  if regions != sorted(set(regions)):
    # Region ids are positions in this list: a reordered list silently remaps every region.
    bad("regions", f"{regions} is not sorted and unique as data_prep.build writes it")
  for key in ("horizon", "mp2_weeks"):
    if not (isinstance(m[key], int) and m[key] > 0):
      bad(key, f"expected a positive integer, got {m[key]!r}")
  fb = m["fbank"]
  if not isinstance(fb, dict) or not isinstance(fb.get("mel_bins"), int):
    bad("fbank.mel_bins", f"expected an integer in {fb!r}")
  for key in ("mean", "std"):
    v = fb.get(key)
    if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
      bad(f"fbank.{key}", f"{v!r} is not a finite number (None for chart-only datasets)")
  shards = m["shards"]
  if not isinstance(shards, dict):
    bad("shards", f"expected {{split: [shard file, ...]}}, got {type(shards).__name__}")
  for split, files in shards.items():
    if not (isinstance(files, list) and all(isinstance(x, str) for x in files)):
      bad(f"shards.{split}", f"expected a list of file names, got {files!r}")
    strangers = [x for x in files if not os.path.basename(x).startswith(f"{split}-")]
    if strangers:
      bad(f"shards.{split}", f"{strangers} are not {split} shards (names start with '{split}-')")


def split_paths(data_dir: str, manifest: dict, split: str) -> list[str]:
  """The shard paths of `split` (possibly none); an unknown split or a missing shard raises."""
  shards = manifest.get("shards", {})
  if split not in shards:
    raise ValueError(f"split={split!r}: unknown; {data_dir}/manifest.json has splits "
                     f"{sorted(shards)}")
  paths = [os.path.join(data_dir, s) for s in shards[split]]
  missing = [q for q in paths if not os.path.exists(q)]
  if missing:
    raise FileNotFoundError(f"{missing[0]}: shard listed in {data_dir}/manifest.json is missing")
  return paths


# ------------------------------------------------------------------------------------------------
# Schema and parser
# ------------------------------------------------------------------------------------------------


class NonFiniteInput(ValueError):
  """A record whose spectrogram holds NaN/Inf (the message names shard, offset and clip)."""


class Schema:
  """What parsing a record needs from the manifest (small, picklable)."""

  def __init__(self, manifest: dict):
    self.regions = list(manifest["regions"])
    self.region_index = {r: i for i, r in enumerate(self.regions)}
    self.feature_names = list(manifest["feature_names"])
    self.labels = list(manifest.get("labels", []))
    self.horizon = int(manifest["horizon"])
    self.mp2_weeks = int(manifest["mp2_weeks"])
    self.mel_bins = int(manifest["fbank"]["mel_bins"])

  @property
  def num_regions(self) -> int:
    return len(self.regions)


def known_before_last_observed(series_mask: np.ndarray) -> np.ndarray:
  """`series_known` of a record built before it was written: every step up to the last observed
  one (a gap there is off-chart), nothing after it (the data may have ended) -- the rule the
  censored loss applied to such records."""
  t = np.arange(series_mask.shape[-1])
  last = np.where(series_mask, t, -1).max(-1, initial=-1)
  return t <= last[..., None]


def _weekdays(debuts, r: int) -> np.ndarray:
  """Weekday of each region's debut date, 0 = Monday .. 6 = Sunday; -1 when not recorded."""
  if len(debuts) != r:
    return np.full(r, -1, np.int32)
  return np.asarray([datetime.date.fromisoformat(d.decode()).weekday() for d in debuts], np.int32)


def parse(data: bytes, schema: Schema, record: int = 0) -> dict:
  """One serialized record -> the fields of the module docstring. Raises ValueError/KeyError
  when it does not match the schema, NonFiniteInput when its spectrogram holds NaN/Inf."""
  m = schema
  ex = tfrecord.decode_example(data)
  shape = tuple(int(v) for v in ex["fbank_shape"])
  if len(shape) != 2 or shape[1] != m.mel_bins:
    raise ValueError(f"fbank_shape {shape}, expected [frames, {m.mel_bins}]")
  raw = ex["fbank"][0] if ex["fbank"] else b""
  fb = np.frombuffer(raw, np.float16)
  if fb.size != shape[0] * shape[1]:
    raise ValueError(f"fbank holds {fb.size} values, fbank_shape says {shape}")
  text = lambda k: ex[k][0].decode(errors="replace") if ex.get(k) else ""  # noqa: E731
  bad = fb.size - int(np.count_nonzero(np.isfinite(fb)))
  if bad:  # a NaN here would surface steps later as a diverged loss, naming no record
    clip = text("clip_id") if ex.get("clip_id") else "?"
    raise NonFiniteInput(f"clip_id {clip!r}: fbank holds {bad} non-finite (NaN/Inf) values "
                         f"of {fb.size}")
  codes = [c.decode() for c in ex["regions"]]
  unknown = [c for c in codes if c not in m.region_index]
  if unknown:
    raise ValueError(f"region(s) {unknown} not in the manifest vocabulary {m.regions}")
  r = len(codes)
  f = len(m.feature_names)
  smask = np.asarray(ex["series_mask"]).reshape(r, m.horizon).astype(bool)
  if len(ex.get("series_known", [])):
    known = np.asarray(ex["series_known"]).reshape(r, m.horizon).astype(bool) | smask
  else:
    known = known_before_last_observed(smask)
  floor = (np.asarray(ex["series_floor"], np.float32).reshape(r, m.horizon)
           if len(ex.get("series_floor", [])) else np.full((r, m.horizon), np.nan, np.float32))
  return {
      "record": record,
      "clip_id": text("clip_id"), "song_id": text("song_id"), "track_id": text("track_id"),
      "fbank16": fb.reshape(shape),
      "regions": np.asarray([m.region_index[c] for c in codes], np.int32),
      "mp2": np.asarray(ex["mp2_target"], np.float32).reshape(r),
      "mp2_observed_steps": np.asarray(ex["mp2_observed_steps"], np.int64).reshape(r),
      "longevity": (np.asarray(ex["longevity_target"], np.float32).reshape(r)
                    if len(ex.get("longevity_target", [])) else np.full(r, np.nan, np.float32)),
      "series": np.asarray(ex["series"], np.float32).reshape(r, m.horizon),
      "series_mask": smask,
      "series_known": known,
      "series_floor": floor,
      "weekday": _weekdays(ex.get("debut", []), r),
      "debut": [d.decode() for d in ex.get("debut", [])] if len(ex.get("debut", [])) == r
               else [""] * r,
      "extrinsic": (np.asarray(ex["extrinsic"], np.float32).reshape(r, f) if f
                    else np.zeros((r, 0), np.float32)),
      "labels": np.asarray([int(ex[f"label/{n}"][0]) if len(ex.get(f"label/{n}", [])) else -1
                            for n in m.labels], np.int32),
  }


def parse_at(source: tfrecord.TFRecordSource, i: int, schema: Schema,
             data: bytes | None = None) -> dict:
  """Record `i` of `source` parsed (`data`: its bytes, when already read); a record that does
  not match the schema raises naming the shard and byte offset."""
  if data is None:
    data = source[i]
  try:
    return parse(data, schema, i)
  except NonFiniteInput as e:
    s, off, _ = source.locate(i)
    raise NonFiniteInput(f"{source.paths[s]}: record {i} at byte offset {off}: {e}; "
                         "rebuild the dataset without this clip") from None
  except (ValueError, KeyError) as e:
    s, off, _ = source.locate(i)
    raise ValueError(f"{source.paths[s]}: record at byte offset {off} does not match the "
                     f"manifest's record schema: {type(e).__name__}: {e}") from None


def read(data_dir: str, split: str, *, manifest: dict | None = None,
         check_crc: bool = True) -> Iterator[dict]:
  """Every record of `split`, parsed (module docstring), in record order. The manifest and the
  shards are checked at the call; records are read lazily, one at a time."""
  manifest = manifest if manifest is not None else load_manifest(data_dir)
  paths = split_paths(data_dir, manifest, split)
  schema = Schema(manifest)
  source = tfrecord.TFRecordSource(paths, check_crc=check_crc) if paths else []
  return (parse_at(source, i, schema) for i in range(len(source)))


# ------------------------------------------------------------------------------------------------
# Target statistics (train split; data_prep.build writes them into the manifest)
# ------------------------------------------------------------------------------------------------


def target_stats(data_dir: str, manifest: dict | None = None) -> dict:
  """Train-split target means, the same on every process: {'mp2_mean', 'series_mean', ...}.

  From the manifest (data_prep.build writes them); for a dataset built before that, computed
  here from the train records (every process reads the same records, so gets the same values).
  """
  manifest = manifest if manifest is not None else load_manifest(data_dir)
  if manifest.get("target_stats") and "longevity_std" in manifest["target_stats"]:
    return manifest["target_stats"]
  log.warning("%s/manifest.json has no (or older) target_stats (built by an older data_prep); "
              "computing them from the train records", data_dir)
  acc = new_target_sums()
  if manifest["shards"].get("train"):
    for rec in read(data_dir, "train", manifest=manifest):
      add_targets(acc, rec["mp2"], rec["series"], rec["series_mask"], rec["longevity"])
  return summarise_targets(acc)


def new_target_sums() -> dict:
  return {"mp2_sum": 0.0, "mp2_sumsq": 0.0, "mp2_pairs": 0, "series_sum": 0.0, "series_steps": 0,
          "longevity_sum": 0.0, "longevity_sumsq": 0.0, "longevity_pairs": 0}


def add_targets(acc: dict, mp2, series, series_mask, longevity=None) -> None:
  """Adds one record's finite MP2 and longevity targets and observed series steps to the sums."""
  if longevity is not None:
    lon = np.asarray(longevity, np.float64)
    acc["longevity_sum"] += float(lon[np.isfinite(lon)].sum())
    acc["longevity_sumsq"] += float((lon[np.isfinite(lon)] ** 2).sum())
    acc["longevity_pairs"] += int(np.isfinite(lon).sum())
  mp2 = np.asarray(mp2, np.float64)
  series = np.asarray(series, np.float64)
  observed = (np.asarray(series_mask) > 0).reshape(series.shape) & np.isfinite(series)
  acc["mp2_sum"] += float(mp2[np.isfinite(mp2)].sum())
  acc["mp2_sumsq"] += float((mp2[np.isfinite(mp2)] ** 2).sum())
  acc["mp2_pairs"] += int(np.isfinite(mp2).sum())
  acc["series_sum"] += float(series[observed].sum())
  acc["series_steps"] += int(observed.sum())


def summarise_targets(acc: dict) -> dict:
  """Sums -> the manifest's target_stats (means are None where nothing was observed)."""
  mean = lambda total, n: float(total / n) if n else None  # noqa: E731

  def std(name):
    n = acc.get(f"{name}_pairs", 0)
    if n < 2:
      return None
    m = acc[f"{name}_sum"] / n
    return float(math.sqrt(max(acc[f"{name}_sumsq"] / n - m * m, 0.0)))

  return {"over": "train split: finite MP2 and longevity targets; observed series steps",
          "mp2_mean": mean(acc["mp2_sum"], acc["mp2_pairs"]), "mp2_std": std("mp2"),
          "mp2_pairs": int(acc["mp2_pairs"]),
          "longevity_mean": mean(acc.get("longevity_sum", 0.0), acc.get("longevity_pairs", 0)),
          "longevity_std": std("longevity"), "longevity_pairs": int(acc.get("longevity_pairs", 0)),
          "series_mean": mean(acc["series_sum"], acc["series_steps"]),
          "series_steps": int(acc["series_steps"])}
