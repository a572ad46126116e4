"""Linear probes: what has a run's audio encoder learnt that a linear read-out can recover?

    python -m mpjax.analysis.probes --workdir=RUN [--data=DATASET] [--split=all] [--raw=RAW]
        [--out=DIR] [--seed=0] [--step=latest] [--folds=5] [--curve_sizes=100,200,400,800]
        [--repeats=3]

The probe set: every clip of `--split` of DATASET (default the run's own dataset; `all` = the
union of its splits, train + val + test: the probes fit no model the run trained, so the run's
training clips are fair probe clips; one split or several comma-separated, e.g. `test`). Any
dataset data_prep built can be the probe set (`--data=DATA --raw=RAW`, e.g. a dedicated one:
`python -m data_prep.synthetic --out RAW --songs 1200 --build DATA`); the attribute targets need
its songs in RAW/truth.json. The output states the clip count and warns below 1,000 clips: on
the ~100-clip test split of the demo a 200-d ridge probe cannot tell a weak attribute from none.

For every clip (one centre crop, the run's own input settings and the fbank normalisation of the
run's training data) these representations are computed:
  trained   the run's AST encoder ('mp2', 'mp3' or 'ssl': all keep it under `encoder/...`)
  random    the same AST config, freshly initialised from --seed: what the architecture alone
            gives, the baseline that says whether training added anything
  fbank     mean and std over time of each mel bin of the same crop (2 * mel features)
  oracle    the rule-based audio features of RAW/truth.json (songs[i]['detect'] = {attribute:
            value}, measured by data_prep.synthetic on the same centre crop): what a read-out of
            features built to detect each attribute recovers, the ceiling the others are set
            against. Used when every song of the probe set has them (a value the rule could not
            measure is filled with its feature's mean); otherwise skipped with the reason
            ("no oracle features in truth.json").
For both encoders: the pooled embedding `(cls + dist) / 2` of the final tokens (AST.__call__),
and per layer the mean of the patch tokens after each block (layer L = after block L, 1-based;
the final LayerNorm belongs to the last layer only). The encoder runs alone: no region tokens
or region embedding. In an MP2/MP3 run with region CLS tokens the head reads the region tokens,
so the cls/dist outputs of the last block are never trained there; the per-layer patch means
are then the more telling numbers.

Targets: the planted attributes of the synthetic demo (RAW/truth.json 'attributes_u': tempo,
brightness, percussiveness, hook, loudness, mode (0 minor, 1 major)), every manifest label
('label/<name>', unknown rows dropped) and `mp2` (the target of the record's first region, in
vocabulary order, with an MP2 target). RAW defaults to DATASET/../raw, else the raw directory
the manifest says the dataset was built from; real data without truth.json gets only labels and
mp2.

Score (`probe_r2`): StandardScaler, standardised values clipped to +-5 (a near-constant feature
with one outlying song would otherwise blow up every prediction of the fold that holds it: seen on
a collapsed pooled embedding of the MP2 demo), RidgeCV (alpha from np.logspace(-3, 4, 15), chosen by
efficient leave-one-out inside each training fold, per target), K shuffled folds (seeded) grouped
by song (`stats.song_folds`: GroupKFold, so one song's clips never sit on both sides), and R² of
the out-of-fold predictions pooled over all rows (not the mean of per-fold R²s, which small folds
make noisy). Below 0 = worse than predicting the mean. Mode is 0/1: its accuracy is that of the
out-of-fold prediction thresholded at 0.5, beside the majority class's share.

Learning curves (the planted attributes): R² (mode: also accuracy) against the number of clips.
At each size of --curve_sizes below the probe set's clip count, --repeats draws of whole songs
(songs in a seeded random order, taken until the size is reached), each probed with the same
song-grouped K-fold CV; then the whole set once (the largest size). The encoders' line uses,
per attribute, the feature (pooled or layer L) with the best R² on the whole set (named in the
output). Reported per attribute: each representation's R² at the largest size and as a fraction
of the oracle's.

Outputs in --out (default RUN/probes): probes.json (every number, n, folds, seed, run, data,
split, step, encoder params loaded, the curves), probes.md (the tables, also printed),
probes.png (bars and per-layer R²), probes_curves.png (one panel per attribute, a line per
representation). Progress goes to the log. No collectives: every process would compute the same
numbers; only process 0 writes.
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
from mpjax.analysis import output, stats
from mpjax.models import ast as ast_lib

ATTRIBUTES = ("tempo", "brightness", "percussiveness", "hook", "loudness", "mode")
CLIP = 5.0  # standardised features are clipped to [-CLIP, CLIP] (module doc)
REPRESENTATIONS = ("trained", "random", "fbank")  # always there; ORACLE when truth.json has it
ORACLE = "oracle"
CURVE_REPRESENTATIONS = ("trained", "random", "fbank", ORACLE)
CURVE_SIZES = (100, 200, 400, 800)
ENOUGH_CLIPS = 1000  # below: the output warns that the probes have little power
NO_ORACLE = "no oracle features in truth.json"


# ------------------------------------------------------------------------------------------------
# The probe
# ------------------------------------------------------------------------------------------------


def probe_predict(features, target, groups=None, folds: int = 5, seed: int = 0) -> np.ndarray:
  """Out-of-fold ridge predictions of `target` [n] (or [n, k]: k targets, alpha per target) from
  `features` [n, d]; same shape as `target`.

  groups [n]: rows with the same group never straddle folds (`stats.song_folds`); None = plain
  shuffled KFold. Raises ValueError when the rows or groups are too few for `folds`, or a target is
  constant.
  """
  from sklearn.linear_model import RidgeCV
  from sklearn.model_selection import KFold, cross_val_predict
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import FunctionTransformer, StandardScaler
  import threadpoolctl

  x = np.asarray(features, np.float64)
  y = np.asarray(target, np.float64)
  if x.ndim != 2 or y.ndim not in (1, 2) or len(x) != len(y):
    raise ValueError(f"probe_r2: features must be [n, d] and target [n]; got {x.shape}, {y.shape}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("probe_r2: features or target hold NaN/Inf")
  if folds < 2:
    raise ValueError(f"probe_r2: folds={folds} must be >= 2")
  cols = y.reshape(len(y), -1)
  flat = np.flatnonzero(np.ptp(cols, axis=0) == 0)
  if len(flat):
    raise ValueError(f"probe_r2: the target is constant ({cols[0, flat[0]]:g}) over all {len(y)} "
                     "rows; R² is undefined")
  if groups is None:
    if len(y) < 2 * folds:
      raise ValueError(f"probe_r2: too few rows ({len(y)}) for {folds} folds (need >= {2 * folds})")
    cv = KFold(folds, shuffle=True, random_state=seed)
  else:
    groups = np.asarray(groups)
    if len(groups) != len(y):
      raise ValueError(f"probe_r2: groups has {len(groups)} rows, target {len(y)}")
    cv = stats.song_folds(groups, folds, seed)
  model = make_pipeline(StandardScaler(), FunctionTransformer(_clip),
                        RidgeCV(alphas=stats.ALPHAS, alpha_per_target=y.ndim == 2))
  # One BLAS thread: the matrices are small (d <= a few hundred), and on a busy machine a
  # spinning second OpenBLAS thread made each eigh ~30x slower (measured on the 2-core box).
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    return cross_val_predict(model, x, y, cv=cv).reshape(y.shape)


def probe_r2(features, target, groups=None, folds: int = 5, seed: int = 0) -> float:
  """Cross-validated R² of a ridge read-out of `target` [n] from `features` [n, d]: R² of the
  pooled out-of-fold predictions (`probe_predict`; module doc)."""
  from sklearn.metrics import r2_score
  pred = probe_predict(features, target, groups, folds, seed)
  return float(r2_score(np.asarray(target, np.float64), pred))


def _r2_columns(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """R² per column of [n, k]."""
  resid = ((y - pred) ** 2).sum(0)
  total = ((y - y.mean(0)) ** 2).sum(0)
  return 1.0 - resid / total


def _accuracy(y, pred) -> float:
  """Share of rows whose prediction falls on the same side of 0.5 as the 0/1 target."""
  return float(np.mean((np.asarray(pred) >= 0.5) == (np.asarray(y) >= 0.5)))


def _clip(x):
  return np.clip(x, -CLIP, CLIP)


# ------------------------------------------------------------------------------------------------
# Learning curves
# ------------------------------------------------------------------------------------------------


def subsample_songs(groups, size: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted row indices of whole groups (songs), taken in a random order until at least `size`
  rows are in (every row of `groups` when it has no more)."""
  groups = np.asarray(groups)
  uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
  order = rng.permutation(len(uniq))
  take = np.searchsorted(np.cumsum(counts[order]), size) + 1
  chosen = np.zeros(len(uniq), bool)
  chosen[order[:take]] = True
  return np.flatnonzero(chosen[inverse])


