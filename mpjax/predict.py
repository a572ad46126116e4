"""Audio files in, per-region popularity (MP2) or forecast curves (MP3) out.

    python -m mpjax.predict --model=BUNDLE song.mp3 other.wav [--regions=us,kr]
        [--crops=3] [--prefix=prefix.csv] [--json=out.json] [--plot=DIR] [--embeddings=emb.npy]

BUNDLE is a directory written by `python -m mpjax.export`. Each file is decoded (mp3, wav, flac,
ogg; m4a/aac with ffmpeg), mixed to mono and resampled to 16 kHz, and turned into a fbank by
the same code as the training data (`mpjax.audio.decode`, `mpjax.audio.fbank`, the first
`max_seconds` of the song, float16 as stored). The model sees `--crops` crops of its input
length, evenly spaced from the start to the end of the song (1: the centre), and the outputs
are averaged over the crops (in log1p streams; per quantile for MP3).

MP2: the expected streams over the target window per region (and its log1p), with the
percentile among that region's training songs. MP3: the forecast curve per region with its
quantile band; `--prefix` gives the first k observed steps (CSV `file,region,step,streams`, steps
0..k-1, raw stream counts; `file` as given on the command line or its base name), without it the
model forecasts from the audio alone (its learned level per region). `--embeddings` saves the
pooled audio encoder output, one row per predicted file, in the order of the JSON's results.

Exit status: 0 when every file was predicted; 1 when some file (missing, undecodable, shorter
than the model's minimum) or some requested region failed -- the others are still predicted;
2 when nothing could be (bad bundle, bad arguments).
"""
from __future__ import annotations

import csv
import math
import os
import sys

from absl import app, flags, logging
import jax
import numpy as np
from flax import nnx

from mpjax import atomic
from mpjax import export as export_lib
from mpjax.audio import decode as decode_lib
from mpjax.audio import fbank as fbank_lib
from mpjax.input import pipeline


def define_flags():
  """The CLI's flags; defined only when run as a program (mpjax.main imports this
  module and has flags of the same names)."""
  flags.DEFINE_string("model", None, "bundle directory written by `python -m mpjax.export`")
  flags.DEFINE_list("regions", None, "regions to report (default: all of the bundle's)")
  flags.DEFINE_integer("crops", 3, "crops per song, evenly spaced; outputs are averaged")
  flags.DEFINE_string("prefix", None, "MP3: CSV file,region,step,streams of the first "
                      "k observed steps (raw stream counts)")
  flags.DEFINE_string("json", None, "write every prediction to this JSON file")
  flags.DEFINE_string("plot", None, "write one PNG per song into this directory")
  flags.DEFINE_string("embeddings", None, "write the pooled encoder embeddings "
                      "[files, hidden] to this .npy file")
  flags.DEFINE_integer("batch_size", 8, "crops per model call")


class InputError(ValueError):
  """A file that cannot be predicted; the message names it and says why."""


# ------------------------------------------------------------------------------------------------
# Audio -> model input
# ------------------------------------------------------------------------------------------------


def song_crops(path: str, meta: dict, crops: int) -> tuple[np.ndarray, float]:
  """([C, input_tdim, mel] normalised fbank crops, seconds) for an audio file, as in training:
  decode, mono, 16 kHz, fbank of the first max_seconds, float16, crop, normalise."""
  fb = meta["fbank"]
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  try:
    wave = decode_lib.load(path, fb["sample_rate"], min_seconds=fb["min_seconds"],
                           silence_rms=0.0)
  except decode_lib.AudioError as e:
    what = {"too_short": f"shorter than the model's minimum ({e.detail})",
            "corrupt": f"cannot decode it ({e.detail})", "empty": "empty file",
            "no_decoder": e.detail, "missing": "no such file"}.get(e.reason, e.detail)
    raise InputError(f"{path}: {what}") from None
  seconds = wave.shape[0] / fb["sample_rate"]
  wave = wave[:int(fb["max_seconds"] * fb["sample_rate"])]
  fb16 = fbank_lib.fbank_np(wave).astype(np.float16)
  tdim = fb["input_tdim"]
  starts = sorted(set(pipeline.crop_starts(fb16.shape[0], tdim, crops)))
  x = np.stack([pipeline.crop(fb16, s, tdim, fb["mean"], fb["std"])[0] for s in starts])
  return x, seconds


