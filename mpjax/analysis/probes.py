"""Linear probes: what has a run's audio encoder learnt that a linear read-out can recover?

    python -m mpjax.analysis.probes --workdir=RUN [--data=DATASET] [--split=test] [--raw=RAW]
        [--out=DIR] [--seed=0] [--step=latest] [--folds=5]

For every record of the split (one centre crop, the run's own input settings and the fbank
normalisation of the run's training data) three representations are computed:
  trained   the run's AST encoder ('mp2', 'mp3' or 'ssl': all keep it under `encoder/...`)
  random    the same AST config, freshly initialised from --seed: what the architecture alone
            gives, the baseline that says whether training added anything
  fbank     mean and std over time of each mel bin of the same crop (2 * mel features)
For both encoders: the pooled embedding `(cls + dist) / 2` of the final tokens (AST.__call__),
and per layer the mean of the patch tokens after each block (layer L = after block L, 1-based;
the final LayerNorm belongs to the last layer only). The encoder runs alone: no region tokens
or region embedding. In an MP2/MP3 run with region CLS tokens the head reads the region tokens,
so the cls/dist outputs of the last block are never trained there; the per-layer patch means
are then the more telling numbers.

Targets: the planted attributes of the synthetic demo (RAW/truth.json 'attributes_u': tempo,
brightness, percussiveness, hook, loudness, mode), every manifest label ('label/<name>',
unknown rows dropped) and `mp2` (the target of the record's first region, in vocabulary order,
with an MP2 target). RAW defaults to DATASET/../raw, else the raw directory the manifest says
the dataset was built from; real data without truth.json gets only labels and mp2.

Score (`probe_r2`): StandardScaler, standardised values clipped to +-5 (a near-constant feature
with one outlying song would otherwise blow up every prediction of the fold that holds it: seen on
a collapsed pooled embedding of the MP2 demo), RidgeCV (alpha from np.logspace(-3, 4, 15), chosen by
efficient leave-one-out inside each training fold), K shuffled folds (seeded) grouped by song
so one song's clips never sit on both sides, and R² of the out-of-fold predictions pooled over
all rows (not the mean of per-fold R²s, which small folds make noisy). Below 0 = worse than
predicting the mean.

Outputs in --out (default RUN/probes): probes.json (every number, n, folds, seed, run, data,
split, step, encoder params loaded), probes.md (the table, also printed), probes.png.
Single process: every process would read the whole split; only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mpjax import records
from mpjax.models import ast as ast_lib

ATTRIBUTES = ("tempo", "brightness", "percussiveness", "hook", "loudness", "mode")
ALPHAS = np.logspace(-3, 4, 15)
CLIP = 5.0  # standardised features are clipped to [-CLIP, CLIP] (module doc)
REPRESENTATIONS = ("trained", "random", "fbank")


# ------------------------------------------------------------------------------------------------
# The probe
# ------------------------------------------------------------------------------------------------


def probe_r2(features, target, groups=None, folds: int = 5, seed: int = 0) -> float:
  """Cross-validated R² of a ridge read-out of `target` [n] from `features` [n, d].

  groups [n]: rows with the same group never straddle folds (GroupKFold, shuffled); None =
  plain shuffled KFold. Pooled out-of-fold R² (module doc). Raises ValueError when the rows or
  groups are too few for `folds`, or the target is constant.
  """
  from sklearn.linear_model import RidgeCV
  from sklearn.metrics import r2_score
  from sklearn.model_selection import GroupKFold, KFold, cross_val_predict
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import FunctionTransformer, StandardScaler

  x = np.asarray(features, np.float64)
  y = np.asarray(target, np.float64)
  if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"probe_r2: features must be [n, d] and target [n]; got {x.shape}, {y.shape}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("probe_r2: features or target hold NaN/Inf")
  if folds < 2:
    raise ValueError(f"probe_r2: folds={folds} must be >= 2")
  if np.ptp(y) == 0:
    raise ValueError(f"probe_r2: the target is constant ({y[0]:g}) over all {len(y)} rows; R² is "
                     "undefined")
  if groups is None:
    if len(y) < 2 * folds:
      raise ValueError(f"probe_r2: too few rows ({len(y)}) for {folds} folds (need >= {2 * folds})")
    cv = KFold(folds, shuffle=True, random_state=seed)
  else:
    groups = np.asarray(groups)
    if len(groups) != len(y):
      raise ValueError(f"probe_r2: groups has {len(groups)} rows, target {len(y)}")
    n_groups = len(np.unique(groups))
    if n_groups < 2 * folds:
      raise ValueError(f"probe_r2: too few groups (songs): {n_groups} over {len(y)} rows for "
                       f"{folds} folds (need >= {2 * folds})")
    cv = GroupKFold(folds, shuffle=True, random_state=seed)
  model = make_pipeline(StandardScaler(), FunctionTransformer(_clip), RidgeCV(alphas=ALPHAS))
  pred = cross_val_predict(model, x, y, groups=groups, cv=cv)
  return float(r2_score(y, pred))


def _clip(x):
  return np.clip(x, -CLIP, CLIP)


# ------------------------------------------------------------------------------------------------
# Encoders and their features
# ------------------------------------------------------------------------------------------------


class _Holder(nnx.Module):
  """Just `encoder`, so `checkpoint.init_from` matches the run's `encoder/...` paths."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.encoder = ast_lib.AST(cfg, rngs=rngs)