def learning_curve(features: dict, targets, names, groups, sizes=CURVE_SIZES, repeats: int = 3,
                   folds: int = 5, seed: int = 0, binary=("mode",), log=None) -> dict:
  """R² of each representation for each target against the number of rows (clips).

  features: representation -> [n, d], or -> {target name: [n, d]} (a per-target feature, e.g.
  an encoder's best layer). targets [n, k] with column names `names`; groups [n] (songs).
  At each size in `sizes` below n: `repeats` draws of whole songs (`subsample_songs`, seeded by
  seed, size and repeat), the same draw for every representation; then all n rows once. Every
  probe is song-grouped `folds`-fold CV (fold seed = seed). Sizes of n or more are dropped (n
  stands for them); sizes whose draws hold fewer than 2 * folds songs are dropped with a note.
  Targets in `binary` also get the accuracy of the 0/1 prediction (`_accuracy`).
  Returns {"sizes", "n" (mean rows per size), "songs" (mean), "repeats" (per size), "dropped",
  "r2": {target: {rep: {"mean", "std", "runs"}}}, "accuracy": {target: {rep: {...}, "majority"}}}.
  """
  say = log or (lambda *_: None)
  y = np.asarray(targets, np.float64).reshape(len(groups), -1)
  names = list(names)
  groups = np.asarray(groups)
  n = len(groups)
  binary = [t for t in names if t in binary]
  plan, dropped = [], []
  for size in sorted({int(s) for s in sizes}):
    if size >= n:
      dropped.append(f"{size}: >= the {n} clips there are (the whole set stands for it)")
      continue
    draws = [subsample_songs(groups, size, np.random.default_rng([seed, size, r]))
             for r in range(repeats)]
    few = min(len(np.unique(groups[d])) for d in draws)
    if few < 2 * folds:
      dropped.append(f"{size}: a draw holds {few} songs, fewer than 2 x {folds} folds")
      continue
    plan.append((size, draws))
  plan.append((n, [np.arange(n)]))
  runs = {t: {rep: [] for rep in features} for t in names}
  accs = {t: {rep: [] for rep in features} for t in binary}
  t0 = time.time()
  for i, (size, draws) in enumerate(plan):
    for t in names:
      for rep in features:
        runs[t][rep].append([])
      if t in accs:
        for rep in features:
          accs[t][rep].append([])
    for r, rows in enumerate(draws):
      for rep, x in features.items():
        # Targets sharing a feature matrix are fitted together (one ridge, alpha per target).
        by_x = {}
        for j, t in enumerate(names):
          xt = x[t] if isinstance(x, dict) else x
          by_x.setdefault(id(xt), (xt, []))[1].append(j)
        for xt, cols in by_x.values():
          pred = probe_predict(xt[rows], y[rows][:, cols], groups[rows], folds, seed)
          r2 = _r2_columns(y[rows][:, cols], pred)
          for c, j in enumerate(cols):
            runs[names[j]][rep][-1].append(float(r2[c]))
            if names[j] in accs:
              accs[names[j]][rep][-1].append(_accuracy(y[rows, j], pred[:, c]))
      say(f"[probes] curve: size {size} ({len(rows)} clips, {len(np.unique(groups[rows]))} songs)"
          f", draw {r + 1}/{len(draws)}; {i + 1}/{len(plan)} sizes "
          f"({time.time() - t0:.1f} s)")

  def summary(per_size):
    return {"mean": [float(np.mean(v)) for v in per_size],
            "std": [float(np.std(v)) for v in per_size], "runs": per_size}

  out = {"sizes": [s for s, _ in plan], "requested": sorted({int(s) for s in sizes}),
         "n": [float(np.mean([len(d) for d in draws])) for _, draws in plan],
         "songs": [float(np.mean([len(np.unique(groups[d])) for d in draws])) for _, draws in plan],
         "repeats": [len(draws) for _, draws in plan], "folds": folds, "seed": seed,
         "dropped": dropped,
         "r2": {t: {rep: summary(v) for rep, v in runs[t].items()} for t in names},
         "accuracy": {}}
  for t in binary:
    j = names.index(t)
    out["accuracy"][t] = {rep: summary(v) for rep, v in accs[t].items()}
    share = float(np.mean(y[:, j] >= 0.5))
    out["accuracy"][t]["majority"] = max(share, 1 - share)
  return out


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