def read_prefix(path: str, meta: dict, files: list[str]) -> dict[tuple[str, str], np.ndarray]:
  """(file, region) -> [k] log1p streams (NaN where not given) from the --prefix CSV."""
  k = meta["targets"]["prefix_steps"]
  if meta["task"] != "mp3" or not k:
    raise ValueError(f"--prefix: this bundle's model takes no observed prefix "
                     f"({meta['task']}, prefix_steps {k})")
  names = {}
  for f in files:
    names[f] = f
    names.setdefault(os.path.basename(f), f)
  out: dict[tuple[str, str], np.ndarray] = {}
  with open(path, newline="") as fh:
    reader = csv.DictReader(fh)
    need = {"file", "region", "step", "streams"}
    if not need <= set(reader.fieldnames or []):
      raise ValueError(f"{path}: needs the columns {sorted(need)}, has {reader.fieldnames}")
    for line, row in enumerate(reader, start=2):
      where = f"{path} line {line}"
      if row["file"] not in names:
        raise ValueError(f"{where}: file {row['file']!r} is not among the audio files given")
      if row["region"] not in meta["regions"]:
        raise ValueError(f"{where}: unknown region {row['region']!r}; the bundle knows "
                         f"{', '.join(meta['regions'])}")
      try:
        step, streams = int(row["step"]), float(row["streams"])
      except ValueError:
        raise ValueError(f"{where}: step must be an integer and streams a number") from None
      if not 0 <= step < k:
        raise ValueError(f"{where}: step {step} outside the model's prefix 0..{k - 1}")
      if not math.isfinite(streams) or streams < 0:
        raise ValueError(f"{where}: streams must be a count >= 0, got {row['streams']!r}")
      key = (names[row["file"]], row["region"])
      out.setdefault(key, np.full(k, np.nan, np.float32))[step] = np.log1p(streams)
  return out


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


def make_predictor(model, meta: dict, batch_size: int):
  """crops [C, T, F], prefix [R, k] (NaN = unknown) -> ({"prediction", "embedding"} averaged
  over the crops), in fixed-size batches (one compilation)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda state, *x: export_lib.infer(nnx.merge(graphdef, state), *x))
  r = len(meta["regions"])
  k = meta["task"] == "mp3" and meta["targets"]["prefix_steps"]

  def predict(crops: np.ndarray, prefix: np.ndarray | None) -> dict:
    outs = []
    for i in range(0, len(crops), batch_size):
      x = crops[i:i + batch_size]
      n = len(x)
      x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
      args = [x, np.tile(np.arange(r, dtype=np.int32), (batch_size, 1))]
      if k:
        p = prefix if prefix is not None else np.full((r, k), np.nan, np.float32)
        args += [np.broadcast_to(np.nan_to_num(p), (batch_size, r, k)).astype(np.float32),
                 np.broadcast_to(np.isfinite(p), (batch_size, r, k)).astype(np.float32)]
      out = jax.device_get(fn(state, *args))
      outs.append({name: v[:n] for name, v in out.items()})
    return {name: np.concatenate([o[name] for o in outs]).mean(0) for name in outs[0]}

  return predict


def percentile(value: float, quantiles: list[float]) -> float | None:
  """Percentile (0-100) of `value` among a region's training targets (from its quantiles)."""
  if not quantiles:
    return None
  q = np.asarray(quantiles)
  levels = np.linspace(0, 100, len(q))
  return float(np.interp(value, q, levels))


