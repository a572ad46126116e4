"""Regions: which share taste? The run's learned region vectors against the data and the truth.

    from mpjax.analysis import regions, rows
    pairs = rows.load(data_dir, "train,val,test")
    result = regions.run(workdir, pairs, raw, outdir)      # workdir=None: data and truth only

Three region x region similarity matrices, in the order of the dataset's region codes:
  learned   cosine similarity of the rows of the checkpoint's `regions/table` [R, D] (the region
            CLS tokens or embeddings, in the manifest's "regions" order). An MP3 demo run also
            has its MP2 encoder run at WORKDIR/mp2: its table gives `learned_mp2`.
  curve     the data's own taste similarity, model free. Per (song, region) a decay rate =
            minus the least-squares slope of the log1p weekly streams over chart steps, fitted on
            the first chart run's decline (`decline_window`): from the end of any initial climb
            to the week before the first re-rise of more than RISE_TOL (0.2) above the lowest
            value so far, or to the first week off the chart; rows with >= 3 such steps; a song
            with several records in a region keeps the longest-observed one. Then per pair of
            regions the Pearson correlation of the decay rates over the songs with one in both
            (NaN below `min_songs` shared songs). Two regions that like the same songs keep the
            same songs longest, so their decays correlate.
            Why the window: a second wave (the synthetic TikTok wave, a real viral comeback)
            lifts a song in every region in the same weeks; fitted over all observed steps
            (rise_tol=None) it flattens the slope everywhere at once, a shared component that
            pushes every correlation up (tests/test_region_similarity.py measures both). Songs
            that fall off a chart within 2 weeks drop out (censoring): fewer shared songs.
  planted   (synthetic data only) cosine similarity of the regions' preference weights w_r in
            RAW/truth.json. The planted decay is d = d0_r exp(-w_r . x_s) over standardised
            audio attributes x_s, so for roughly independent attributes the correlation of two
            regions' appeal across songs is exactly this cosine.

Agreement between two matrices: a Mantel test (`mantel`): Pearson r between their off-diagonal
upper-triangle entries (pairs with a NaN left out), one-sided p for a positive association by
relabelling the regions of one matrix (rows and columns together). With R <= 7 regions all R!
relabellings are enumerated (exact), else `permutations` random ones, p = (1 + #{r* >= r}) /
(1 + permutations). Few regions mean few pairs: R = 4 gives 6 pairs and 24 relabellings, so p
can never fall below 1/24 ~ 0.042 and a "significant" result needs the one best ordering.

Outputs of `run` in OUTDIR: regions.json (every matrix, codes, shared-song counts, Mantel r, p,
n_pairs, steps, sources), regions.md (a "## Regions: which share taste" section: matrix tables,
Mantel results, a plain-language verdict, the figures), regions_heatmap.png (the matrices side
by side) and regions_dendrogram.png (average-linkage clustering on 1 - similarity).
"""
from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np

from mpjax.analysis import output

EXACT_MAX_REGIONS = 7  # 7! = 5040 relabellings: cheap to enumerate; 8! = 40320 is not needed
MIN_STEPS = 3  # observed chart steps for a slope (two points always fit a line exactly)
# log1p rise that ends (or, at the start, extends) a decline: weekly noise is ~0.06-0.1 there.
RISE_TOL = 0.2
ALPHA = 0.05  # the verdict's significance level

JSON_NAME = "regions.json"
MD_NAME = "regions.md"
HEATMAP_NAME = "regions_heatmap.png"
DENDROGRAM_NAME = "regions_dendrogram.png"


# ------------------------------------------------------------------------------------------------
# The three similarities
# ------------------------------------------------------------------------------------------------