def oracle_features(raw: str | None, song_ids) -> tuple[np.ndarray | None, dict]:
  """The oracle representation of rows whose songs are `song_ids`: [n, k] from each song's
  truth.json 'detect' {attribute: value} (in ATTRIBUTES order, then any other names), or None
  and why. A value that is None / non-finite (a feature the rule could not measure on that
  crop) is filled with its feature's mean over the songs probed (counted in 'imputed'); a song
  without 'detect' at all, or a feature no song has, skips the oracle. The second value:
  {"available", "features", "message", "imputed", "detectability" (truth.json's own summary of
  how well each detect feature measures its attribute, or None)}."""
  info = {"available": False, "features": [], "message": NO_ORACLE, "imputed": 0,
          "detectability": None}
  if not raw:
    info["message"] = "no truth.json (no raw directory), so no oracle features"
    return None, info
  with open(os.path.join(raw, "truth.json")) as f:
    truth = json.load(f)
  info["detectability"] = truth.get("detectability")
  detect = {s["song_id"]: s["detect"] for s in truth.get("songs", [])
            if isinstance(s.get("detect"), dict) and s["detect"]}
  if not detect:
    return None, info
  wanted = sorted(set(song_ids))
  lacking = [s for s in wanted if s not in detect]
  if lacking:
    info["message"] = (f"{NO_ORACLE} for {len(lacking)} of the {len(wanted)} songs probed "
                       f"(e.g. {lacking[0]}): oracle skipped")
    return None, info
  names = sorted({k for s in wanted for k in detect[s]},
                 key=lambda k: (ATTRIBUTES.index(k) if k in ATTRIBUTES else len(ATTRIBUTES), k))
  per_song = np.array([[_number(detect[s].get(k)) for k in names] for s in wanted], np.float64)
  empty = [k for j, k in enumerate(names) if not np.isfinite(per_song[:, j]).any()]
  if empty:
    info["message"] = (f"truth.json's detect feature(s) {empty} hold no value for any song "
                       "probed: oracle skipped")
    return None, info
  missing = ~np.isfinite(per_song)
  per_song = np.where(missing, np.nanmean(per_song, axis=0), per_song)
  row = {s: i for i, s in enumerate(wanted)}
  x = per_song[[row[s] for s in song_ids]]
  info.update(available=True, features=names, message=None, imputed=int(missing.sum()))
  return x, info