def describe(file: str, seconds: float, n_crops: int, out: dict, meta: dict, regions: list[str],
             prefix: np.ndarray | None) -> dict:
  """One file's JSON result."""
  res = {"file": file, "ok": True, "seconds": round(seconds, 2), "crops": n_crops, "regions": {}}
  ids = {r: i for i, r in enumerate(meta["regions"])}
  if meta["task"] == "mp2":
    dist = meta.get("region_mp2_distribution", {}).get("quantiles", {})
    for r in regions:
      v = float(out["prediction"][ids[r]])
      res["regions"][r] = {"log1p_streams": round(v, 4), "streams": round(math.expm1(v)),
                           "percentile": percentile(v, dist.get(r, []))}
    return res
  t = meta["targets"]
  q = t["quantiles"] or [0.5]
  k = t["prefix_steps"]
  for r in regions:
    curve = out["prediction"][ids[r]]  # [H, Q]
    entry = {"steps": list(range(k, t["horizon"])), "quantiles": q,
             "log1p_streams": np.round(curve, 4).tolist(),
             "streams_median": [round(math.expm1(v)) for v in curve[:, q.index(0.5)]]}
    if prefix is not None and k:
      entry["prefix_log1p_streams"] = [None if not np.isfinite(v) else round(float(v), 4)
                                       for v in prefix[ids[r]]]
    res["regions"][r] = entry
  return res


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def _short(n: float) -> str:
  for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= div:
      return f"{n / div:.3g}{unit}"
  return f"{n:.0f}"


