"""The analyses' view of a dataset: one row per (record, region it charted in), host-side numpy.

    pairs = rows.load(data_dir, "train,val,test")

Every record of the named splits is read straight from its shards by `mpjax.records.read`
(CRC-checked, no crop, no normalisation; the full stored series). Returns a dict of numpy
arrays, N = (record, region) rows in split order, then record order, then region order within
a record:

  split [N] str, record [N] index in its split, song [N] str (song_id; a record without one is
  its own song), track [N] str, region [N] vocabulary id, series [N, H] log1p streams (NaN where
  not observed), mask [N, H] bool on the chart, known [N, H] bool chart known that step,
  extrinsic [N, F], labels [N, L] int (-1 unknown), mp2 [N] (NaN = no target), longevity [N]
  (the censoring-aware decay slope of `data_prep.targets`; NaN = none),
  fbank_stats [N, 2 * mel] per-bin mean then std over all frames of the record's clip (the
  model-free audio representation; zeros-width when the dataset has no audio),
  rec_key [N] "split/record" (joins rows to per-record features such as encoder embeddings),
  and `manifest`, `regions` (codes), `feature_names`, `labels_names`, `horizon`, `period`.
"""
from __future__ import annotations

import numpy as np

from mpjax import records


def load(data_dir: str, splits: str = "train,val,test", *, with_audio: bool = True) -> dict:
  """Rows of the comma-separated `splits` of the dataset in `data_dir` (module docstring)."""
  manifest = records.load_manifest(data_dir)
  if manifest.get("audio_only"):
    raise ValueError(f"{data_dir} is an audio-only dataset (no chart targets): the analyses "
                     "need chart series")
  names = [s for s in splits.split(",") if s]
  absent = [s for s in names if s not in manifest["shards"]]
  if absent or not names:
    raise ValueError(f"splits {splits!r}: {data_dir}/manifest.json has splits "
                     f"{sorted(manifest['shards'])}")
  if not manifest.get("has_audio", True) or manifest["fbank"].get("mean") is None:
    with_audio = False
  mel = int(manifest["fbank"]["mel_bins"])
  cols = {k: [] for k in ("split", "record", "song", "track", "region", "series", "mask",
                          "known", "extrinsic", "labels", "mp2", "longevity", "fbank_stats")}
  for split in names:
    for rec in records.read(data_dir, split, manifest=manifest):
      record = rec["record"]
      r = len(rec["regions"])
      if with_audio:
        fb = np.asarray(rec["fbank16"], np.float64)
        stats = np.concatenate([fb.mean(0), fb.std(0)]) if len(fb) else np.zeros(2 * mel)
      else:
        stats = np.zeros(0)
      series = np.where(rec["series_mask"], rec["series"], np.nan)
      cols["split"] += [split] * r
      cols["record"] += [record] * r
      cols["song"] += [rec["song_id"] or f"{split}/#{record}"] * r
      cols["track"] += [rec["track_id"]] * r
      cols["region"].append(rec["regions"])
      cols["series"].append(series)
      cols["mask"].append(rec["series_mask"])
      cols["known"].append(rec["series_known"])
      cols["extrinsic"].append(rec["extrinsic"])
      cols["labels"].append(np.repeat(rec["labels"][None], r, 0))
      cols["mp2"].append(rec["mp2"])
      cols["longevity"].append(rec["longevity"])
      cols["fbank_stats"].append(np.repeat(stats[None], r, 0))
  if not cols["region"]:
    raise ValueError(f"splits {splits!r} of {data_dir} hold no (record, region) rows")
  h = int(manifest["horizon"])
  n = sum(len(r) for r in cols["region"])
  f, l = len(manifest["feature_names"]), len(manifest.get("labels", []))
  out = {
      "split": np.asarray(cols["split"]), "record": np.asarray(cols["record"], np.int64),
      "song": np.asarray(cols["song"]), "track": np.asarray(cols["track"]),
      "region": np.concatenate(cols["region"]).astype(np.int64),
      "series": np.concatenate(cols["series"]).reshape(-1, h).astype(np.float64),
      "mask": np.concatenate(cols["mask"]).reshape(-1, h).astype(bool),
      "known": np.concatenate(cols["known"]).reshape(-1, h).astype(bool),
      "extrinsic": np.concatenate(cols["extrinsic"]).reshape(-1, f).astype(np.float64),
      # The row count, not -1: a dataset without labels (every real chart) has l = 0.
      "labels": np.concatenate(cols["labels"]).reshape(n, l).astype(np.int64),
      "mp2": np.concatenate(cols["mp2"]).astype(np.float64),
      "longevity": np.concatenate(cols["longevity"]).astype(np.float64),
      "fbank_stats": np.concatenate(cols["fbank_stats"]).astype(np.float64),
  }
  out["rec_key"] = np.char.add(np.char.add(out["split"], "/"), out["record"].astype(str))
  out.update(manifest=manifest, regions=list(manifest["regions"]),
             feature_names=list(manifest["feature_names"]),
             labels_names=list(manifest.get("labels", [])), horizon=h,
             period=manifest.get("period", "weekly"))
  return out


def song_groups(songs) -> np.ndarray:
  """int [N] group id per row (same song = same id), for resampling and CV by song."""
  return np.unique(np.asarray(songs), return_inverse=True)[1].reshape(-1)