def _number(v) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


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


def _splits(split: str, manifest: dict) -> list[str]:
  have = list(manifest["shards"])
  if split == "all":
    order = ("train", "val", "test")
    return [s for s in order if s in have] + sorted(s for s in have if s not in order)
  return [s for s in split.split(",") if s]


def _probe_block(features: dict, y: np.ndarray, groups, folds: int, seed: int) -> dict:
  """representation -> (R² [k], out-of-fold predictions [n, k]) for targets y [n, k]."""
  out = {}
  for rep, x in features.items():
    pred = probe_predict(x, y, groups, folds, seed)
    out[rep] = (_r2_columns(y, pred), pred)
  return out


def probe_targets(features: dict, targets: dict, song_ids, depth: int, folds: int = 5,
                  seed: int = 0, log=None) -> tuple[dict, dict]:
  """The whole-set probes: (results {target: entry}, skipped {target: why}).

  features: 'trained', 'random', 'fbank', 'trained/L1'..'random/L{depth}', optional 'oracle'
  -> [n, d]; targets: name -> (values [n], NaN = unknown, kind). The planted attributes are
  fitted together (one ridge per representation, alpha per attribute) on the rows where all
  are known; every other target alone on its known rows.
  """
  say = log or (lambda *_: None)
  song_ids = np.asarray(song_ids)
  blocks, skipped = [], {}
  attrs = [t for t, (_, kind) in targets.items() if kind == "attribute"]
  if attrs:
    ys = np.stack([targets[a][0] for a in attrs], 1)
    known = np.isfinite(ys).all(1)
    flat = [a for j, a in enumerate(attrs) if known.any() and np.ptp(ys[known, j]) == 0]
    for a in flat:
      skipped[a] = (f"{int(known.sum())} known rows: the target is constant "
                    f"({ys[known, attrs.index(a)][0]:g})")
    keep = [a for a in attrs if a not in flat]
    if keep:
      blocks.append((keep, ys[:, [attrs.index(a) for a in keep]], known))
  for t, (y, kind) in targets.items():
    if kind != "attribute":
      blocks.append(([t], y[:, None], np.isfinite(y)))
  results = {}
  for names, y, known in blocks:
    if not known.any():
      for t in names:
        skipped[t] = "no known values (e.g. an audio-only dataset has no MP2 targets)"
        say(f"[probes] skipped {t}: {skipped[t]}")
      continue
    try:
      r2 = _probe_block({rep: x[known] for rep, x in features.items()}, y[known],
                        song_ids[known], folds, seed)
    except ValueError as e:
      for t in names:
        skipped[t] = f"{int(known.sum())} known rows: {e}"
        say(f"[probes] skipped {t}: {skipped[t]}")
      continue
    for j, t in enumerate(names):
      main = [rep for rep in (*REPRESENTATIONS, ORACLE) if rep in r2]
      entry = {"kind": targets[t][1], "n": int(known.sum()),
               "songs": len(np.unique(song_ids[known])),
               "r2": {rep: float(r2[rep][0][j]) for rep in main}}
      acc = {}
      for enc in ("trained", "random"):
        per = [float(r2[f"{enc}/L{i + 1}"][0][j]) for i in range(depth)]
        best = int(np.argmax(per)) + 1
        entry["r2"][f"{enc}_layers"] = per
        entry["best_layer"] = {**entry.get("best_layer", {}), enc: best}
        entry["r2"][f"{enc}_best_layer"] = max(per)
        acc[f"{enc}_best_layer"] = f"{enc}/L{best}"
      if t == "mode" or targets[t][1] == "label":
        yk = y[known][:, j]
        if set(np.unique(yk)) <= {0.0, 1.0}:
          entry["accuracy"] = {rep: _accuracy(yk, r2[src][1][:, j])
                               for rep, src in [*((m, m) for m in main), *acc.items()]}
          share = float(np.mean(yk >= 0.5))
          entry["accuracy"]["majority"] = max(share, 1 - share)
      results[t] = entry
    say(f"[probes] probed {', '.join(names)} on {int(known.sum())} clips")
  return results, skipped


