"""The one path from a raw-data directory (tables + audio) to spectrogram TFRecord shards.

Real crawls (`data_prep.kworb` + `data_prep.spotify`), the kworb CSV (`data_prep.kworb_csv`,
chart-only) and the synthetic demo (`data_prep.synthetic`) all produce the same raw layout
(`data_prep.tables`), and all go through here::

    python -m data_prep.build --raw RAW --out DATASET            # clips with audio
    python -m data_prep.build --raw RAW --out DATASET --chart-only   # no audio: targets only
    python -m data_prep.build --raw RAW --out DATASET --audio-only   # audio only: every clip,
                                                                     # no targets (SSL pretraining)

Steps: chart rows -> `targets.build_targets` (debut, MP2, MP3 series + mask, extrinsic features
per (track, region)) -> for each usable clip: decode (`audio.check`), Kaldi fbank
(`mpjax.audio.fbank.fbank_np`), float16 -> one `tf.train.Example` with the targets of every
region the track charted in (DESIGN.md §3) -> shards `{split}-00003-of-00016.tfrecord` + `.idx`.
Splits are by song (`song_id`), never by clip: by a seeded hash, by debut date, or by time
(`--cutoff DATE`, `cutoff_targets`: train and val built from the chart rows before DATE only,
test = songs first charting from DATE on). Records carry `series_known` beside `series_mask`
(a missing chart day is not an off-chart day) and `series_floor` (the chart's floor that step,
NaN where unknown: an off-chart known step is below it).
`manifest.json` records the region vocabulary, feature names and definitions, fbank mean/std
over the TRAIN split only, counts and provenance; `build_report.md` is the human summary
(skipped clips and why, per-region counts, throughput).

Memory stays bounded: clips are streamed one at a time into the open shard; only the targets
table (small) is held. Shards are written under temporary names and renamed once the split's
shard count is known; a killed build leaves no shard that looks complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import sys
import time
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep import tables
from data_prep import targets as targets_lib
from mpjax import atomic, provenance, records
from mpjax.audio import fbank as fbank_lib
from mpjax.input import tfrecord

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclasses.dataclass
class BuildConfig:
  raw: str
  out: str
  period: str = "weekly"
  horizon: int = 26
  mp2_weeks: int = 6
  split_by: str = "song"  # 'song' (seeded hash of song_id) or 'debut' (by first debut date)
  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  debut_cutoffs: tuple[str, str] | None = None  # (val_from, test_from) for split_by='debut'
  # Time split for forecasting (split_by='cutoff'): train/val see only chart dates before it
  # (series cut there); test = songs debuting on or after it. See `cutoff_targets`.
  cutoff: str | None = None
  val_days: int = 28  # cutoff split: val = first debuts in the val_days before cutoff - horizon
  val_horizon: int = 0  # steps of a val series that lie before the cutoff (0 = horizon)
  seed: int = 0
  records_per_shard: int = 512
  chart_only: bool = False
  # Every usable clip of clips.csv becomes a record without targets (charts.csv is not read):
  # unlabelled audio for self-supervised pretraining (configs/ssl.py). Split by song hash.
  audio_only: bool = False
  max_seconds: float = 30.0  # longer audio is cut (previews are 30 s)
  window: tuple[str, str] | None = None  # chart data window; debuts before it are left-censored
  skip_clipped: bool = False  # skip clipped / over-full-scale audio (else kept and reported)
  progress: bool = True

  def check(self):
    if self.audio_only and (self.chart_only or self.split_by != "song"):
      raise ValueError("--audio-only writes every clip without targets, split by song hash: it "
                       "cannot be combined with --chart-only, --split-by debut or --cutoff")
    if self.split_by not in ("song", "debut", "cutoff"):
      raise ValueError(f"--split-by {self.split_by!r}: choose 'song', 'debut' or 'cutoff'")
    if (self.split_by == "cutoff") != bool(self.cutoff):
      raise ValueError("--cutoff DATE sets the split (by time); it cannot be combined with "
                       "--split-by song/debut" if self.cutoff else
                       "split_by='cutoff' needs cutoff=YYYY-MM-DD")
    if self.cutoff:
      dt.date.fromisoformat(self.cutoff)
      if self.val_days < 1:
        raise ValueError(f"--val-days {self.val_days}: must be >= 1")
    if self.split_by == "debut" and not self.debut_cutoffs:
      raise ValueError("--split-by debut needs --debut-cutoffs VAL_FROM,TEST_FROM (YYYY-MM-DD)")
    if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or not np.isclose(sum(self.fractions), 1):
      raise ValueError(f"--split {self.fractions}: three non-negative fractions summing to 1")
    if self.records_per_shard < 1:
      raise ValueError("--records-per-shard must be >= 1")
    if self.period not in ("weekly", "daily"):
      raise ValueError(f"--period {self.period!r}: choose 'weekly' or 'daily'")
    if os.path.abspath(self.raw) == os.path.abspath(self.out):
      raise ValueError("--out must differ from --raw")


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------


def split_of_song(song_id: str, seed: int, fractions: Sequence[float]) -> str:
  """Seeded, order-independent assignment: the same song lands in the same split every build."""
  h = hashlib.sha256(f"{seed}:{song_id}".encode()).digest()
  u = int.from_bytes(h[:8], "little") / 2**64
  edges = np.cumsum(fractions)
  return SPLITS[int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else SPLITS[-1]


def split_by_debut(first_debut: str, cutoffs: Sequence[str]) -> str:
  if first_debut < cutoffs[0]:
    return "train"
  return "val" if first_debut < cutoffs[1] else "test"


def _shift(day: str, days: int) -> str:
  return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def cutoff_val_window(cfg: BuildConfig) -> tuple[str, str]:
  """[from, to) first-debut dates of the validation songs of a cutoff split: the `val_days`
  before cutoff - val_horizon steps (default: the horizon), so the part of their series that is
  evaluated lies before the cutoff."""
  span = (cfg.val_horizon or cfg.horizon) * (7 if cfg.period == "weekly" else 1)
  to = _shift(cfg.cutoff, -span)
  return _shift(to, -cfg.val_days), to


def split_by_cutoff(first_debut: str, cfg: BuildConfig) -> str:
  if first_debut >= cfg.cutoff:
    return "test"
  lo, hi = cutoff_val_window(cfg)
  return "val" if lo <= first_debut < hi else "train"


def cutoff_targets(charts: pd.DataFrame, cfg: BuildConfig) -> targets_lib.Targets:
  """Targets of a time split at `cfg.cutoff`: pairs debuting before it computed from the chart
  rows before it only (steps from the cutoff on are unknown, extrinsic features and targets see
  nothing later), pairs debuting on or after it from every row. `cfg.window` still bounds the
  debuts (its end = the end of the test period)."""
  lo, hi = cfg.window or ("", "")
  last_before = _shift(cfg.cutoff, -1)
  kw = dict(period=cfg.period, horizon=cfg.horizon, mp2_weeks=cfg.mp2_weeks)
  before = charts[charts["date"].astype(str) < cfg.cutoff]
  parts = []
  if len(before) and (not lo or lo <= last_before):
    parts.append(targets_lib.build_targets(before, window=(lo, last_before), **kw))
  if not hi or hi >= cfg.cutoff:
    parts.append(targets_lib.build_targets(charts, window=(max(lo, cfg.cutoff), hi), **kw))
  if not parts:
    raise ValueError(f"--cutoff {cfg.cutoff} with --window {lo},{hi}: no debut can fall in it")
  tg = targets_lib.concat(parts)
  tg.definitions["cutoff"] = (
      f"{cfg.cutoff}: pairs debuting before it are computed from chart rows before it only "
      "(steps on or after it unknown); pairs debuting on or after it from all rows")
  return tg


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------


def _track_targets(tg: targets_lib.Targets):
  """track_key -> row indices into the Targets arrays, regions sorted."""
  table = tg.table.reset_index(drop=True)
  order = table.sort_values(["track_key", "region"]).index.to_numpy()
  keys = table["track_key"].to_numpy()[order]
  groups = {}
  if len(order):
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
      groups[keys[s]] = order[s:e]
  return groups


def make_example(*, clip_id, track_id, song_id, source, fbank16, rows, tg, labels) -> bytes:
  t = tg.table
  feats = {
      "clip_id": clip_id, "track_id": track_id, "song_id": song_id, "source": source,
      "fbank": fbank16.tobytes(), "fbank_shape": np.asarray(fbank16.shape, np.int64),
      "regions": [str(r) for r in t["region"].to_numpy()[rows]],
      "debut": [str(d) for d in t["debut"].to_numpy()[rows]],
      "mp2_target": t["mp2_target"].to_numpy(np.float32)[rows],
      "mp2_observed_steps": t["mp2_observed_steps"].to_numpy(np.int64)[rows],
      "longevity_target": t["longevity_target"].to_numpy(np.float32)[rows],
      "series": tg.series[rows],
      "series_mask": tg.series_mask[rows].astype(np.int64),
      "series_known": tg.series_known[rows].astype(np.int64),
      "series_floor": tg.series_floor[rows].astype(np.float32),
      "extrinsic": tg.extrinsic[rows],
  }
  for name, value in labels.items():
    feats[f"label/{name}"] = np.asarray([value], np.int64)
  return tfrecord.encode_example(feats)


class SplitWriter:
  """Writes one split's shards under temporary names; `finish()` gives them final names."""

  def __init__(self, out: str, split: str, per_shard: int):
    self.out, self.split, self.per_shard = out, split, per_shard
    self.count = 0
    self.partial: list[str] = []
    self._writer = None

  def write(self, data: bytes):
    if self._writer is None or len(self._writer) >= self.per_shard:
      self._close()
      path = os.path.join(self.out, f".{self.split}-{len(self.partial):05d}.partial")
      self.partial.append(path)
      self._writer = tfrecord.ShardWriter(path)
    self._writer.write(data)
    self.count += 1

  def _close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finish(self) -> list[str]:
    self._close()
    final = []
    for i, p in enumerate(self.partial):
      name = os.path.join(self.out, tfrecord.shard_name(self.split, i, len(self.partial)))
      os.replace(p + ".idx", name + ".idx")
      os.replace(p, name)
      final.append(os.path.basename(name))
    return final

  def abort(self):
    if self._writer is not None:
      self._writer.abort()
    for p in self.partial:
      for f in (p, p + ".idx"):
        if os.path.exists(f):
          os.remove(f)