def table(results: list[dict], meta: dict) -> str:
  lines = []
  if meta["task"] == "mp2":
    unit = "weeks" if meta["targets"]["period"] == "weekly" else "days"
    window = f"first {meta['targets']['mp2_weeks']} chart {unit}"
    lines.append(f"{'file':30s} {'region':8s} {'streams (' + window + ')':>28s} "
                 f"{'log1p':>7s} {'percentile':>10s}")
    for res in results:
      for r, e in res.get("regions", {}).items():
        pct = "" if e["percentile"] is None else f"{e['percentile']:.0f}"
        lines.append(f"{os.path.basename(res['file'])[:30]:30s} {r:8s} {e['streams']:28,d} "
                     f"{e['log1p_streams']:7.3f} {pct:>10s}")
    return "\n".join(lines)
  t = meta["targets"]
  q = t["quantiles"] or [0.5]
  lo, mid, hi = 0, q.index(0.5), len(q) - 1
  steps = list(range(t["prefix_steps"], t["horizon"]))
  show = sorted({steps[0], steps[min(1, len(steps) - 1)], steps[len(steps) // 2], steps[-1]})
  unit = "week" if t["period"] == "weekly" else "day"
  lines.append(f"streams per {unit} after the debut: median [{q[lo]:g}-{q[hi]:g} quantiles]")
  lines.append(f"{'file':26s} {'region':7s} " + " ".join(f"{unit + ' ' + str(s):>22s}"
                                                         for s in show))
  for res in results:
    for r, e in res.get("regions", {}).items():
      c = np.asarray(e["log1p_streams"])
      cells = [f"{_short(math.expm1(c[s - steps[0], mid]))} [{_short(math.expm1(c[s - steps[0], lo]))}"
               f"-{_short(math.expm1(c[s - steps[0], hi]))}]" for s in show]
      lines.append(f"{os.path.basename(res['file'])[:26]:26s} {r:7s} "
                   + " ".join(f"{x:>22s}" for x in cells))
  return "\n".join(lines)


def plot(res: dict, meta: dict, out_dir: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  name = os.path.splitext(os.path.basename(res["file"]))[0]
  path = os.path.join(out_dir, f"{name}.png")
  regions = list(res["regions"])
  if meta["task"] == "mp2":
    fig, ax = plt.subplots(figsize=(1.2 * len(regions) + 2, 3.2))
    vals = [res["regions"][r]["streams"] for r in regions]
    ax.bar(regions, vals, color="tab:blue")
    ax.set_ylabel(f"streams, first {meta['targets']['mp2_weeks']} chart periods")
    ax.set_title(os.path.basename(res["file"]))
  else:
    t = meta["targets"]
    q = t["quantiles"] or [0.5]
    fig, axes = plt.subplots(1, len(regions), figsize=(3.2 * len(regions), 3), squeeze=False)
    for ax, r in zip(axes[0], regions):
      e = res["regions"][r]
      c = np.expm1(np.asarray(e["log1p_streams"]))
      ax.plot(e["steps"], c[:, q.index(0.5)], color="tab:blue", label="median")
      if len(q) > 1:
        ax.fill_between(e["steps"], c[:, 0], c[:, -1], color="tab:blue", alpha=0.2,
                        label=f"{q[0]:g}-{q[-1]:g}")
      pre = e.get("prefix_log1p_streams")
      if pre:
        xs = [s for s, v in enumerate(pre) if v is not None]
        ax.plot(xs, [math.expm1(pre[s]) for s in xs], "ko", ms=4, label="observed")
      ax.set_title(f"{r}")
      ax.set_xlabel("week" if t["period"] == "weekly" else "day")
    axes[0][0].set_ylabel("streams")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(os.path.basename(res["file"]), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def run(bundle: str, files: list[str], *, regions=None, crops=3, prefix=None, json_out=None,
        plot_dir=None, embeddings=None, batch_size=8, progress=True) -> int:
  """Predicts `files`; returns the exit status (module doc)."""
  from tqdm import tqdm

  if crops < 1 or batch_size < 1:
    raise ValueError(f"--crops={crops} and --batch_size={batch_size} must be >= 1")
  model, meta = export_lib.load(bundle)
  if meta["task"] == "mp3" and not meta["config"]["mp3"]["audio"]:
    raise ValueError(f"{bundle}: this MP3 has no audio encoder (trained on chart data only); "
                     "it cannot predict from audio files")
  known = meta["regions"]
  regions = list(regions) if regions else list(known)
  unknown = [r for r in regions if r not in known]
  status = 0
  if unknown:
    print(f"error: unknown region(s) {', '.join(unknown)}; the bundle knows "
          f"{', '.join(known)}", file=sys.stderr)
    regions = [r for r in regions if r in known]
    status = 1
    if not regions:
      return 2
  prefixes = read_prefix(prefix, meta, files) if prefix else {}
  predict = make_predictor(model, meta, batch_size)
  results, embeds = [], []
  k = meta["task"] == "mp3" and meta["targets"]["prefix_steps"]
  for f in tqdm(files, desc="songs", unit="song", disable=not progress or len(files) < 2,
                file=sys.stderr):
    try:
      x, seconds = song_crops(f, meta, crops)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      results.append({"file": f, "ok": False, "error": str(e)})
      status = 1
      continue
    p = None
    if k:
      p = np.stack([prefixes.get((f, r), np.full(k, np.nan, np.float32)) for r in known])
    out = predict(x, p)
    res = describe(f, seconds, len(x), out, meta, regions, p if prefixes else None)
    if "embedding" in out:
      res["embedding_row"] = len(embeds)
      embeds.append(out["embedding"])
    if plot_dir:
      res["plot"] = plot(res, meta, plot_dir)
    results.append(res)
  good = [r for r in results if r["ok"]]
  if good:
    print(table(good, meta))
  if json_out:
    atomic.write_json(json_out, {"bundle": os.path.abspath(bundle), "task": meta["task"],
                                 "output": meta["targets"]["output"], "results": results},
                      indent=1)
  if embeddings and embeds:
    with atomic.replacing(embeddings, "wb") as fh:
      np.save(fh, np.stack(embeds).astype(np.float32))
  if len(good) < len(results):
    print(f"{len(results) - len(good)} of {len(results)} file(s) not predicted (see above)",
          file=sys.stderr)
  return status


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  files = argv[1:]
  if not flags.FLAGS.model or not files:
    print("usage: python -m mpjax.predict --model=BUNDLE AUDIO [AUDIO ...] (see --help)",
          file=sys.stderr)
    return 2
  f = flags.FLAGS
  try:
    return run(f.model, files, regions=f.regions, crops=f.crops, prefix=f.prefix,
               json_out=f.json, plot_dir=f.plot, embeddings=f.embeddings,
               batch_size=f.batch_size)
  except (export_lib.BundleError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  define_flags()
  app.run(main)