def curve_features(features: dict, results: dict, attrs) -> tuple[dict, dict]:
  """The learning curves' representations: 'trained' / 'random' = per attribute the encoder
  feature (pooled or layer L) with the best whole-set R²; 'fbank'; 'oracle' when present.
  Returns (representation -> [n, d] or {attribute: [n, d]}, {attribute: {enc: feature name}})."""
  out, chosen = {}, {a: {} for a in attrs}
  for enc in ("trained", "random"):
    per = {}
    for a in attrs:
      r2 = results[a]["r2"]
      cands = {"pooled": r2[enc], **{f"L{i + 1}": v for i, v in enumerate(r2[f"{enc}_layers"])}}
      best = max(cands, key=cands.get)
      chosen[a][enc] = best
      per[a] = features[enc if best == "pooled" else f"{enc}/{best}"]
    out[enc] = per
  out["fbank"] = features["fbank"]
  if ORACLE in features:
    out[ORACLE] = features[ORACLE]
  return out, chosen


def at_largest(curve: dict) -> dict:
  """Per attribute and representation: R² on the whole set, as a fraction of the oracle's R²
  (None without an oracle or when its R² <= 0.05), and for mode the accuracy."""
  out = {}
  for a, reps in curve["r2"].items():
    oracle = reps.get(ORACLE, {}).get("mean", [None])[-1]
    out[a] = {}
    for rep, s in reps.items():
      r2 = s["mean"][-1]
      out[a][rep] = {"r2": r2,
                     "of_oracle": r2 / oracle if oracle is not None and oracle > 0.05 else None}
      if a in curve["accuracy"]:
        out[a][rep]["accuracy"] = curve["accuracy"][a][rep]["mean"][-1]
    if a in curve["accuracy"]:
      out[a]["majority_accuracy"] = curve["accuracy"][a]["majority"]
  return out