def learned_vectors(workdir: str, step="latest") -> dict:
  """The run's learned region vectors: codes, table [R, D], region_mode, step (and task, workdir).

  step: "latest", "best" or a kept step number (export.choose_step). Raises ValueError when the
  run has no region vectors (region_mode "none", or no `regions/table` in the checkpoint) or the
  table's rows do not match the dataset's region codes.
  """
  from mpjax import checkpoint, export, records

  config = export.run_config(workdir)
  mode = config.get("region_mode")
  if mode == "none":
    raise ValueError(f"{workdir}: region_mode is 'none' (the ablation), so the run has no "
                     "learned region vectors to compare")
  step_n, _ = export.choose_step(workdir, str(step), config)
  params = checkpoint.read_checkpoint_params(os.path.join(workdir, "checkpoints"), step=step_n)
  if "regions/table" not in params:
    raise ValueError(f"{workdir}/checkpoints step {step_n}: no regions/table parameter "
                     f"(region_mode {mode!r}); the run has no learned region vectors")
  table = np.asarray(params["regions/table"], np.float64)
  data_dir = config.get("data_dir")
  if not data_dir:
    raise ValueError(f"{workdir}/config.json has no data_dir: cannot name the table's regions")
  codes = list(records.load_manifest(data_dir)["regions"])
  if table.ndim != 2 or table.shape[0] != len(codes):
    raise ValueError(f"{workdir} step {step_n}: regions/table has shape {table.shape} but "
                     f"{data_dir} has {len(codes)} regions {codes}")
  return {"codes": codes, "table": table, "region_mode": mode, "step": int(step_n),
          "task": config.get("task"), "workdir": os.path.abspath(workdir)}


def cosine_similarity(v) -> np.ndarray:
  """[R, R] cosine similarity of the rows of `v` [R, D] (diagonal exactly 1)."""
  v = np.asarray(v, np.float64)
  if v.ndim != 2 or len(v) < 1:
    raise ValueError(f"cosine_similarity: need vectors [R, D], got shape {v.shape}")
  norm = np.linalg.norm(v, axis=1)
  if not np.all(np.isfinite(v)):
    raise ValueError("cosine_similarity: the vectors hold NaN or inf")
  if np.any(norm == 0):
    raise ValueError(f"cosine_similarity: row(s) {np.flatnonzero(norm == 0).tolist()} are zero "
                     "vectors (no direction)")
  u = v / norm[:, None]
  sim = np.clip(u @ u.T, -1.0, 1.0)
  np.fill_diagonal(sim, 1.0)
  return sim


def planted_similarity(raw_dir: str | None, codes) -> np.ndarray | None:
  """[R, R] cosine similarity of the planted preference weights of `codes` (RAW/truth.json
  "regions" -> code -> "prefs"); None when there is no truth.json (real data)."""
  if not raw_dir or not os.path.exists(os.path.join(raw_dir, "truth.json")):
    return None
  with open(os.path.join(raw_dir, "truth.json")) as f:
    planted = json.load(f).get("regions", {})
  codes = [str(c) for c in codes]
  missing = [c for c in codes if c not in planted or "prefs" not in planted[c]]
  if missing:
    raise ValueError(f"{raw_dir}/truth.json has no planted prefs for region(s) {missing} "
                     f"(it has {sorted(planted)}): another dataset's truth?")
  attrs = sorted({a for c in codes for a in planted[c]["prefs"]})
  lacking = {c: [a for a in attrs if a not in planted[c]["prefs"]] for c in codes}
  lacking = {c: a for c, a in lacking.items() if a}
  if lacking:
    raise ValueError(f"{raw_dir}/truth.json: prefs lack attributes {lacking}")
  return cosine_similarity([[float(planted[c]["prefs"][a]) for a in attrs] for c in codes])