def load_encoders(workdir: str, config, step: int, seed: int = 0):
  """(trained AST, random AST of the same config, init_from report) for a run directory."""
  from mpjax import checkpoint as ckpt_lib
  from mpjax.models import factory

  task = config.get("task")
  if task == "mp3" and not config.get("mp3", {}).get("audio", True):
    raise ValueError(f"{workdir}: an MP3 run with mp3.audio=False has no audio encoder to probe")
  cfg = dataclasses.replace(factory.model_config(config), patchout_time=0.0, patchout_freq=0.0)
  # One compiled init rather than one compilation per initialiser op.
  make = nnx.jit(lambda key: _Holder(cfg, rngs=nnx.Rngs(params=key)))
  trained = make(jax.random.key(seed + 1))
  ckdir = os.path.join(workdir, "checkpoints")
  try:
    report = ckpt_lib.init_from(trained, ckdir, step=step)
  except ValueError as e:
    raise ValueError(f"{workdir}: checkpoint step {step} holds no encoder parameters "
                     f"({e})") from None
  if report["absent"] or report["reinit"]:
    raise ValueError(f"{workdir}: checkpoint step {step} does not hold the whole encoder of its "
                     f"config (task {task!r}): absent {report['absent'][:5]}, other shape "
                     f"{report['reinit'][:5]}")
  random = make(jax.random.key(seed))
  return trained.encoder, random.encoder, report


def encoder_features(encoder, fbank):
  """[B, T, F] -> (pooled [B, D], per-layer patch-token means [B, depth, D]) from the encoder's
  own forward pass (`AST.encode(..., layers=True)`); the last layer's means are taken after the
  final LayerNorm, as the pooled embedding is."""
  tokens, per_layer = encoder.encode(fbank, layers=True)
  means = jnp.swapaxes(per_layer[:, :, 2:].mean(axis=2), 0, 1)
  means = means.at[:, -1].set(tokens[:, 2:].mean(axis=1))
  return (tokens[:, 0] + tokens[:, 1]) / 2, means


@functools.partial(jax.jit, static_argnums=0)
def _embed(graphdef, state, fbank):
  return encoder_features(nnx.merge(graphdef, state), fbank)