def run(workdir: str, data_dir: str | None = None, split: str = "all", raw: str | None = None,
        out: str | None = None, seed: int = 0, step: str = "latest", folds: int = 5,
        log=print, curve_sizes=CURVE_SIZES, repeats: int = 3) -> dict:
  """Probes the run's encoder on `split` of `data_dir` ('all': every split; or comma-separated
  splits); writes OUT/probes.json, .md, .png, probes_curves.png on process 0 and returns what
  probes.json holds. curve_sizes empty: no learning curves."""
  from mpjax import export as export_lib

  config = export_lib.run_config(workdir)
  data_dir = data_dir or config.get("data_dir")
  if not data_dir:
    raise ValueError(f"{workdir}/config.json has no data_dir; pass --data")
  manifest = records.load_manifest(data_dir)
  splits = _splits(split, manifest)
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
                     f">= {2 * folds} songs); use a larger split (e.g. --split=all) or fewer "
                     "--folds")
  if songs is not None and not all_songs & songs.keys():
    raise ValueError(f"{raw}/truth.json names none of the songs of {data_dir} ({split}): "
                     "another dataset's truth? pass the right --raw")

  trained, random, report = load_encoders(workdir, config, step_n, seed)
  n_records = sum(map(len, split_keys.values()))
  say(f"[probes] {workdir} step {step_n}: {len(report['loaded'])} encoder parameters loaded; "
      f"probe set {data_dir} splits {','.join(splits)}: {n_records} records of "
      f"{len(all_songs)} songs; truth: {raw or 'none (no attribute targets)'}")
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
  oracle_x, oracle = oracle_features(raw, [k[0] for k in keys])
  if oracle_x is not None:
    features[ORACLE] = oracle_x
  say(f"[probes] oracle: {'features ' + ', '.join(oracle['features']) if oracle['available'] else oracle['message']}")
  if n < ENOUGH_CLIPS:
    say(f"[probes] warning: {n} clips, fewer than {ENOUGH_CLIPS}: the probes have little power "
        "(pass a larger probe set with --data=DATA --raw=RAW)")

  targets = _targets(rows, keys, manifest, songs)
  results, skipped = probe_targets(features, targets, song_ids, depth, folds, seed, log=say)

  curve, largest, chosen = None, None, None
  attrs = [a for a in ATTRIBUTES if a in results]
  if attrs and curve_sizes:
    ys = np.stack([targets[a][0] for a in attrs], 1)
    known = np.isfinite(ys).all(1)
    reps, chosen = curve_features(features, results, attrs)
    reps = {rep: ({a: x[known] for a, x in v.items()} if isinstance(v, dict) else v[known])
            for rep, v in reps.items()}
    say(f"[probes] learning curves: sizes {list(curve_sizes)} + all {int(known.sum())} clips, "
        f"{repeats} draws each, {len(reps)} representations")
    curve = learning_curve(reps, ys[known], attrs, song_ids[known], curve_sizes, repeats,
                           folds, seed, log=say)
    curve["features"] = chosen
    largest = at_largest(curve)

  result = {
      "run": os.path.abspath(workdir), "task": config.get("task"), "step": step_n,
      "data_dir": os.path.abspath(data_dir), "split": split, "splits": splits,
      "raw": raw and os.path.abspath(raw),
      "n": n, "clips": n, "songs": n_songs, "enough_clips": n >= ENOUGH_CLIPS,
      "folds": folds, "seed": seed, "depth": depth,
      "encoder_params_loaded": len(report["loaded"]),
      "dims": {rep: int(features[rep].shape[1]) for rep in (*REPRESENTATIONS, ORACLE)
               if rep in features},
      "probe": ("StandardScaler, clip +-5, RidgeCV(alphas=logspace(-3, 4, 15), leave-one-out, "
                f"per target), {folds} shuffled folds grouped by song (seed {seed}), R² of the "
                "pooled out-of-fold predictions; layers 1-based (after block L)"),
      "oracle": oracle,
      "targets": results, "skipped": skipped,
      "curve": curve, "at_largest": largest,
  }
  if main:
    from mpjax import atomic
    table = markdown(result)
    atomic.write_json(os.path.join(out, "probes.json"), result, indent=1)
    atomic.write_text(os.path.join(out, "probes.md"), table)
    plot(result, os.path.join(out, "probes.png"))
    if curve is not None:
      plot_curves(result, os.path.join(out, "probes_curves.png"))
    say(table)
    say(f"[probes] written to {out}")
  return result


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _pm(s, i):
  """'mean ± sd' over the draws of a learning-curve size (the mean alone for one draw)."""
  return output.num(s["mean"][i]) + (f" ± {s['std'][i]:.3f}" if len(s["runs"][i]) > 1 else "")