def decline_window(series, mask, rise_tol: float | None = RISE_TOL) -> np.ndarray:
  """bool [N, H]: the steps a row's decay is fitted on (module doc). rise_tol None: every
  observed step; else the first chart run's decline, from the end of any initial climb (steps
  rising > rise_tol) to the first week more than rise_tol above the lowest value so far."""
  y = np.asarray(series, np.float64)
  obs = np.asarray(mask, bool) & np.isfinite(y)
  if rise_tol is None:
    return obs
  if rise_tol <= 0:
    raise ValueError(f"rise_tol={rise_tol}: must be > 0 (week-to-week noise is ~0.1) or None")
  run = np.cumprod(obs, axis=1).astype(bool)  # up to the first week off the chart
  yr = np.where(run, y, -np.inf)
  climbing = run[:, 1:] & (yr[:, 1:] > yr[:, :-1] + rise_tol)
  start = np.cumprod(climbing, axis=1).sum(1)  # the peak that ends the initial climb
  after = run & (np.arange(y.shape[1])[None] >= start[:, None])
  low = np.minimum.accumulate(np.where(after, y, np.inf), axis=1)
  rerise = after & (y > low + rise_tol)
  return after & (np.cumsum(rerise, axis=1) == 0)


def decay_rates(pairs: dict, rise_tol: float | None = RISE_TOL) -> tuple[np.ndarray, np.ndarray]:
  """(songs [S], decay [S, R]): minus the least-squares slope of each (song, region)'s log1p
  streams over chart steps in its `decline_window`; NaN where that holds < MIN_STEPS steps."""
  need = [k for k in ("song", "region", "series", "mask", "regions") if k not in pairs]
  if need:
    raise ValueError(f"pairs lacks {need}: pass the dict of mpjax.analysis.rows.load")
  y = np.asarray(pairs["series"], np.float64)
  obs = decline_window(y, pairs["mask"], rise_tol)
  region = np.asarray(pairs["region"], np.int64)
  n_regions = len(pairs["regions"])
  if len(y) and (region.min() < 0 or region.max() >= n_regions):
    raise ValueError(f"pairs: region ids outside 0..{n_regions - 1} (codes {pairs['regions']})")
  k = np.arange(y.shape[1], dtype=np.float64)
  w = obs.astype(np.float64)
  n = w.sum(1)
  safe_n = np.maximum(n, 1.0)
  k_bar = (w * k).sum(1) / safe_n
  y0 = np.where(obs, y, 0.0)
  y_bar = y0.sum(1) / safe_n
  dk = w * (k - k_bar[:, None])
  den = (dk * dk).sum(1)
  slope = (dk * (y0 - y_bar[:, None])).sum(1) / np.where(den > 0, den, 1.0)
  decay = np.where((n >= MIN_STEPS) & (den > 0), -slope, np.nan)

  songs, song_idx = np.unique(np.asarray(pairs["song"]).astype(str), return_inverse=True)
  song_idx = song_idx.reshape(-1)
  out = np.full((len(songs), n_regions), np.nan)
  # An album version is a second record of the same song: keep the longest-observed run, the
  # main track's, rather than averaging in a shorter, quieter copy.
  best = np.zeros((len(songs), n_regions))
  for i in np.flatnonzero(np.isfinite(decay)):
    s, r = song_idx[i], region[i]
    if n[i] > best[s, r]:
      best[s, r], out[s, r] = n[i], decay[i]
  return songs, out


