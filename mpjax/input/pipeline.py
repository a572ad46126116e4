"""Grain input pipeline: TFRecord shards -> numpy batches for training and eval.

    ds = make_dataset(data_dir, "train", cfg=config.input, augment=config.augment, seed=0,
                      train=True)
    it = iter(ds)                       # a grain DatasetIterator: get_state() / set_state()
    batch = next(it)                    # dict of numpy arrays, leading axis = local batch
    gbatch = sharding.to_global(batch, mesh)  # mpjax.sharding: jax.Arrays split over the mesh

Stages (train)::

    TFRecordSource over the split's shards (manifest.json), CRC-checked, + record parsing
    (mpjax.records: the manifest, the record schema, the one parser)
    -> global shuffle (seed; a different permutation every epoch, Grain's index shuffle)
    -> per example, seeded by (seed, index in the shuffled stream): random crop/pad to
       input_tdim -> normalise -> [mixup partner] -> augment -> choose regions -> targets
    -> repeat (num_epochs; None = forever): one global stream of examples
       (with num_epochs set, its last (total mod P) elements are dropped, P = process count)
    -> this process's share [process_index::process_count]
    -> batch (local batch = batch_size / P, drop_remainder) -> worker processes (workers)
    -> plain numpy arrays (copied out of Grain's shared memory when workers > 0)

Eval: no shuffle, no augmentation; centre crop (or `eval_crops` evenly spaced crops); every
region of the vocabulary in vocabulary order (column k is region k; `region_mask` marks the
regions the record charted in); each process's share is padded with `valid = 0` elements so
every process yields the same number of FULL batches (jit sees one shape; multi-host eval does
not deadlock) and every record is seen exactly once.

All per-example randomness happens BEFORE the per-process split and is keyed by (seed, position
in the global shuffled stream): there is one global stream of examples (order, crops,
augmentations), a function of the seed only, and each process reads its share of it. With
workers = 0 the global batch of step s is stream elements [s * batch_size, (s + 1) * batch_size)
for any process count (in another order across devices). The iterator state (Grain's
get_state/set_state, saved by `mpjax.checkpoint`) is a position in that stream, so a resumed run
continues with the same batches, also on another process count (`iterator_state_at`).
Worker processes (`workers`) slice each process's share again, so the training batch order
then depends on `workers` and the process count, still deterministically (a resume on another
process count is then statistically, not exactly, the same); eval is batched before the worker
split, so its batches and their order do not depend on `workers`.

Batches (dict of numpy arrays; B = local batch, R = regions_per_example in training and the
vocabulary size V in eval, H = manifest horizon, F = number of extrinsic features, L = labels)::

    fbank         float32 [B, input_tdim, mel]   normalised (x - mean) / (2 std); eval with
                                                 eval_crops > 1: [B, eval_crops, input_tdim, mel]
    region_ids    int32   [B, R]     manifest vocabulary ids (padding slots: pad_region_id)
    region_mask   float32 [B, R]     1 = a region the record charted in
    mp2           float32 [B, R]     log1p(streams over the first N weeks); 0 where no target
    mp2_weight    float32 [B, R]     1 = real region with a finite target (and, when
                                     require_full_mp2, all N weeks observed on the chart)
    longevity     float32 [B, R]     the longevity target (decay slope); 0 where none
    longevity_weight float32 [B, R]  1 = real region with a finite longevity target
    series        float32 [B, R, H]  log1p(streams) per step; 0 where not observed
    series_mask   float32 [B, R, H]  1 = observed on the chart (censoring: see DESIGN.md 3)
    series_known  float32 [B, R, H]  1 = the region's chart that step is in the data, so an
                                     unobserved known step is off the chart (censored) and an
                                     unknown one is missing (records without it: every step up
                                     to the last observed one,
                                     `mpjax.records.known_before_last_observed`)
    series_floor  float32 [B, R, H]  log1p of the chart's floor that step (an off-chart known
                                     step is below it); 0 where unknown (no chart, padding,
                                     records built before it was written): never NaN in a
                                     batch, and no chart has a floor of 0 streams
    weekday       int32   [B, R]     weekday of the debut date (0 = Monday), -1 unknown
    extrinsic     float32 [B, R, F]  features known at debut (manifest feature_names)
    labels        int32   [B, L]     manifest labels, -1 unknown / 0 / 1
    record        int32   [B]        index of the record in the split (-1 for eval padding)
    valid         float32 [B]        0 for eval padding and corrupt records skipped in eval
    mixup_lambda  float32 [B]        weight of the example itself in a mixup (1 = not mixed)

Padding frames: a crop shorter than input_tdim is zero-padded in log-mel BEFORE normalisation,
exactly as `mpjax.audio.fbank.pad_or_cut` + `normalize` (official AST), so training and
prediction see the same padding. Normalisation uses the manifest's train-split fbank mean/std
unless `fbank_mean`/`fbank_std` are set (e.g. AudioSet's, to match pretrained AST weights).

Corrupt records: `TFRecordSource` CRC-checks every read; a bad record raises
`tfrecord.CorruptRecordError` naming the shard and byte offset, or with `skip_corrupt` is logged
(file + offset), counted (`corrupt_counts()`, per process: worker processes keep their own count)
and skipped (train) or returned as a `valid = 0` element (eval, keeping the batch count).
"""
from __future__ import annotations