def fbank_stats(fbank: np.ndarray) -> np.ndarray:
  """[B, T, mel] -> [B, 2 * mel]: per-bin mean, then per-bin std, over time."""
  fbank = np.asarray(fbank, np.float64)
  return np.concatenate([fbank.mean(axis=1), fbank.std(axis=1)], axis=1)


# ------------------------------------------------------------------------------------------------
# Data: records -> songs, targets
# ------------------------------------------------------------------------------------------------


def record_keys(data_dir: str, split: str, manifest: dict) -> list[tuple[str, str]]:
  """(song_id, track_id) of each record of the split, in the pipeline's 'record' order."""
  return [(r["song_id"], r["track_id"]) for r in records.read(data_dir, split, manifest=manifest)]


def find_raw(data_dir: str, manifest: dict, raw: str | None) -> str | None:
  """The raw directory holding truth.json: `raw`, DATASET/../raw, or the manifest's build
  source; None when none has it (real data). An explicit `raw` without it is an error."""
  if raw:
    if not os.path.exists(os.path.join(raw, "truth.json")):
      raise FileNotFoundError(f"--raw={raw}: no truth.json there (the synthetic demo writes it)")
    return raw
  built_from = manifest.get("provenance", {}).get("build_args", {}).get("raw")
  for cand in (os.path.join(os.path.dirname(os.path.abspath(data_dir)), "raw"), built_from):
    if cand and os.path.exists(os.path.join(cand, "truth.json")):
      return cand
  return None


def truth_attributes(raw: str) -> dict[str, dict[str, float]]:
  """song_id -> {attribute: value} from RAW/truth.json ('attributes_u')."""
  with open(os.path.join(raw, "truth.json")) as f:
    truth = json.load(f)
  songs = {}
  for s in truth.get("songs", []):
    u = s.get("attributes_u", {})
    missing = [a for a in ATTRIBUTES if a not in u]
    if missing:
      raise ValueError(f"{raw}/truth.json: song {s.get('song_id')} lacks attributes_u {missing}")
    songs[s["song_id"]] = {a: float(u[a]) for a in ATTRIBUTES}
  return songs


def embed_config(config, manifest: dict) -> None:
  """In place: one centre crop, normalised with the run's training data statistics (as
  mpjax.evaluate does; `manifest`'s, the data being embedded, when the run's is unreadable)."""
  try:
    run_fbank = records.load_manifest(config.data_dir)["fbank"]
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    run_fbank = manifest["fbank"]
  with config.unlocked():
    config.input.eval_crops = 1
    if config.input.get("fbank_mean") is None and run_fbank.get("mean") is not None:
      config.input.fbank_mean = run_fbank["mean"]
      config.input.fbank_std = run_fbank["std"]


def embed_split(trained, random, data_dir: str, split: str, config, *, log=print) -> dict:
  """Every valid record of the split: 'record', the three representations, 'labels', 'mp2'.
  random None: the trained encoder only ('random' and 'random_layers' left out)."""
  from mpjax.input import pipeline

  gd_t, st_t = nnx.split(trained)
  gd_r, st_r = nnx.split(random) if random is not None else (None, None)
  ds = pipeline.make_dataset(data_dir, split, cfg=config.input, seed=0, train=False,
                             process_index=0, process_count=1)
  total = records.load_manifest(data_dir).get("counts", {}).get(split, {}).get("records")
  parts = {k: [] for k in ("record", "labels", "mp2", "fbank", "trained", "trained_layers",
                           "random", "random_layers")}
  done, t0 = 0, time.time()
  for batch in ds:
    keep = np.flatnonzero(batch["valid"] > 0)
    outs = {}
    outs["trained"], outs["trained_layers"] = _embed(gd_t, st_t, jnp.asarray(batch["fbank"]))
    if gd_r is not None:
      outs["random"], outs["random_layers"] = _embed(gd_r, st_r, jnp.asarray(batch["fbank"]))
    for name, v in outs.items():
      parts[name].append(np.asarray(v, np.float32)[keep])
    parts["fbank"].append(fbank_stats(batch["fbank"][keep]))
    parts["record"].append(batch["record"][keep])
    parts["labels"].append(batch["labels"][keep])
    w = batch["mp2_weight"][keep] > 0
    if w.shape[1]:
      first = np.argmax(w, axis=1)
      mp2 = batch["mp2"][keep][np.arange(len(keep)), first]
      parts["mp2"].append(np.where(w.any(axis=1), mp2, np.nan))
    else:  # an audio-only dataset: no regions, no targets
      parts["mp2"].append(np.full(len(keep), np.nan))
    done += len(keep)
    log(f"[probes] {split}: embedded {done}" + (f"/{total}" if total else "") +
        f" records ({time.time() - t0:.1f} s)")
  if not parts["record"]:
    raise ValueError(f"split {split!r} of {data_dir} has no records to probe")
  return {k: np.concatenate(v, 0) for k, v in parts.items() if v}