def markdown(result: dict) -> str:
  """The headline table (targets x representations), the per-layer table, and with curves the
  learning-curve and largest-size tables."""
  r = result
  has_oracle = any(ORACLE in t["r2"] for t in r["targets"].values())
  oracle = r.get("oracle") or {}
  lines = [f"# Linear probes: {r['run']} (step {r['step']})", "",
           f"Probe set: {r['data_dir']}, splits {','.join(r.get('splits', [r['split']]))}: "
           f"**{r['n']} clips**, {r['songs']} songs. {r['probe']}."]
  if r["n"] < ENOUGH_CLIPS:
    lines += ["", f"**Fewer than {ENOUGH_CLIPS:,} clips**: a weak attribute and none look alike "
              "at this size; read the learning curves, or probe a larger set (`--data=DATA "
              "--raw=RAW`)."]
  lines += ["", "Oracle: " + (f"truth.json's detect features ({', '.join(oracle['features'])}"
                              + (f"; {oracle['imputed']} unmeasured values filled with their "
                                 "feature's mean" if oracle.get("imputed") else "") + ")"
                              if oracle.get("available") else oracle.get("message", NO_ORACLE)
                              ) + "."]
  det = oracle.get("detectability")
  if isinstance(det, dict) and det:
    lines += ["", "truth.json's detectability (each detect feature alone against its attribute, "
              "on truth.json's songs): " + "; ".join(
                  f"{a}: {d.get('feature', '?')} R² {output.num(d.get('r2'))}" +
                  (f", accuracy {output.num(d['accuracy'])}" if d.get("accuracy") is not None
                   else "") +
                  (f", n {d['n']}" if "n" in d else "")
                  for a, d in det.items() if isinstance(d, dict) and "feature" in d) + "."]
  rows = []
  for name, t in r["targets"].items():
    s, best = t["r2"], t["best_layer"]
    ratio = s["trained"] / s["fbank"] if s["fbank"] > 0.05 else None
    rows.append([name, t["n"], output.num(s["trained"]),
                 f"{output.num(s['trained_best_layer'])} (L{best['trained']})",
                 output.num(s["random"]),
                 f"{output.num(s['random_best_layer'])} (L{best['random']})",
                 output.num(s["fbank"])] + ([output.num(s.get(ORACLE))] if has_oracle else [])
                + [output.num(ratio)])
  lines += [""] + output.table(
      ["target", "n", "trained (pooled)", "trained best layer", "random (pooled)",
       "random best layer", "fbank stats"] + (["oracle"] if has_oracle else [])
      + ["trained/fbank"], rows)
  lines += ["", "trained/fbank: pooled trained R² over fbank-stats R² (– when fbank R² <= 0.05: "
            "a ratio over a near-zero or negative R² says nothing)."]
  accs = {name: t["accuracy"] for name, t in r["targets"].items() if "accuracy" in t}
  for name, a in accs.items():
    lines += ["", f"{name} accuracy (out-of-fold prediction >= 0.5; majority class "
              f"{a['majority']:.3f}): " + ", ".join(f"{k} {v:.3f}" for k, v in a.items()
                                                     if k != "majority")]
  lines += ["", "Per layer, trained / random:", ""] + output.table(
      ["target"] + [f"L{i + 1}" for i in range(r["depth"])],
      [[name] + [f"{output.num(a)} / {output.num(b)}"
                 for a, b in zip(t["r2"]["trained_layers"], t["r2"]["random_layers"])]
       for name, t in r["targets"].items()])
  if r["skipped"]:
    lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in r["skipped"].items())]
  c = r.get("curve")
  if c:
    sizes = c["sizes"]
    head = [f"{int(round(n))}" + (" (all)" if i == len(sizes) - 1 else "")
            for i, n in enumerate(c["n"])]
    lines += ["", "## Learning curves", "",
              f"R² (mean ± sd over {max(c['repeats'])} draws of whole songs; the whole set once) "
              f"against the clips probed (mean clips per draw in the header; sizes asked "
              f"{c['requested']}), song-grouped {c['folds']}-fold CV at each size. trained / "
              "random: per attribute the encoder feature with the best whole-set R², in brackets."]
    if c["dropped"]:
      lines += ["", "Sizes left out: " + "; ".join(c["dropped"]) + "."]
    rows = [[a, rep + (f" ({feat})" if (feat := c["features"][a].get(rep)) else "")]
            + [_pm(s, i) for i in range(len(sizes))]
            for a, reps in c["r2"].items() for rep, s in reps.items()]
    rows += [[f"{a} accuracy (majority {reps['majority']:.3f})", rep]
             + [_pm(s, i) for i in range(len(sizes))]
             for a, reps in c["accuracy"].items() for rep, s in reps.items() if rep != "majority"]
    lines += [""] + output.table(["attribute", "representation"] + head, rows)
    big = r["at_largest"]
    reps = [rep for rep in CURVE_REPRESENTATIONS if any(rep in v for v in big.values())]
    lines += ["", f"## At the largest size ({r['n']} clips), against the oracle", "",
              "R² of each representation and, in brackets, its fraction of the oracle's R² (– "
              "without oracle features or when the oracle's R² <= 0.05)" +
              ("" if has_oracle else f"; {oracle.get('message', NO_ORACLE)}") + ".", ""]
    rows = []
    for a, v in big.items():
      rows.append([a] + [f"{output.num(v[rep]['r2'])} ({output.num(v[rep]['of_oracle'])})"
                         for rep in reps])
      if "majority_accuracy" in v:
        rows.append([f"{a} accuracy (majority {v['majority_accuracy']:.3f})"]
                    + [output.num(v[rep]["accuracy"]) for rep in reps])
    lines += output.table(["attribute"] + reps, rows)
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str):
  """Grouped bars per target (left) and R² per layer (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(result["targets"])
  bars = [("trained", "trained (pooled)"), ("trained_best_layer", "trained best layer"),
          ("random", "random (pooled)"), ("fbank", "fbank stats")]
  if any(ORACLE in t["r2"] for t in result["targets"].values()):
    bars.append((ORACLE, "oracle (truth.json detect)"))
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(names)) + 5, 4.5),
                                gridspec_kw={"width_ratios": [max(2, len(names)), 3]})
  x = np.arange(len(names))
  w = 0.8 / len(bars)
  for i, (key, label) in enumerate(bars):
    ax.bar(x + (i - (len(bars) - 1) / 2) * w,
           [result["targets"][n]["r2"].get(key, np.nan) for n in names], w, label=label)
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xticks(x, names, rotation=30, ha="right")
  ax.set_ylabel("cross-validated R²")
  values = [v for n in names for k, _ in bars
            if np.isfinite(v := result["targets"][n]["r2"].get(k, np.nan))]
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
  output.save_figure(fig, path)


def plot_curves(result: dict, path: str):
  """One panel per attribute (R² against clips probed, a line per representation, ± sd over the
  draws), and one for the accuracy of each binary attribute (mode)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  c = result["curve"]
  panels = [(a, "r2") for a in c["r2"]] + [(a, "accuracy") for a in c["accuracy"]]
  cols = min(4, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
  n = np.asarray(c["n"])
  for ax, (a, what) in zip(axes.flat, panels):
    reps = c[what][a]
    for i, rep in enumerate(CURVE_REPRESENTATIONS):
      if rep not in reps:
        continue
      feat = c["features"][a].get(rep)
      ax.errorbar(n, reps[rep]["mean"], yerr=reps[rep]["std"], color=f"C{i}", marker="o", ms=3,
                  capsize=2, label=rep + (f" ({feat})" if feat else ""))
    if what == "accuracy":
      ax.axhline(reps["majority"], color="grey", ls=":", lw=1, label="majority class")
      ax.set_ylim(0.4, 1.02)
      ax.set_title(f"{a}: accuracy", fontsize=10)
    else:
      ax.axhline(0, color="k", lw=0.6)
      lo = min(min(s["mean"]) for s in reps.values())
      ax.set_ylim(max(-0.5, lo) - 0.05, 1.05)
      ax.set_title(f"{a}: R²", fontsize=10)
    ax.set_xscale("log")
    ax.set_xticks(n, [str(int(round(v))) for v in n], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("clips probed", fontsize=8)
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(f"probe learning curves: {os.path.basename(result['run'])} step {result['step']}, "
               f"song-grouped {c['folds']}-fold CV", fontsize=10)
  fig.tight_layout()
  output.save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "training run directory (config.json, checkpoints/)")
  flags.DEFINE_string("data", None, "probe set: a dataset directory (default: the run's data_dir)")
  flags.DEFINE_string("split", "all", "splits to probe: all (the union of every split), one, or "
                      "several comma-separated (val,test)")
  flags.DEFINE_string("raw", None, "raw directory with truth.json (default DATASET/../raw, "
                      "else the manifest's build source)")
  flags.DEFINE_string("out", None, "output directory (default RUN/probes)")
  flags.DEFINE_integer("seed", 0, "random encoder's init seed, the folds' and draws' seed")
  flags.DEFINE_string("step", "latest", "checkpoint: latest, best or a step number")
  flags.DEFINE_integer("folds", 5, "cross-validation folds (grouped by song)")
  flags.DEFINE_list("curve_sizes", [str(s) for s in CURVE_SIZES],
                    "learning-curve sizes in clips (the whole set is added); empty: no curves")
  flags.DEFINE_integer("repeats", 3, "learning curves: draws of songs per size")


def main(argv):
  from absl import app, flags, logging
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  try:
    sizes = [int(s) for s in f.curve_sizes if s.strip()]
  except ValueError:
    raise app.UsageError(f"--curve_sizes={','.join(f.curve_sizes)}: integers, comma-separated")
  try:
    run(f.workdir, f.data, f.split, f.raw, f.out, f.seed, f.step, f.folds,
        log=lambda s: print(s, flush=True), curve_sizes=sizes, repeats=f.repeats)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"mpjax.analysis.probes: {e}") from None


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)