import logging
import math
from typing import Mapping

import grain
import numpy as np

from mpjax import records as records_lib
from mpjax.input import augment as augment_lib
from mpjax.input import tfrecord

log = logging.getLogger(__name__)

_DEFAULTS = {
    "batch_size": 16,          # GLOBAL batch (all processes); local = batch_size / process_count
    "eval_batch_size": None,   # None = batch_size
    "input_tdim": 1024,        # frames per example (AST: 1024 = 10.24 s)
    "regions_per_example": 1,  # training: regions drawn per example (padded when fewer)
    "eval_crops": 1,           # eval: 1 = centre crop; C > 1 = C evenly spaced crops
    "workers": 0,              # Grain worker processes (0 = in the main process)
    "prefetch": 2,             # batches buffered per worker process
    "read_threads": 0,         # threads per process reading/processing elements (0 = inline)
    "read_buffer": 0,          # elements read ahead per process when read_threads > 0 (0 = 2 * local batch)
    "shuffle": True,           # training: global shuffle (eval never shuffles)
    "num_epochs": None,        # training: None = repeat forever (eval: one pass)
    "skip_corrupt": False,     # log + count + skip records failing their CRC instead of raising
    "check_crc": True,
    "require_full_mp2": False, # mp2_weight 1 only when all N weeks were observed on the chart
    "sample_valid_regions": False,  # training: draw regions among those with an MP2 target
    "pad_region_id": 0,        # id in padding slots: a valid id, so the model never sees an
                               # out-of-range id, the weights/mask make the slot inert (or V,
                               # the vocabulary size, for a model with a 'no region' row)
    "fbank_mean": None,        # None = manifest (train split)
    "fbank_std": None,
    "augment": None,           # augment config (see mpjax.input.augment); the `augment=`
                               # argument of make_dataset wins when given
}

_CORRUPT: dict[str, int] = {}


def default_config():
  """The input config with its defaults (ml_collections.ConfigDict), augmentations off."""
  import ml_collections
  d = dict(_DEFAULTS)
  d["augment"] = augment_lib.default_config().to_dict()
  return ml_collections.ConfigDict(d)


def corrupt_counts() -> dict[str, int]:
  """{shard path: records skipped as corrupt} in THIS process (skip_corrupt=True)."""
  return dict(_CORRUPT)


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def _as_dict(cfg) -> dict:
  if cfg is None:
    return {}
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise TypeError(f"input config must be a dict or ConfigDict, got {type(cfg).__name__}")
  return dict(cfg)