# ------------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------------


def _sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _read_labels(raw: str) -> dict[str, dict[str, int]]:
  """Optional RAW/labels.csv: columns key (track_id or song_id), name, value (-1/0/1)."""
  path = os.path.join(raw, "labels.csv")
  if not os.path.exists(path):
    return {}
  df = pd.read_csv(path, dtype={"key": str, "name": str})
  missing = {"key", "name", "value"} - set(df.columns)
  if missing:
    raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected key,name,value")
  bad = df[~df["value"].isin([-1, 0, 1])]
  if len(bad):
    raise ValueError(f"{path}: label values must be -1, 0 or 1; row {bad.index[0] + 2} has {bad['value'].iloc[0]!r}")
  out: dict[str, dict[str, int]] = {}
  for key, name, value in zip(df["key"], df["name"], df["value"]):
    out.setdefault(name, {})[key] = int(value)
  return out


def _labels_for(labels, track_id, song_id):
  return {name: m.get(track_id, m.get(song_id, -1)) for name, m in labels.items()}


def build(cfg: BuildConfig) -> dict:
  """Builds the dataset; returns the manifest."""
  from data_prep import audio as audio_lib  # decoding deps only when audio is needed

  cfg.check()
  t0 = time.time()
  raw = cfg.raw
  os.makedirs(cfg.out, exist_ok=True)
  if any(f.endswith(".tfrecord") for f in os.listdir(cfg.out)):
    raise FileExistsError(f"{cfg.out} already holds TFRecord shards; choose an empty --out "
                          "(a build never overwrites a dataset)")
  log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if cfg.progress else (lambda *a: None)

  # -- Targets -----------------------------------------------------------------------------------
  charts_path = os.path.join(raw, "charts.csv")
  if cfg.audio_only:
    charts = tables.empty("charts")
    log("[build] audio only: every clip of clips.csv, no targets")
  else:
    charts = tables.read(charts_path, "charts")
    log(f"[build] {len(charts):,} chart rows from {charts_path}")
  if cfg.cutoff:
    tg = cutoff_targets(charts, cfg)
  else:
    tg = targets_lib.build_targets(charts, period=cfg.period, horizon=cfg.horizon,
                                   mp2_weeks=cfg.mp2_weeks, window=cfg.window)
  groups = _track_targets(tg)
  log(f"[build] targets for {len(tg.table):,} (track, region) pairs, {len(groups):,} tracks")
  labels = _read_labels(raw)

  # -- Clips: what becomes a record ------------------------------------------------------------
  first_debut = tg.table.groupby("track_key")["debut"].min().to_dict()
  if cfg.chart_only:
    song_of = tg.table.groupby("track_key")["song_key"].first().to_dict()
    clips = pd.DataFrame({"clip_id": [f"chart:{k}" for k in groups], "track_id": list(groups),
                          "song_id": [song_of[k] for k in groups], "provider": "chart",
                          "audio_path": "", "status": "ok"})
  else:
    clips = tables.read(os.path.join(raw, "clips.csv"), "clips")
  clips = clips.sort_values("clip_id", kind="stable").reset_index(drop=True)

  # A song's split must not depend on which of its clips is seen first: fix it per song, using
  # the earliest debut over all its tracks for the date split.
  song_first = {}
  for sid, tid in zip(clips["song_id"], clips["track_id"]):
    if tid in first_debut:
      song_first[sid] = min(song_first.get(sid, first_debut[tid]), first_debut[tid])
    elif cfg.audio_only:
      song_first[sid] = ""
  split_of = {}
  for sid in song_first:
    split_of[sid] = (split_of_song(sid, cfg.seed, cfg.fractions) if cfg.split_by == "song"
                     else split_by_cutoff(song_first[sid], cfg) if cfg.split_by == "cutoff"
                     else split_by_debut(song_first[sid], cfg.debut_cutoffs))
  debut_dates = tg.table["debut"].to_numpy().astype(str)

  writers = {s: SplitWriter(cfg.out, s, cfg.records_per_shard) for s in SPLITS}
  skipped: list[dict] = []
  level_problems: list[dict] = []  # clips kept although clipped / over full scale
  stats = {"sum": 0.0, "sumsq": 0.0, "n": 0}
  # Train-split target means: the models' initial output level (the same on every process).
  target_sums = records.new_target_sums()
  frames_total = 0
  per_split = {s: {"clips": 0, "songs": set(), "tracks": set(), "pairs": 0} for s in SPLITS}
  region_counts = {s: {} for s in SPLITS}
  provider_counts: dict[str, int] = {}
  fdim = fbank_lib.NUM_MEL_BINS
  max_samples = int(cfg.max_seconds * fbank_lib.SAMPLE_RATE)
  try:
    it = tqdm(clips.itertuples(index=False), total=len(clips), desc="clips -> records", mininterval=2.0,
              unit="clip", disable=not cfg.progress, file=sys.stderr)
    for c in it:
      if c.track_id not in groups and not cfg.audio_only:
        skipped.append({"clip_id": c.clip_id, "reason": "no_targets",
                        "detail": "track has no debut inside the chart window"})
        continue
      if c.status != "ok":
        skipped.append({"clip_id": c.clip_id, "reason": c.status, "detail": "clips.csv status"})
        continue
      if cfg.chart_only:
        fb16 = np.zeros((0, fdim), np.float16)
      else:
        wave, status, detail = audio_lib.diagnose(os.path.join(raw, c.audio_path),
                                                  reject_level_problems=cfg.skip_clipped)
        if wave is None:
          skipped.append({"clip_id": c.clip_id, "reason": status,
                          "detail": f"{c.audio_path}: {detail}" if detail else c.audio_path})
          continue
        if detail:  # kept, with a level problem (clipped / over full scale)
          level_problems.append({"clip_id": c.clip_id, "detail": f"{c.audio_path}: {detail}"})
        fb = fbank_lib.fbank_np(wave[:max_samples])
        fb16 = fb.astype(np.float16)
      split = split_of[c.song_id]
      rows = groups.get(c.track_id, np.zeros(0, np.int64))
      if cfg.cutoff:
        # A song first charting before the cutoff trains (or validates); its debuts in other
        # regions on or after the cutoff hold later data and are dropped, not tested.
        rows = rows[(debut_dates[rows] >= cfg.cutoff) == (split == "test")]
        if not len(rows):
          skipped.append({"clip_id": c.clip_id, "reason": "after_cutoff",
                          "detail": "the song's debuts here are after --cutoff, its first before"})
          continue
      ex = make_example(clip_id=c.clip_id, track_id=c.track_id, song_id=c.song_id,
                        source=c.provider, fbank16=fb16, rows=rows, tg=tg,
                        labels=_labels_for(labels, c.track_id, c.song_id))
      writers[split].write(ex)
      if split == "train":
        records.add_targets(target_sums, tg.table["mp2_target"].to_numpy(np.float64)[rows],
                            tg.series[rows], tg.series_mask[rows],
                            tg.table["longevity_target"].to_numpy(np.float64)[rows])
      if split == "train" and fb16.size:
        x = fb16.astype(np.float64)
        stats["sum"] += float(x.sum())
        stats["sumsq"] += float((x * x).sum())
        stats["n"] += x.size
      frames_total += fb16.shape[0]
      ps = per_split[split]
      ps["clips"] += 1
      ps["songs"].add(c.song_id)
      ps["tracks"].add(c.track_id)
      ps["pairs"] += len(rows)
      for r in tg.table["region"].to_numpy()[rows]:
        region_counts[split][r] = region_counts[split].get(r, 0) + 1
      provider_counts[c.provider] = provider_counts.get(c.provider, 0) + 1
    shards = {s: w.finish() for s, w in writers.items()}
  except BaseException:
    for w in writers.values():
      w.abort()
    raise

  elapsed = time.time() - t0
  written = sum(w.count for w in writers.values())
  if stats["n"]:
    mean = stats["sum"] / stats["n"]
    std = float(np.sqrt(max(stats["sumsq"] / stats["n"] - mean * mean, 0.0)))
  else:
    mean, std = None, None
  for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
    if per_split[a]["songs"] & per_split[b]["songs"]:  # cannot happen by construction; never ship it
      raise RuntimeError(f"song leak between {a} and {b}: {sorted(per_split[a]['songs'] & per_split[b]['songs'])[:5]}")

  inputs = {name: _sha256_file(os.path.join(raw, name))
            for name in ("charts.csv", "tracks.csv", "clips.csv", "labels.csv", "truth.json")
            if os.path.exists(os.path.join(raw, name))}
  manifest = {
      "format_version": FORMAT_VERSION,
      "has_audio": not cfg.chart_only,
      "audio_only": cfg.audio_only,
      "regions": sorted(tg.table["region"].unique().tolist()),
      "feature_names": list(tg.feature_names),
      "definitions": tg.definitions,
      "labels": sorted(labels),
      "period": cfg.period, "horizon": cfg.horizon, "mp2_weeks": cfg.mp2_weeks,
      "fbank": {"mel_bins": fdim, "frame_shift_ms": 10, "dtype": "float16",
                "sample_rate": fbank_lib.SAMPLE_RATE, "max_seconds": cfg.max_seconds,
                "mean": mean, "std": std, "stats_over": "train split, all frames and bins",
                "normalise": "(x - mean) / (2 * std)"},
      "record_schema": {
          "clip_id": "bytes", "track_id": "bytes", "song_id": "bytes", "source": "bytes",
          "fbank": "bytes: float16 [frames, mel_bins], C order", "fbank_shape": "int64 [2]",
          "regions": "bytes [R]", "debut": "bytes [R] YYYY-MM-DD", "mp2_target": "float [R]",
          "mp2_observed_steps": "int64 [R]", "longevity_target": "float [R]",
          "series": "float [R*horizon] log1p streams",
          "series_mask": "int64 [R*horizon] 1 = observed",
          "series_known": "int64 [R*horizon] 1 = the region's chart that step is in the data",
          "series_floor": "float [R*horizon] log1p of the chart's floor that step (its lowest "
                          "streams); NaN where unknown (as mp2_target's NaN)",
          "extrinsic": "float [R*F]",
          **{f"label/{n}": "int64 [1]: -1 unknown, 0, 1" for n in sorted(labels)}},
      "split": {"method": cfg.split_by, "seed": cfg.seed, "fractions": list(cfg.fractions),
                "debut_cutoffs": list(cfg.debut_cutoffs) if cfg.debut_cutoffs else None,
                "cutoff": cfg.cutoff,
                "val_debuts": list(cutoff_val_window(cfg)) if cfg.cutoff else None,
                "group_key": "song_id"},
      "shards": shards,
      "target_stats": records.summarise_targets(target_sums),
      "counts": {s: {"records": per_split[s]["clips"], "songs": len(per_split[s]["songs"]),
                     "tracks": len(per_split[s]["tracks"]), "track_regions": per_split[s]["pairs"],
                     "per_region": dict(sorted(region_counts[s].items()))} for s in SPLITS},
      "level_problems_kept": len(level_problems),
      "skipped": {"total": len(skipped),
                  "by_reason": pd.Series([s["reason"] for s in skipped], dtype=str).value_counts().to_dict()},
      "provenance": {"raw_dir": os.path.abspath(raw), "inputs_sha256": inputs,
                     "providers": provider_counts,
                     "chart_sources": charts["source"].astype(str).value_counts().to_dict(),
                     "build_args": {k: (list(v) if isinstance(v, tuple) else v)
                                    for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
                     "git_commit": provenance.git_commit()},
  }
  atomic.write_json(os.path.join(cfg.out, "manifest.json"), manifest, indent=2, sort_keys=True)
  pd.DataFrame(skipped, columns=["clip_id", "reason", "detail"]).to_csv(
      os.path.join(cfg.out, "skipped.csv"), index=False)
  if level_problems:
    pd.DataFrame(level_problems, columns=["clip_id", "detail"]).to_csv(
        os.path.join(cfg.out, "level_problems.csv"), index=False)
    log(f"[build] {len(level_problems)} clips kept although clipped or over full scale "
        f"(listed in level_problems.csv; --skip-clipped skips them)")
  _write_report(cfg, manifest, tg, skipped, elapsed, written, frames_total)
  log(f"[build] {written} records ({written / max(elapsed, 1e-9):.1f} clips/s), "
      f"{len(skipped)} skipped, in {elapsed:.1f}s -> {cfg.out}")
  # Timing is not part of the manifest (it would make identical builds differ); it is in the
  # report and returned for benchmarks.
  manifest["_timing"] = {"seconds": elapsed, "records_per_s": written / max(elapsed, 1e-9)}
  return manifest


def _write_report(cfg, manifest, tg, skipped, elapsed, written, frames_total):
  lines = [f"# Build report: {os.path.basename(os.path.abspath(cfg.out))}", "",
           f"- raw: `{os.path.abspath(cfg.raw)}`", f"- records: {written} "
           f"({'chart-only, no audio' if cfg.chart_only else f'{frames_total:,} fbank frames'})",
           f"- build time: {elapsed:.1f} s ({written / max(elapsed, 1e-9):.1f} clips/s)",
           f"- targets: period {cfg.period}, horizon {cfg.horizon}, MP2 over {cfg.mp2_weeks} weeks",
           f"- split: by {cfg.split_by} (seed {cfg.seed})", ""]
  fb = manifest["fbank"]
  if fb["mean"] is not None:
    lines += [f"- fbank mean/std (train): {fb['mean']:.4f} / {fb['std']:.4f}", ""]
  lines += ["## Records per split", "", "| split | records | songs | tracks | track×region |",
            "|---|---|---|---|---|"]
  for s in SPLITS:
    c = manifest["counts"][s]
    lines.append(f"| {s} | {c['records']} | {c['songs']} | {c['tracks']} | {c['track_regions']} |")
  lines += ["", "## Targets per region (all tracks with a debut in the window)", "",
            "| region | tracks | MP2 mean | MP2 std | MP2 computable | mean observed steps |",
            "|---|---|---|---|---|---|"]
  t = tg.table
  for r, g in t.groupby("region"):
    m = g["mp2_target"]
    obs = tg.series_mask[g.index.to_numpy()].sum(1).mean() if len(g) else 0
    lines.append(f"| {r} | {len(g)} | {m.mean():.3f} | {m.std():.3f} | {int(m.notna().sum())} | {obs:.1f} |")
  lines += ["", f"## Skipped clips: {len(skipped)}", ""]
  if skipped:
    by = pd.Series([s["reason"] for s in skipped]).value_counts()
    lines += ["| reason | clips |", "|---|---|"] + [f"| {k} | {v} |" for k, v in by.items()]
    lines += ["", "Every skipped clip is listed in `skipped.csv`."]
  with open(os.path.join(cfg.out, "build_report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def _window(s: str | None):
  """'FROM,TO' with either end empty (open) -> (from, to) of ISO dates or ''."""
  if not s:
    return None
  parts = [p.strip() for p in s.split(",")]
  if len(parts) != 2 or not any(parts):
    raise argparse.ArgumentTypeError(f"expected FROM,TO dates (one may be empty), got {s!r}")
  for p in parts:
    if p:
      try:
        dt.date.fromisoformat(p)
      except ValueError:
        raise argparse.ArgumentTypeError(f"{p!r} is not a YYYY-MM-DD date") from None
  return tuple(parts)


def _date(s: str) -> str:
  try:
    return dt.date.fromisoformat(s).isoformat()
  except ValueError:
    raise argparse.ArgumentTypeError(f"{s!r} is not a YYYY-MM-DD date") from None


def _pair(s: str | None):
  if not s:
    return None
  parts = s.split(",")
  if len(parts) != 2:
    raise argparse.ArgumentTypeError(f"expected two comma-separated dates, got {s!r}")
  for p in parts:
    dt.date.fromisoformat(p)
  return tuple(parts)


def main(argv=None):
  ap = argparse.ArgumentParser(
      prog="python -m data_prep.build",
      description="Raw data directory (charts.csv, tracks.csv, clips.csv, audio/) -> TFRecord "
                  "shards + manifest.json + build_report.md. See data_prep/tables.py for the raw layout.")
  ap.add_argument("--raw", required=True, help="raw-data directory (from data_prep.kworb + "
                  "data_prep.spotify, data_prep.kworb_csv, or data_prep.synthetic)")
  ap.add_argument("--out", required=True, help="dataset directory to create (must hold no shards yet)")
  ap.add_argument("--period", default="weekly", choices=("weekly", "daily"),
                  help="time step of the MP3 series (default weekly)")
  ap.add_argument("--horizon", type=int, default=26, help="MP3 series length T in steps (default 26)")
  ap.add_argument("--mp2-weeks", type=int, default=6,
                  help="MP2 target = log1p(streams summed over the first N chart weeks) (default 6)")
  ap.add_argument("--split-by", default="song", choices=("song", "debut"),
                  help="'song': seeded hash of song_id; 'debut': by the song's first debut date "
                       "(for a forecast evaluated on later songs, prefer --cutoff)")
  ap.add_argument("--cutoff", default=None, type=_date,
                  help="time split: train and val see only chart dates before DATE (series cut "
                       "there, unknown after); test = songs whose first debut is on or after it, "
                       "up to the --window end; val = first debuts in the --val-days before "
                       "DATE - horizon")
  ap.add_argument("--val-days", type=int, default=28,
                  help="with --cutoff: days of first debuts in the validation split (default 28)")
  ap.add_argument("--val-horizon", type=int, default=0,
                  help="with --cutoff: val = first debuts in the --val-days before DATE - this "
                       "many steps (default: --horizon; set it to MP3's mp3.window when the "
                       "series are stored longer for training origins)")
  ap.add_argument("--split", default="0.8,0.1,0.1",
                  help="train,val,test fractions for --split-by song (default 0.8,0.1,0.1)")
  ap.add_argument("--debut-cutoffs", type=_pair, default=None,
                  help="VAL_FROM,TEST_FROM dates for --split-by debut (e.g. 2025-10-01,2025-12-01)")
  ap.add_argument("--window", type=_window, default=None,
                  help="FROM,TO: keep only debuts between these dates (inclusive; leave one end "
                       "empty for an open end, e.g. 2025-09-01, ); chart rows outside the window "
                       "still count as history for the extrinsic features")
  ap.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
  ap.add_argument("--records-per-shard", type=int, default=512, help="records per shard (default 512)")
  ap.add_argument("--max-seconds", type=float, default=30.0, help="cut audio longer than this (default 30)")
  ap.add_argument("--chart-only", action="store_true",
                  help="no audio: one record per track with targets only (fbank_shape [0, 128])")
  ap.add_argument("--audio-only", action="store_true",
                  help="every usable clip without targets (charts.csv not read): unlabelled "
                       "audio for self-supervised pretraining (configs/ssl.py)")
  ap.add_argument("--skip-clipped", action="store_true",
                  help="skip clipped / over-full-scale audio (default: keep, list in level_problems.csv)")
  ap.add_argument("--quiet", action="store_true", help="no progress output")
  a = ap.parse_args(argv)
  try:
    fractions = tuple(float(x) for x in a.split.split(","))
  except ValueError:
    ap.error(f"--split {a.split!r}: expected three numbers like 0.8,0.1,0.1")
  if a.cutoff and (a.split_by != "song" or a.debut_cutoffs):
    ap.error("--cutoff sets the split by time: drop --split-by/--debut-cutoffs")
  cfg = BuildConfig(raw=a.raw, out=a.out, period=a.period, horizon=a.horizon,
                    mp2_weeks=a.mp2_weeks, split_by="cutoff" if a.cutoff else a.split_by,
                    fractions=fractions, cutoff=a.cutoff, val_days=a.val_days,
                    val_horizon=a.val_horizon,
                    debut_cutoffs=a.debut_cutoffs, seed=a.seed,
                    records_per_shard=a.records_per_shard, chart_only=a.chart_only,
                    audio_only=a.audio_only,
                    max_seconds=a.max_seconds, window=a.window, skip_clipped=a.skip_clipped,
                    progress=not a.quiet)
  try:
    manifest = build(cfg)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out": cfg.out, "records": {s: manifest["counts"][s]["records"] for s in SPLITS},
                    "skipped": manifest["skipped"]["total"], **manifest["_timing"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