def _targets(rows: dict, keys: list, manifest: dict, songs: dict | None) -> dict:
  """name -> (values [n] with NaN = unknown, kind)."""
  out = {}
  if songs is not None:
    for a in ATTRIBUTES:
      out[a] = (np.array([songs[k[0]][a] if k[0] in songs else np.nan for k in keys]),
                "attribute")
  for j, name in enumerate(manifest.get("labels", [])):
    lab = rows["labels"][:, j].astype(np.float64)
    out[f"label/{name}"] = (np.where(lab < 0, np.nan, lab), "label")
  out["mp2"] = (rows["mp2"].astype(np.float64), "mp2")
  return out


# ------------------------------------------------------------------------------------------------
# The whole probe run
# ------------------------------------------------------------------------------------------------


def run(workdir: str, data_dir: str | None = None, split: str = "test", raw: str | None = None,
        out: str | None = None, seed: int = 0, step: str = "latest", folds: int = 5,
        log=print) -> dict:
  """Probes the run's encoder on `split` (or comma-separated splits) of `data_dir`; writes
  OUT/probes.json, .md, .png on process 0 and returns what probes.json holds."""
  from mpjax import export as export_lib

  config = export_lib.run_config(workdir)
  data_dir = data_dir or config.get("data_dir")
  if not data_dir:
    raise ValueError(f"{workdir}/config.json has no data_dir; pass --data")
  manifest = records.load_manifest(data_dir)
  splits = [s for s in split.split(",") if s]
  absent = [s for s in splits if s not in manifest["shards"]]
  if absent or not splits:
    raise ValueError(f"split {split!r}: {data_dir}/manifest.json has splits "
                     f"{sorted(manifest['shards'])}")
  step_n, _ = export_lib.choose_step(workdir, str(step), config)
  embed_config(config, manifest)
  raw = find_raw(data_dir, manifest, raw)
  songs = truth_attributes(raw) if raw else None
  out = out or os.path.join(workdir, "probes")
  main = jax.process_index() == 0
  say = log if main else (lambda *_: None)

  # Records -> songs first: a split too small for the folds fails before any embedding. A
  # record without a song_id is its own group.
  split_keys = {s: [(song or f"{s}/#{i}", track) for i, (song, track) in
                    enumerate(record_keys(data_dir, s, manifest))] for s in splits}
  all_songs = {k[0] for ks in split_keys.values() for k in ks}
  if len(all_songs) < 2 * folds:
    raise ValueError(f"split {split!r} of {data_dir}: {sum(map(len, split_keys.values()))} "
                     f"records of {len(all_songs)} songs, too few for {folds}-fold probes (need "
                     f">= {2 * folds} songs); use a larger split (e.g. --split=train or "
                     "--split=val,test) or fewer --folds")
  if songs is not None and not all_songs & songs.keys():
    raise ValueError(f"{raw}/truth.json names none of the songs of {data_dir} ({split}): "
                     "another dataset's truth? pass the right --raw")

  trained, random, report = load_encoders(workdir, config, step_n, seed)
  say(f"[probes] {workdir} step {step_n}: {len(report['loaded'])} encoder parameters loaded; "
      f"truth: {raw or 'none (no attribute targets)'}")
  rows, keys = [], []
  for s in splits:
    rows.append(embed_split(trained, random, data_dir, s, config, log=say))
    keys += [split_keys[s][i] for i in rows[-1]["record"]]
  rows = {name: np.concatenate([r[name] for r in rows], 0) for name in rows[0]}
  n = len(keys)
  song_ids = np.unique([k[0] for k in keys], return_inverse=True)[1]
  n_songs = int(song_ids.max()) + 1
  depth = rows["trained_layers"].shape[1]
  features = {"trained": rows["trained"], "random": rows["random"], "fbank": rows["fbank"]}
  for enc in ("trained", "random"):
    for layer in range(depth):
      features[f"{enc}/L{layer + 1}"] = rows[f"{enc}_layers"][:, layer]

  results, skipped = {}, {}
  for name, (y, kind) in _targets(rows, keys, manifest, songs).items():
    known = np.isfinite(y)
    try:
      r2 = {rep: probe_r2(x[known], y[known], song_ids[known], folds, seed)
            for rep, x in features.items()}
    except ValueError as e:
      skipped[name] = f"{int(known.sum())} known rows: {e}"
      say(f"[probes] skipped {name}: {skipped[name]}")
      continue
    entry = {"kind": kind, "n": int(known.sum()), "songs": len(np.unique(song_ids[known])),
             "r2": {rep: r2[rep] for rep in REPRESENTATIONS}}
    for enc in ("trained", "random"):
      per = [r2[f"{enc}/L{i + 1}"] for i in range(depth)]
      entry["r2"][f"{enc}_layers"] = per
      entry["best_layer"] = {**entry.get("best_layer", {}), enc: int(np.argmax(per)) + 1}
      entry["r2"][f"{enc}_best_layer"] = max(per)
    results[name] = entry

  result = {
      "run": os.path.abspath(workdir), "task": config.get("task"), "step": step_n,
      "data_dir": os.path.abspath(data_dir), "split": split, "raw": raw and os.path.abspath(raw),
      "n": n, "songs": n_songs, "folds": folds, "seed": seed, "depth": depth,
      "encoder_params_loaded": len(report["loaded"]),
      "dims": {"trained": int(rows["trained"].shape[1]), "random": int(rows["random"].shape[1]),
               "fbank": int(rows["fbank"].shape[1])},
      "probe": ("StandardScaler, clip +-5, RidgeCV(alphas=logspace(-3, 4, 15), leave-one-out), "
                f"{folds} shuffled folds grouped by song (seed {seed}), R² of the pooled "
                "out-of-fold predictions; layers 1-based (after block L)"),
      "targets": results, "skipped": skipped,
  }
  if main:
    from mpjax import atomic
    table = markdown(result)
    atomic.write_json(os.path.join(out, "probes.json"), result, indent=1)
    atomic.write_text(os.path.join(out, "probes.md"), table)
    plot(result, os.path.join(out, "probes.png"))
    say(table)
    say(f"[probes] written to {out}")
  return result


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _f(v):
  return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(result: dict) -> str:
  """The headline table (targets x representations) and the per-layer table."""
  r = result
  lines = [f"# Linear probes: {r['run']} (step {r['step']})", "",
           f"{r['data_dir']} split {r['split']}: {r['n']} records, {r['songs']} songs. "
           f"{r['probe']}.", "",
           "| target | n | trained (pooled) | trained best layer | random (pooled) | "
           "random best layer | fbank stats | trained/fbank |",
           "|---|---|---|---|---|---|---|---|"]
  for name, t in r["targets"].items():
    s = t["r2"]
    ratio = s["trained"] / s["fbank"] if s["fbank"] > 0.05 else None
    lines.append(f"| {name} | {t['n']} | {_f(s['trained'])} | {_f(s['trained_best_layer'])} "
                 f"(L{t['best_layer']['trained']}) | {_f(s['random'])} | "
                 f"{_f(s['random_best_layer'])} (L{t['best_layer']['random']}) | "
                 f"{_f(s['fbank'])} | {_f(ratio)} |")
  lines += ["", "trained/fbank: pooled trained R² over fbank-stats R² (– when fbank R² <= 0.05: "
            "a ratio over a near-zero or negative R² says nothing).",
            "", "Per layer, trained / random:", "",
            "| target | " + " | ".join(f"L{i + 1}" for i in range(r["depth"])) + " |",
            "|---|" + "---|" * r["depth"]]
  for name, t in r["targets"].items():
    cells = [f"{_f(a)} / {_f(b)}" for a, b in zip(t["r2"]["trained_layers"],
                                                  t["r2"]["random_layers"])]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  if r["skipped"]:
    lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in r["skipped"].items())]
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str):
  """Grouped bars per target (left) and R² per layer (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from mpjax import atomic

  names = list(result["targets"])
  bars = [("trained", "trained (pooled)"), ("trained_best_layer", "trained best layer"),
          ("random", "random (pooled)"), ("fbank", "fbank stats")]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(names)) + 5, 4.5),
                                gridspec_kw={"width_ratios": [max(2, len(names)), 3]})
  x = np.arange(len(names))
  w = 0.8 / len(bars)
  for i, (key, label) in enumerate(bars):
    ax.bar(x + (i - (len(bars) - 1) / 2) * w,
           [result["targets"][n]["r2"][key] for n in names], w, label=label)
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xticks(x, names, rotation=30, ha="right")
  ax.set_ylabel("cross-validated R²")
  values = [result["targets"][n]["r2"][k] for n in names for k, _ in bars]
  clipped = min(values, default=0) < -0.5
  ax.set_ylim(max(-0.5, min(values, default=0)) - 0.05, 1.05)
  ax.legend(fontsize=8)
  ax.set_title(f"linear probes ({result['split']}, n={result['n']})"
               + (", R² below -0.5 cut off" if clipped else ""))
  layers = np.arange(1, result["depth"] + 1)
  for i, n in enumerate(names):
    t = result["targets"][n]["r2"]
    color = f"C{i % 10}"
    ax2.plot(layers, t["trained_layers"], "-o", color=color, label=n, ms=3)
    ax2.plot(layers, t["random_layers"], "--x", color=color, lw=0.8, ms=3)
  ax2.axhline(0, color="k", lw=0.6)
  ax2.set_xlabel("layer (solid trained, dashed random)")
  ax2.set_ylabel("R²")
  ax2.set_ylim(-0.55, 1.05)
  ax2.set_xticks(layers)
  ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic.replacing(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "training run directory (config.json, checkpoints/)")
  flags.DEFINE_string("data", None, "dataset directory (default: the run's data_dir)")
  flags.DEFINE_string("split", "test", "split to probe; several comma-separated (val,test)")
  flags.DEFINE_string("raw", None, "raw directory with truth.json (default DATASET/../raw, "
                      "else the manifest's build source)")
  flags.DEFINE_string("out", None, "output directory (default RUN/probes)")
  flags.DEFINE_integer("seed", 0, "random encoder's init seed and the folds' shuffle seed")
  flags.DEFINE_string("step", "latest", "checkpoint: latest, best or a step number")
  flags.DEFINE_integer("folds", 5, "cross-validation folds (grouped by song)")


def main(argv):
  from absl import app, flags, logging
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  try:
    run(f.workdir, f.data, f.split, f.raw, f.out, f.seed, f.step, f.folds,
        log=lambda s: print(s, flush=True))
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"mpjax.analysis.probes: {e}") from None


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)