def check_config(cfg, prefix: str = "input") -> dict:
  """Plain dict with defaults filled in; unknown or bad fields raise, named."""
  user = _as_dict(cfg)
  unknown = sorted(set(user) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"{prefix}.{unknown[0]}: unknown field; known: {sorted(_DEFAULTS)}")
  c = {**_DEFAULTS, **user}
  if c["eval_batch_size"] is None:
    c["eval_batch_size"] = c["batch_size"]

  def integer(name, minimum, allow_none=False):
    v = c[name]
    if v is None and allow_none:
      return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
      raise ValueError(f"{prefix}.{name}={v!r}: must be an integer >= {minimum}")
    c[name] = int(v)

  for name, lo in (("batch_size", 1), ("eval_batch_size", 1), ("input_tdim", 1),
                   ("regions_per_example", 1), ("eval_crops", 1), ("workers", 0),
                   ("prefetch", 1), ("read_threads", 0), ("read_buffer", 0),
                   ("pad_region_id", 0)):
    integer(name, lo)
  integer("num_epochs", 1, allow_none=True)
  for name in ("shuffle", "skip_corrupt", "check_crc", "require_full_mp2",
               "sample_valid_regions"):
    if not isinstance(c[name], (bool, np.bool_)):
      raise ValueError(f"{prefix}.{name}={c[name]!r}: must be True or False")
  for name in ("fbank_mean", "fbank_std"):
    v = c[name]
    if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
      raise ValueError(f"{prefix}.{name}={v!r}: must be a finite number or None (= manifest)")
  if c["fbank_std"] is not None and not c["fbank_std"] > 0:
    raise ValueError(f"{prefix}.fbank_std={c['fbank_std']!r}: must be > 0")
  return c


class _Meta(records_lib.Schema):
  """The record schema plus what the per-example code needs from the config (small, picklable)."""

  def __init__(self, manifest: dict, c: dict, aug: dict | None, data_dir: str):
    super().__init__(manifest)
    fb = manifest["fbank"]
    mean = c["fbank_mean"] if c["fbank_mean"] is not None else fb.get("mean")
    std = c["fbank_std"] if c["fbank_std"] is not None else fb.get("std")
    if mean is None or std is None or not std > 0:
      raise ValueError(
          f"{data_dir}/manifest.json has no usable fbank mean/std (mean={mean}, std={std}): "
          "a chart-only dataset has no audio to feed the model; set input.fbank_mean and "
          "input.fbank_std to normalise anyway")
    self.mean, self.std = float(mean), float(std)
    self.log_scale = 1.0 / (2.0 * self.std)  # log-mel units -> normalised units
    self.tdim = c["input_tdim"]
    self.crops = c["eval_crops"]
    self.rpe = c["regions_per_example"]
    self.pad_region_id = c["pad_region_id"]
    self.require_full = bool(c["require_full_mp2"])
    self.sample_valid = bool(c["sample_valid_regions"])
    self.aug = aug


# ------------------------------------------------------------------------------------------------
# Records: TFRecordSource + the record parser (mpjax.records)
# ------------------------------------------------------------------------------------------------


class ExampleSource:
  """Random-access source of parsed examples (a Grain data source: `__len__`, `__getitem__`).

  Returns per record what `mpjax.records.parse` returns ({'record', 'fbank16' float16
  [frames, mel] (a view of the record bytes), 'regions' int32 [r] vocabulary ids, 'mp2' [r],
  'series' [r, H], 'series_mask' bool [r, H], ...}); with skip_corrupt a corrupt record gives
  {'record', 'corrupt': True} (logged and counted) instead of raising.
  """

  def __init__(self, paths, meta: _Meta, *, check_crc=True, skip_corrupt=False):
    self.records = tfrecord.TFRecordSource(paths, check_crc=check_crc, skip_corrupt=False)
    self.meta = meta
    self.skip_corrupt = skip_corrupt

  def __len__(self):
    return len(self.records)

  def __repr__(self):
    return f"ExampleSource({self.records!r})"

  def __getitem__(self, i):
    i = int(i)
    try:
      data = self.records[i]
    except tfrecord.CorruptRecordError as e:
      if not self.skip_corrupt:
        raise
      _CORRUPT[e.path] = _CORRUPT.get(e.path, 0) + 1
      log.warning("skipping corrupt record %d (input.skip_corrupt=True): %s", i, e)
      return {"record": i, "corrupt": True}
    return records_lib.parse_at(self.records, i, self.meta, data)