def curve_similarity(pairs: dict, min_songs: int = 10, *, rise_tol: float | None = RISE_TOL
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The data's taste similarity (module doc): ([R, R] Pearson correlation of decay rates over
  shared songs, NaN below `min_songs` shared; diagonal 1), n_shared [R, R] int (diagonal = songs
  with a decay rate in that region). rise_tol: see `decline_window` (None = all observed steps)."""
  if min_songs < 3:
    raise ValueError(f"min_songs={min_songs}: a correlation needs at least 3 shared songs")
  _, decay = decay_rates(pairs, rise_tol)
  have = np.isfinite(decay)
  n_regions = decay.shape[1]
  n_shared = (have.T.astype(np.int64) @ have.astype(np.int64))
  sim = np.full((n_regions, n_regions), np.nan)
  for i, j in itertools.combinations(range(n_regions), 2):
    both = have[:, i] & have[:, j]
    if both.sum() < min_songs:
      continue
    a, b = decay[both, i], decay[both, j]
    if a.std() > 0 and b.std() > 0:
      sim[i, j] = sim[j, i] = float(np.corrcoef(a, b)[0, 1])
  np.fill_diagonal(sim, 1.0)
  return sim, n_shared


# ------------------------------------------------------------------------------------------------
# Mantel test
# ------------------------------------------------------------------------------------------------


def _masked_pearson(x, ys, valid) -> np.ndarray:
  """Pearson r of x [M] with each row of ys [P, M] over that row's `valid` entries; NaN where
  fewer than 3 are valid or a side is constant."""
  n = valid.sum(1)
  safe_n = np.maximum(n, 1)
  mx = np.where(valid, x, 0.0).sum(1) / safe_n
  my = np.where(valid, ys, 0.0).sum(1) / safe_n
  dx = np.where(valid, x - mx[:, None], 0.0)
  dy = np.where(valid, ys - my[:, None], 0.0)
  den = np.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
  with np.errstate(invalid="ignore", divide="ignore"):
    r = (dx * dy).sum(1) / den
  return np.where((n >= 3) & (den > 1e-12), r, np.nan)


def mantel(a, b, *, permutations: int = 9999, seed: int = 0) -> dict:
  """Mantel test of two [R, R] similarity matrices (module doc).

  Returns r, p (one-sided, positive association), n_pairs (off-diagonal pairs where both are
  finite), exact (all R! relabellings enumerated), permutations (relabellings scored), min_p
  (the smallest p the test can give) and a note on it. r and p are NaN with < 3 usable pairs.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
    raise ValueError(f"mantel: need two square matrices of one shape, got {a.shape} and {b.shape}")
  n_regions = len(a)
  if n_regions < 3:
    raise ValueError(f"mantel: {n_regions} regions give {n_regions * (n_regions - 1) // 2} "
                     "pair(s); a correlation needs at least 3 (3 regions)")
  if permutations < 1:
    raise ValueError(f"mantel: permutations={permutations}, need >= 1")
  iu, ju = np.triu_indices(n_regions, 1)
  x = a[iu, ju]
  exact = n_regions <= EXACT_MAX_REGIONS
  if exact:
    perms = np.array(list(itertools.permutations(range(n_regions))), np.int64)
  else:
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(n_regions), (permutations, 1)), axis=1)
  y0 = b[iu, ju][None]
  r_obs = float(_masked_pearson(x, y0, np.isfinite(x) & np.isfinite(y0))[0])
  n_pairs = int((np.isfinite(x) & np.isfinite(y0)).sum())
  n_total = len(perms)
  min_p = 1.0 / n_total if exact else 1.0 / (1 + n_total)
  note = (f"{n_regions} regions: {len(x)} pairs, "
          + (f"all {n_total} relabellings enumerated, so p >= 1/{n_total} = {min_p:.3g}"
             if exact else f"{n_total} random relabellings, so p >= 1/{n_total + 1}"))
  out = {"r": r_obs, "p": float("nan"), "n_pairs": n_pairs, "exact": exact,
         "permutations": n_total, "min_p": min_p, "note": note}
  if math.isnan(r_obs):
    return out
  count = 0
  chunk = max(1, 2_000_000 // max(1, len(x)))  # bounds the [P, M] temporaries
  for start in range(0, n_total, chunk):
    p = perms[start:start + chunk]
    ys = b[p[:, iu], p[:, ju]]
    rs = _masked_pearson(x, ys, np.isfinite(x)[None] & np.isfinite(ys))
    # A relabelling equal to the identity on the data ties exactly; the tolerance keeps
    # floating-point noise from breaking such ties.
    count += int(np.sum(rs >= r_obs - 1e-12))
  out["p"] = count / n_total if exact else (1 + count) / (1 + n_total)
  return out


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------


def heatmaps(matrices: dict, codes, path: str):
  """Side-by-side annotated heatmaps of the [R, R] `matrices` (name -> matrix), colours -1..1."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not matrices:
    raise ValueError("heatmaps: no matrices to plot")
  codes = [str(c) for c in codes]
  n = len(codes)
  for name, m in matrices.items():
    if np.shape(m) != (n, n):
      raise ValueError(f"heatmaps: {name} has shape {np.shape(m)}, expected ({n}, {n}) for "
                       f"codes {codes}")
  side = max(3.2, 0.45 * n + 1.6)
  fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices) + 0.8, side),
                           squeeze=False, layout="constrained")
  im = None
  for ax, (name, m) in zip(axes[0], matrices.items()):
    m = np.asarray(m, np.float64)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), codes, rotation=90 if n > 8 else 0, fontsize=8)
    ax.set_yticks(range(n), codes, fontsize=8)
    ax.set_title(name)
    if n <= 20:  # annotations past that are unreadable
      for i in range(n):
        for j in range(n):
          v = m[i, j]
          ax.text(j, i, output.num(v, 2), ha="center", va="center",
                  fontsize=7, color="white" if abs(v) > 0.6 else "black")
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="similarity")
  output.save_figure(fig, path)


def _linkage(sim):
  from scipy.cluster import hierarchy
  from scipy.spatial.distance import squareform

  sim = np.asarray(sim, np.float64)
  # A pair with no estimate (too few shared songs) counts as unrelated: distance 1.
  dist = 1.0 - np.where(np.isfinite(sim), sim, 0.0)
  dist = np.clip((dist + dist.T) / 2, 0.0, 2.0)
  np.fill_diagonal(dist, 0.0)
  return hierarchy.linkage(squareform(dist, checks=False), method="average")


def dendrogram(sim, codes, path: str):
  """Average-linkage clustering of the regions on distance 1 - similarity (NaN counts as 0
  similarity). `sim`: one [R, R] matrix, or a dict name -> matrix for side-by-side panels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from scipy.cluster import hierarchy

  panels = dict(sim) if isinstance(sim, dict) else {"similarity": sim}
  codes = [str(c) for c in codes]
  if len(codes) < 2:
    raise ValueError(f"dendrogram: need at least 2 regions, got {codes}")
  for name, m in panels.items():
    if np.shape(m) != (len(codes), len(codes)):
      raise ValueError(f"dendrogram: {name} has shape {np.shape(m)}, expected "
                       f"({len(codes)}, {len(codes)}) for codes {codes}")
  width = max(3.5, 0.35 * len(codes) + 1.5)
  fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
  for ax, (name, m) in zip(axes[0], panels.items()):
    hierarchy.dendrogram(_linkage(m), labels=codes, ax=ax, color_threshold=0,
                         above_threshold_color="C0", leaf_rotation=90 if len(codes) > 8 else 0)
    ax.set_title(name)
    ax.set_ylabel("1 - similarity (average linkage)")
  fig.tight_layout()
  output.save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# The whole comparison
# ------------------------------------------------------------------------------------------------


def _aligned(sim, from_codes, to_codes, what: str) -> np.ndarray:
  """`sim` over `from_codes` reindexed to `to_codes`; a region the source lacks is an error."""
  index = {c: i for i, c in enumerate(from_codes)}
  missing = [c for c in to_codes if c not in index]
  if missing:
    raise ValueError(f"{what} has no region(s) {missing} (it has {list(from_codes)}): was the run "
                     "trained on another dataset than `pairs`?")
  order = np.array([index[c] for c in to_codes], np.int64)
  return np.asarray(sim)[np.ix_(order, order)]


def _matrix_table(m, codes) -> list[str]:
  return output.table([""] + list(codes), [[f"**{c}**"] + [output.num(v, 2) for v in row]
                                            for c, row in zip(codes, m)])


def _closest(m, codes, k=3) -> str:
  m = np.asarray(m, np.float64)
  iu, ju = np.triu_indices(len(codes), 1)
  vals = m[iu, ju]
  order = [i for i in np.argsort(-np.where(np.isfinite(vals), vals, -np.inf)) if
           np.isfinite(vals[i])][:k]
  return ", ".join(f"{codes[iu[i]]}–{codes[ju[i]]} {vals[i]:.2f}" for i in order) or "–"


def _verdict(name: str, t: dict) -> str:
  a, b = name.split(" vs ")
  r, p = t["r"], t["p"]
  if r is None or p is None or math.isnan(r) or math.isnan(p):
    return f"- **{name}**: not testable ({t['n_pairs']} usable pairs)."
  if p < ALPHA and r > 0:
    said = f"agree: regions close in {a} are close in {b}"
  elif r > 0:
    said = f"lean the same way but the agreement is not significant at {ALPHA}"
  else:
    said = "show no agreement"
  floor = " (the smallest p this test can give)" if abs(p - t["min_p"]) < 1e-12 else ""
  return f"- **{name}** {said} (Mantel r = {r:.2f}, p = {p:.3g}{floor}, {t['n_pairs']} pairs)."


def markdown(result: dict) -> str:
  """The regions.md section (module doc)."""
  codes = result["codes"]
  names = list(result["matrices"])
  lines = ["## Regions: which share taste", "",
           f"{len(codes)} regions ({', '.join(codes)}). "
           + (f"Learned: cosine similarity of the region vectors of {result['run']} "
              f"(step {result['step']}, region_mode {result['region_mode']})"
              + (f"; learned_mp2: those of its MP2 encoder run {result['mp2_run']} (step "
                 f"{result['mp2_step']})" if result.get("mp2_run") else "") + ". "
              if result.get("run") else "No run given: data and truth only. ")
           + "Curve: Pearson correlation of per-song decay rates (minus the slope of log1p weekly "
           "streams over chart steps, "
           + (f"fitted on the first chart run's decline, re-rise tolerance {result['rise_tol']}"
              if result["rise_tol"] is not None else "fitted on every observed step")
           + f", >= {MIN_STEPS} steps) over songs charting in both regions (NaN below "
           f"{result['min_songs']} shared songs; shared songs per pair "
           f"{result['shared_songs_range'][0]}–{result['shared_songs_range'][1]}). "
           + ("Planted: cosine similarity of the planted preference weights in "
              f"{result['raw']}/truth.json." if result.get("raw") else
              "No truth.json: no planted similarity (real data)."), ""]
  for name in names:
    lines += [f"**{name}** (closest pairs: {_closest(result['matrices'][name], codes)})", ""]
    lines += _matrix_table(result["matrices"][name], codes) + [""]
  if result["mantel"]:
    lines += ["Mantel tests (Pearson r of the off-diagonal entries; one-sided p, relabelling the "
              "regions of one matrix):", ""]
    lines += output.table(["comparison", "r", "p", "pairs", "relabellings"],
                          [[name, output.num(t["r"], 2), output.pvalue(t["p"]), t["n_pairs"],
                            f"{t['permutations']}{' (all)' if t['exact'] else ''}"]
                           for name, t in result["mantel"].items()])
    lines += ["", "Verdict:", ""] + [_verdict(n, t) for n, t in result["mantel"].items()]
    any_t = next(iter(result["mantel"].values()))
    if any_t["exact"]:
      lines += ["", f"Caveat: {any_t['note']}. With this few regions the test has little power: "
                "a non-significant result says little, and even a perfect ordering cannot do "
                f"better than p = {any_t['min_p']:.3g}. More regions give a sharper test."]
  else:
    lines += ["No two matrices to compare (no run and no truth.json)."]
  lines += ["", f"![similarity heatmaps]({HEATMAP_NAME})", "",
            f"![region dendrograms]({DENDROGRAM_NAME})", ""]
  return "\n".join(lines)


def run(workdir: str | None, pairs: dict | None, raw: str | None, outdir: str, *,
        step="latest", seed: int = 0, min_songs: int = 10, rise_tol: float | None = RISE_TOL,
        log=print) -> dict:
  """Learned, curve and planted similarities, their Mantel tests and the four output files in
  `outdir` (module doc). Returns what regions.json holds plus "markdown".

  workdir None: only the data (curve) and planted similarities. pairs None: the rows of the
  run's own dataset (all splits). raw: the directory with truth.json, or None.
  """
  from mpjax import atomic

  if pairs is None:
    if workdir is None:
      raise ValueError("regions.run: give a run (workdir) or the dataset rows (pairs)")
    from mpjax import export
    from mpjax.analysis import rows
    pairs = rows.load(export.run_config(workdir)["data_dir"], "train,val,test", with_audio=False)
  codes = [str(c) for c in pairs["regions"]]
  if len(codes) < 2:
    raise ValueError(f"regions.run: the dataset has {len(codes)} region(s) {codes}; a similarity "
                     "needs at least 2")
  matrices, vectors = {}, {}
  result = {"codes": codes, "run": None, "step": None, "region_mode": None, "mp2_run": None,
            "mp2_step": None, "raw": raw and os.path.abspath(raw), "min_songs": min_songs,
            "rise_tol": rise_tol, "seed": seed}
  if workdir is not None:
    learned = learned_vectors(workdir, step)
    vectors["learned"] = learned
    result.update(run=learned["workdir"], step=learned["step"],
                  region_mode=learned["region_mode"])
    mp2_dir = os.path.join(workdir, "mp2")
    if os.path.exists(os.path.join(mp2_dir, "config.json")):
      # The MP2 encoder run of an MP3 demo: its own step numbers, so only latest/best carry over.
      mp2 = learned_vectors(mp2_dir, step if str(step) in ("latest", "best") else "latest")
      vectors["learned_mp2"] = mp2
      result.update(mp2_run=mp2["workdir"], mp2_step=mp2["step"])
    for name, v in vectors.items():
      matrices[name] = _aligned(cosine_similarity(v["table"]), v["codes"], codes,
                                f"{v['workdir']} (regions/table)")
      log(f"[regions] {name}: {v['workdir']} step {v['step']}, table {v['table'].shape}")
  curve, n_shared = curve_similarity(pairs, min_songs=min_songs, rise_tol=rise_tol)
  matrices["curve"] = curve
  planted = planted_similarity(raw, codes)
  if planted is not None:
    matrices["planted"] = planted
  elif raw:
    log(f"[regions] {raw}: no truth.json, no planted similarity")

  tests = [(a, "planted") for a in ("learned", "learned_mp2", "curve")]
  tests += [(a, "curve") for a in ("learned", "learned_mp2")]
  mantel_results = {}
  if len(codes) >= 3:
    for a, b in tests:
      if a in matrices and b in matrices:
        mantel_results[f"{a} vs {b}"] = mantel(matrices[a], matrices[b], seed=seed)
  else:
    log(f"[regions] {len(codes)} regions: 1 pair, no Mantel test")
  iu, ju = np.triu_indices(len(codes), 1)
  shared = n_shared[iu, ju]
  result.update(
      matrices={k: output.jsonable(np.round(np.asarray(m, np.float64), 6))
                for k, m in matrices.items()},
      shared_songs=n_shared.astype(int).tolist(),
      shared_songs_range=[int(shared.min()), int(shared.max())],
      mantel=output.jsonable(mantel_results),
      figures={"heatmap": HEATMAP_NAME, "dendrogram": DENDROGRAM_NAME})
  text = markdown(result)
  atomic.write_json(os.path.join(outdir, JSON_NAME), result, indent=1)
  atomic.write_text(os.path.join(outdir, MD_NAME), text)
  heatmaps(matrices, codes, os.path.join(outdir, HEATMAP_NAME))
  dendrogram(matrices, codes, os.path.join(outdir, DENDROGRAM_NAME))
  for name, t in result["mantel"].items():
    log(f"[regions] {name}: r = {output.num(t['r'])}, p = {output.pvalue(t['p'])} "
        f"({t['n_pairs']} pairs)")
  log(f"[regions] written to {outdir}")
  return {**result, "markdown": text}