# ------------------------------------------------------------------------------------------------
# Per-example processing
# ------------------------------------------------------------------------------------------------


def crop(fb16: np.ndarray, start: int, tdim: int, mean: float, std: float
         ) -> tuple[np.ndarray, int]:
  """[tdim, mel] float32 normalised, and the number of real (non-padding) frames. Also what
  `mpjax.predict` feeds the model, so a song is cropped as in training.

  Bit-for-bit `fbank.normalize(fbank.pad_or_cut(crop, tdim), mean, std)` (zero padding in
  log-mel, then (x - mean) / (2 std)), fused into one buffer: float16 -> float32 conversion
  straight into the output, then in place (this runs for every example, twice with mixup).
  """
  seg = fb16[start:start + tdim]
  n = seg.shape[0]
  x = np.empty((tdim, fb16.shape[1]), np.float32)
  x[:n] = seg
  x[n:] = 0.0
  x -= mean
  x /= 2.0 * std
  return x, n


def crop_starts(frames: int, tdim: int, crops: int) -> list[int]:
  """Eval crops: the centre one, or `crops` evenly spaced from the start to the end."""
  slack = max(frames - tdim, 0)
  if crops == 1:
    return [slack // 2]
  return [int(round(s)) for s in np.linspace(0, slack, crops)]


def _targets(ex: dict, rows: np.ndarray, slot_ids: np.ndarray, meta: _Meta) -> dict:
  """Target arrays for the given slots: rows index ex's regions (-1 = padding slot)."""
  rows = np.asarray(rows, np.int64)
  real = rows >= 0
  n_have = len(ex["regions"])
  r = np.where(real, rows, 0) if n_have else np.zeros_like(rows)
  h, f = meta.horizon, len(meta.feature_names)
  if n_have:
    mp2 = np.where(real, ex["mp2"][r], np.nan)
    lon = (np.where(real, ex["longevity"][r], np.nan) if "longevity" in ex
           else np.full(len(rows), np.nan))
    steps = np.where(real, ex["mp2_observed_steps"][r], 0)
    series = ex["series"][r]
    smask = ex["series_mask"][r].astype(bool)
    known = ex["series_known"][r]
    floor = ex["series_floor"][r] if "series_floor" in ex else np.full((len(rows), h), np.nan)
    weekday = ex["weekday"][r]
    extr = ex["extrinsic"][r]
  else:
    mp2, steps = np.full(len(rows), np.nan), np.zeros(len(rows), np.int64)
    lon = np.full(len(rows), np.nan)
    series, smask = np.zeros((len(rows), h), np.float32), np.zeros((len(rows), h), bool)
    known, weekday = np.zeros((len(rows), h), bool), np.full(len(rows), -1, np.int32)
    floor = np.full((len(rows), h), np.nan)
    extr = np.zeros((len(rows), f), np.float32)
  ok = real & np.isfinite(mp2)
  if meta.require_full:
    ok &= steps >= meta.mp2_weeks
  smask = smask & real[:, None] & np.isfinite(series)
  return {
      "region_ids": np.where(real, slot_ids, meta.pad_region_id).astype(np.int32),
      "region_mask": real.astype(np.float32),
      "mp2": np.where(ok, mp2, 0.0).astype(np.float32),
      "mp2_weight": ok.astype(np.float32),
      "longevity": np.where(real & np.isfinite(lon), lon, 0.0).astype(np.float32),
      "longevity_weight": (real & np.isfinite(lon)).astype(np.float32),
      "series": np.where(smask, series, 0.0).astype(np.float32),
      "series_mask": smask.astype(np.float32),
      "series_known": (known & real[:, None]).astype(np.float32),
      "series_floor": np.where(known & real[:, None] & np.isfinite(floor), floor,
                               0.0).astype(np.float32),
      "weekday": np.where(real, weekday, -1).astype(np.int32),
      "extrinsic": np.where(real[:, None], extr, 0.0).astype(np.float32),
  }


def _finish(fbank, targets: dict, labels, record: int, valid: float, lam: float) -> dict:
  return {"fbank": fbank, **targets, "labels": np.asarray(labels, np.int32),
          "record": np.int32(record), "valid": np.float32(valid),
          "mixup_lambda": np.float32(lam)}


def _eval_slots(ex: dict, meta: _Meta):
  row_of = {int(v): j for j, v in enumerate(ex["regions"])}
  ids = np.arange(meta.num_regions, dtype=np.int32)
  rows = np.array([row_of.get(int(v), -1) for v in ids], np.int64)
  return rows, ids


def _pad_element(meta: _Meta, record: int = -1) -> dict:
  """An eval element that counts for nothing (valid 0, every weight 0)."""
  shape = (meta.tdim, meta.mel_bins) if meta.crops == 1 else (meta.crops, meta.tdim, meta.mel_bins)
  empty = {"regions": np.zeros(0, np.int32)}
  ids = np.arange(meta.num_regions, dtype=np.int32)
  t = _targets(empty, -np.ones(meta.num_regions, np.int64), ids, meta)
  t["region_ids"] = ids
  return _finish(np.zeros(shape, np.float32), t, -np.ones(len(meta.labels), np.int32), record,
                 0.0, 1.0)


class EvalExample:
  """Decoded record -> eval element (centre crop or multi-crop, all regions, no randomness)."""

  def __init__(self, meta: _Meta):
    self.meta = meta

  def __call__(self, ex: dict) -> dict:
    m = self.meta
    if ex.get("corrupt"):
      return _pad_element(m, ex["record"])
    fb16 = ex["fbank16"]
    crops = [crop(fb16, s, m.tdim, m.mean, m.std)[0]
             for s in crop_starts(fb16.shape[0], m.tdim, m.crops)]
    fbank = crops[0] if m.crops == 1 else np.stack(crops)
    rows, ids = _eval_slots(ex, m)
    t = _targets(ex, rows, ids, m)
    t["region_ids"] = ids  # every column is a real vocabulary id in eval
    return _finish(fbank, t, ex["labels"], ex["record"], 1.0, 1.0)


class PadElement:
  def __init__(self, meta: _Meta):
    self.meta = meta

  def __call__(self, _):
    return _pad_element(self.meta)


class TrainExamples(grain.MapDataset):
  """Decoded records -> augmented training elements, seeded by (seed, index).

  A MapDataset node rather than `random_map` because mixup needs random access to a second
  element (the partner is drawn uniformly from the same epoch of the parent). `index` is the
  position in the global shuffled stream (epoch-aware), so draws differ every epoch and do not
  depend on the process count.
  """

  def __init__(self, parent: grain.MapDataset, meta: _Meta, seed: int):
    super().__init__(parent)
    self._meta = meta
    self._seed = int(seed)

  def __len__(self):
    return len(self._parent)

  def __str__(self):
    return "TrainExamples(random crop, mixup, augment, regions)"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    a = self._parent[index]
    if a is None or a.get("corrupt"):
      return None
    m = self._meta
    rng = np.random.default_rng([self._seed, int(index)])
    k_crop, k_mix, k_aug, k_reg = (np.random.default_rng(int(k))
                                   for k in rng.integers(0, 2**63, size=4))
    ex = self._cropped(a, k_crop)
    partner = None
    if m.aug is not None and augment_lib.wants_mixup(m.aug, k_mix):
      n = len(self._parent)
      j = (index // n) * n + int(k_mix.integers(n))
      b = self._parent[j]
      if b is not None and not b.get("corrupt"):
        partner = self._cropped(b, k_mix)
    if m.aug is not None:
      ex = augment_lib.apply(ex, m.aug, k_aug, partner=partner, log_scale=m.log_scale)
    return self._select(ex, k_reg)

  def _cropped(self, ex: dict, rng) -> dict:
    total = ex["fbank16"].shape[0]
    start = int(rng.integers(0, total - self._meta.tdim + 1)) if total > self._meta.tdim else 0
    m = self._meta
    x, frames = crop(ex["fbank16"], start, m.tdim, m.mean, m.std)
    out = {k: v for k, v in ex.items() if k != "fbank16"}
    out["fbank"], out["frames"] = x, frames
    return out

  def _select(self, ex: dict, rng) -> dict:
    """regions_per_example regions drawn without replacement among the example's regions
    (among those with an MP2 target when sample_valid_regions and any has one); padded."""
    m = self._meta
    have = len(ex["regions"])
    cand = np.arange(have)
    if m.sample_valid and have:
      valid = np.isfinite(ex["mp2"])
      if m.require_full:
        valid &= ex["mp2_observed_steps"] >= m.mp2_weeks
      if valid.any():
        cand = cand[valid]
    k = min(m.rpe, len(cand))
    rows = -np.ones(m.rpe, np.int64)
    if k:
      rows[:k] = rng.choice(cand, size=k, replace=False)
    ids = np.where(rows >= 0, ex["regions"][np.maximum(rows, 0)] if have else 0, 0)
    t = _targets(ex, rows, ids, m)
    return _finish(ex["fbank"], t, ex["labels"], ex["record"], 1.0,
                   float(ex.get("mixup_lambda", 1.0)))


# ------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------


def _processes(process_index, process_count):
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  return int(process_index), int(process_count)


def make_dataset(data_dir: str, split: str, *, cfg=None, seed: int = 0, train: bool,
                 augment=None, process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """The Grain pipeline for `split` of the dataset in `data_dir` (see the module docstring).

  cfg: input config (dict or ConfigDict; fields and defaults in `default_config()`).
  augment: augmentation config (mpjax.input.augment; training only); None = cfg.augment, and
    when that is None too, no augmentation. seed: shuffle + augmentation seed, in [0, 2**32).
  process_index/process_count: this host's share; default jax.process_index()/process_count().
  Returns a grain.IterDataset; `iter()` it for a DatasetIterator (checkpointable).
  """
  c = check_config(cfg)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed={seed!r}: must be an integer in [0, 2**32)")
  manifest = records_lib.load_manifest(data_dir)
  paths = records_lib.split_paths(data_dir, manifest, split)
  p, num_p = _processes(process_index, process_count)
  batch = c["batch_size"] if train else c["eval_batch_size"]
  field = "batch_size" if train else "eval_batch_size"
  if batch % num_p:
    raise ValueError(f"input.{field}={batch} is not divisible by process_count={num_p} "
                     "(it is the global batch; every process takes an equal share)")
  local = batch // num_p
  aug_cfg = augment if augment is not None else c["augment"]
  aug = augment_lib.check_config(aug_cfg) if (train and aug_cfg is not None) else None
  if aug is not None and not augment_lib.enabled(aug):
    aug = None
  meta = _Meta(manifest, c, aug, data_dir)
  if c["pad_region_id"] > meta.num_regions:
    raise ValueError(f"input.pad_region_id={c['pad_region_id']}: must be a vocabulary id "
                     f"(0..{meta.num_regions - 1}) or {meta.num_regions} for a model with an "
                     "extra 'no region' row")
  if train and c["regions_per_example"] > meta.num_regions and not manifest.get("audio_only"):
    raise ValueError(f"input.regions_per_example={c['regions_per_example']} exceeds the "
                     f"{meta.num_regions} regions of the vocabulary {meta.regions}")

  if not paths:
    if train:
      raise ValueError(f"split={split!r} of {data_dir} has no records; nothing to train on")
    log.warning("split %r of %s has no records; the eval dataset is empty", split, data_dir)
    return grain.MapDataset.source([]).to_iter_dataset()
  source = ExampleSource(paths, meta, check_crc=c["check_crc"], skip_corrupt=c["skip_corrupt"])
  n = len(source)
  counted = manifest.get("counts", {}).get(split, {}).get("records")
  if counted is not None and counted != n:
    raise ValueError(f"{data_dir}/manifest.json counts {counted} {split} records, but the "
                     f"indexes of its {len(paths)} shards hold {n}")
  ds = grain.MapDataset.source(source)

  if train:
    if c["shuffle"]:
      ds = ds.shuffle(seed=int(seed))
    ds = TrainExamples(ds, meta, seed)
    # One global stream over all epochs (a new permutation each epoch), then this process's
    # share: the stream, and what s steps of any process count have consumed (its first
    # s * batch_size elements), do not depend on the process count.
    if c["num_epochs"] != 1:
      ds = ds.repeat(c["num_epochs"])
    if c["num_epochs"] is not None:
      total = len(ds) - len(ds) % num_p  # equal shares (the last few elements of the run)
      if total == 0:
        raise ValueError(f"split={split!r} has {n} records, fewer than process_count={num_p}")
      ds = ds[:total]
    ds = ds[p::num_p]
  else:
    ds = ds.map(EvalExample(meta))
    ds = ds[p::num_p]
    # Same number of full batches on every process; batched here, as a MapDataset, so worker
    # processes get whole batches (in order) rather than each batching its own slice of elements.
    per_process = -(-n // num_p)
    total = -(-per_process // local) * local
    if total > len(ds):
      pad = grain.MapDataset.range(total - len(ds)).map(PadElement(meta))
      ds = grain.MapDataset.concatenate([ds, pad])
    ds = ds.batch(local)

  threads = c["read_threads"]
  buffer = c["read_buffer"] or (2 * local if train else 2)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=buffer if threads else 0))
  if train:
    # After to_iter_dataset: a skipped corrupt record (None) is dropped before batching, so
    # training batches stay full.
    it = it.batch(local, drop_remainder=True)
  if c["workers"]:
    _ensure_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c["workers"],
                                                     per_worker_buffer_size=c["prefetch"]))
    # Workers hand batches over in shared memory (grain SharedMemoryArray); copy them into
    # plain arrays at once so no shared-memory segment outlives the step that used it.
    it = it.map(_plain_numpy)
  return it


def iterator_state_at(it, batches: int, local_batch: int) -> dict:
  """The state a fresh training iterator `it` of `make_dataset` has after `batches` batches.

  For resuming on another process count: after s steps every process has read s * local
  elements of its share [p::P], i.e. together the first s * batch_size elements of the global
  stream, whatever P is. So the position follows from the step (exactly with workers = 0,
  unless corrupt records were skipped in training; with workers, each worker's position in
  its slice).
  """
  state = it.get_state()
  if set(state) == {"next_index"}:  # workers = 0: a position in this process's share
    return {"next_index": int(batches) * int(local_batch)}
  if "iterators_in_use_states" in state and "next_index_in_cycle" in state:
    # workers = W: worker w slices the share [w::W] and makes batches w, w + W, ... in turn.
    inner = state["iterators_in_use_states"]
    w_count = len(inner)
    if all(set(x) == {"next_index"} for x in inner):
      state = dict(state)
      state["iterators_in_use_states"] = [
          {"next_index": ((int(batches) - w + w_count - 1) // w_count) * int(local_batch)}
          for w in range(w_count)]
      state["next_index_in_cycle"] = int(batches) % w_count
      return state
  raise ValueError(f"cannot place this Grain iterator at batch {batches}: unknown state "
                   f"layout {sorted(state)} (resume with the process count that wrote the "
                   "checkpoint)")


def _plain_numpy(batch):
  return {k: np.array(v, copy=True, subok=False) for k, v in batch.items()}


def _ensure_flags_parsed():
  """Grain's worker processes read absl flags (profiling, debug options). Inside an absl app
  (mpjax.main) they are parsed; from tests, notebooks or benchmarks they are not, and Grain
  would raise UnparsedFlagAccessError: mark them parsed with their defaults then."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
