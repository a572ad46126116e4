"""The research report of a run: H (debut vs longevity), T (TikTok songs), regions, probes.

    python -m mpjax.analysis --workdir=RUN [--data=DATASET] [--raw=RAW] [--out=RUN/analysis]
        [--fit=train] [--score=test] [--margin=0.02] [--tiktok_labels=CSV] [--bootstrap=1000]
        [--permutations=2000] [--seed=0] [--step=latest]

Writes OUT/report.md, readable on its own (what was run, the data's provenance, every table
with its confidence intervals or p-values, plain-language verdicts, the figures beside it), and
the per-analysis files it links: hypothesis.{json,md,*.png} (`mpjax.analysis.hypothesis`),
tiktok.{json,md,*.png} (`mpjax.analysis.tiktok`), regions.{json,md,*.png}
(`mpjax.analysis.regions`). RUN/probes/probes.md (`python -m mpjax.analysis.probes`) is
included when it exists.

H is fitted on the train songs and scored on the test songs by default: songs never used for a
model or checkpoint choice (a run's val songs chose its checkpoint or its stopping point). The
report names the split. H is a pre-registered test with an equivalence margin at the debut
(`--margin`, R²) and Holm-adjusted later horizons (`mpjax.analysis.hypothesis`).

Audio representations for H: `fbank` (model-free statistics of the clip), `encoder` (the run's
trained AST encoder; left out for runs without one) and, on synthetic data with truth.json,
`planted` (the song's six planted attributes: what a perfect audio model could add, the
ceiling the other two are read against).

TikTok labels: --tiktok_labels (a CSV with the columns track,label; see
`mpjax.analysis.tiktok.labels_from_csv`), else the dataset's `tiktok` label when it has one
(synthetic worlds). Real charts carry none, so without the CSV the report says that T was
skipped and how to supply the labels.
The same comparison with the labels shuffled across songs is reported beside it (a check that
the test finds nothing when there is nothing).

Host-side: one process reads everything; only process 0 writes (`mpjax.main` runs it at the
end of the MP3 demo).
"""
from __future__ import annotations

import datetime
import json
import os
import time

import numpy as np

from mpjax.analysis import hypothesis, output, probes, regions, rows, tiktok


def _load_truth(raw: str | None) -> dict | None:
  if not raw:
    return None
  with open(os.path.join(raw, "truth.json")) as f:
    return json.load(f)


def planted_attributes(pairs: dict, raw: str) -> np.ndarray:
  """[N, 6] the planted attributes (u in [0, 1]) of each row's song, from RAW/truth.json."""
  songs = probes.truth_attributes(raw)
  missing = sorted({s for s in pairs["song"] if s not in songs})
  if missing:
    raise ValueError(f"{raw}/truth.json lacks songs {missing[:3]} of the dataset: another "
                     "dataset's truth? pass the right --raw")
  return np.array([[songs[s][a] for a in probes.ATTRIBUTES] for s in pairs["song"]])


def _provenance(workdir, data_dir, manifest, raw, truth, step) -> list[str]:
  from mpjax import provenance
  build = manifest.get("provenance", {}).get("build_args", {})
  lines = [f"- run: `{os.path.abspath(workdir)}` (checkpoint step {step})" if workdir else
           "- run: none (data analyses only)",
           f"- data: `{os.path.abspath(data_dir)}` ({manifest.get('period', 'weekly')}, horizon "
           f"{manifest['horizon']}, regions {', '.join(manifest['regions'])}; built from "
           f"`{build.get('raw', '?')}`, split by {manifest.get('split', {}).get('method', '?')})"]
  counts = manifest.get("counts", {})
  lines.append("- songs per split: " + ", ".join(f"{s} {c.get('songs', '?')}"
                                                for s, c in counts.items()))
  if truth is not None:
    p = truth.get("params", {})
    lines.append(f"- synthetic truth: `{raw}` (generator {truth.get('generator')}, seed "
                 f"{truth.get('seed')}, {p.get('n_songs')} songs, "
                 + ("**null variant: the audio has no effect on popularity**" if truth.get("null")
                    else "audio drives decay and the TikTok wave") + ")")
  else:
    lines.append("- no planted truth (real data): no `planted` representation, no planted "
                 "region preferences")
  commit = provenance.git_commit()
  lines.append(f"- written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
               f"mpjax {commit[:10] or '(commit unknown)'}")
  return lines


def run(workdir: str | None, *, data_dir: str | None = None, raw: str | None = None,
        out: str | None = None, fit: str = "train", score: str = "test", margin: float = 0.02,
        tiktok_labels: str | None = None, bootstrap: int = 1000, permutations: int = 2000,
        seed: int = 0, step: str = "latest", log=print) -> dict:
  """Every analysis of the module docstring; returns {'report': path, 'hypothesis', 'tiktok',
  'regions'} (each analysis's result, or the reason it was skipped)."""
  from mpjax import atomic
  from mpjax import export as export_lib

  t0 = time.time()
  config = export_lib.run_config(workdir) if workdir else None
  data_dir = data_dir or (config.get("data_dir") if config else None)
  if not data_dir:
    raise ValueError("no dataset: pass --data (the run's config.json names none)")
  out = out or os.path.join(workdir or data_dir, "analysis")
  os.makedirs(out, exist_ok=True)
  log(f"[analysis] reading {data_dir} ...")
  pairs = rows.load(data_dir, "train,val,test")
  manifest = pairs["manifest"]
  raw = probes.find_raw(data_dir, manifest, raw)
  truth = _load_truth(raw)
  step_n = export_lib.choose_step(workdir, step, config)[0] if workdir else None
  results, sections = {}, []

  # T's labels first: a bad label file fails before minutes of H.
  labels, source = None, None
  if tiktok_labels:
    labels, source = tiktok.labels_from_csv(pairs, tiktok_labels), f"CSV {tiktok_labels}"
  elif "tiktok" in pairs["labels_names"]:
    labels, source = tiktok.labels_from_dataset(pairs, "tiktok"), "the dataset's `tiktok` label"

  # H -------------------------------------------------------------------------------------------
  audio = {}
  if pairs["fbank_stats"].shape[1]:
    audio["fbank"] = pairs["fbank_stats"]
  has_encoder = (config is not None and pairs["fbank_stats"].shape[1]
                 and not (config.get("task") == "mp3" and not config.mp3.get("audio", True)))
  if has_encoder:
    log("[analysis] embedding every clip with the run's encoder ...")
    audio["encoder"] = hypothesis.encoder_features(workdir, pairs, data_dir, step=str(step_n),
                                                   seed=seed, log=lambda *_: None)
  if truth is not None:
    audio["planted"] = planted_attributes(pairs, raw)
  if audio:
    results["hypothesis"] = hypothesis.run(pairs, out, audio=audio, fit=fit, score=score,
                                           bootstrap=bootstrap, seed=seed, margin=margin, log=log)
    sections.append(results["hypothesis"]["markdown"])
  else:
    results["hypothesis"] = {"skipped": "the dataset holds no audio"}
    sections.append("## H\n\nSkipped: the dataset holds no audio.\n")

  # T -------------------------------------------------------------------------------------------
  if labels is None:
    reason = ("no TikTok labels: the dataset has no `tiktok` label (real charts carry none) and "
              "--tiktok_labels was not given")
    results["tiktok"] = {"skipped": reason}
    sections.append(f"## T: TikTok songs vs the rest\n\nSkipped: {reason}. To run T, pass "
                    "`--tiktok_labels=LABELS.csv`, a CSV with the columns `track,label`: track = "
                    "a track id or song id of the dataset (the ISRC, or the normalised "
                    "\"artist - title\"), label = 1 for a TikTok song, 0 for the rest; songs not "
                    "listed are left out.\n")
  else:
    preds = os.path.join(workdir, "forecast", "predictions.npz") if workdir else None
    preds = preds if preds and os.path.exists(preds) else None
    try:
      res = tiktok.run(pairs, labels, out, label_source=source, predictions=preds,
                       permutations=permutations, seed=seed, bootstrap=bootstrap,
                       log=log)
      shuffled = tiktok.compare(pairs, tiktok.shuffle_labels(pairs, labels, seed),
                                permutations=permutations, seed=seed)
      res["shuffled_control"] = shuffled
      results["tiktok"] = res
      sections.append(res["markdown"] + "\n" + _shuffled_line(shuffled, seed))
    except ValueError as e:
      results["tiktok"] = {"skipped": str(e)}
      sections.append(f"## T: TikTok songs vs the rest\n\nSkipped: {e}\n")

  # Regions -------------------------------------------------------------------------------------
  try:
    # A run without region vectors (region_mode 'none', an SSL run) still gets the data's and
    # the planted similarities.
    region_run = (workdir if config is not None and config.get("task") in ("mp2", "mp3")
                  and config.get("region_mode", "cls_token") != "none" else None)
    results["regions"] = regions.run(region_run, pairs, raw, out, step=str(step_n or "latest"),
                                     seed=seed, log=log)
    sections.append(results["regions"]["markdown"])
  except ValueError as e:
    results["regions"] = {"skipped": str(e)}
    sections.append(f"## Regions: which share taste\n\nSkipped: {e}\n")

  # Probes --------------------------------------------------------------------------------------
  probes_md = os.path.join(workdir, "probes", "probes.md") if workdir else None
  if probes_md and os.path.exists(probes_md):
    with open(probes_md) as f:
      body = f.read().split("\n", 1)[-1]  # its own title line gives way to this section's
    sections.append("## Audio probes (what the encoder learnt)\n\nFrom `" + probes_md +
                    "` (`python -m mpjax.analysis.probes --workdir=RUN`):\n" + body)
  else:
    sections.append("## Audio probes\n\nNot run for this run: `python -m mpjax.analysis.probes "
                    "--workdir=RUN`, then this command again, includes them.\n")

  head = ["# Research report", "",
          "What drives a song's chart life, from this run and its data: **H** (is the debut "
          "driven by extrinsic factors and longevity by the audio?), **T** (do TikTok songs "
          "behave differently?), **regions** (which share taste?). Command: `python -m "
          "mpjax.analysis" + (f" --workdir={workdir}" if workdir else f" --data={data_dir}")
          + f" --fit={fit} --score={score} --margin={margin:g} --seed={seed}`.", "",
          "## Provenance", ""]
  head += _provenance(workdir, data_dir, manifest, raw, truth, step_n) + [""]
  summary = _summary(results)
  text = "\n".join(head + ["## Summary", ""] + summary + [""]) + "\n" + "\n".join(sections)
  path = os.path.join(out, "report.md")
  atomic.write_text(path, text)
  log(f"[analysis] report written to {path} ({time.time() - t0:.0f} s)")
  return {"report": path, **results}


def _shuffled_line(shuffled: dict, seed: int) -> str:
  s = shuffled["stats"]["second_rise"]
  return (f"Control: the same comparison with the labels shuffled across songs (seed {seed}) "
          f"gives a second-rise difference of {output.num(s['difference'], sign=True)} "
          f"(p = {output.num(s['p'])}).\n")


def _summary(results: dict) -> list[str]:
  out = []
  h = results.get("hypothesis", {})
  for name, res in h.get("audio", {}).items():
    out.append(f"- H, audio = {name}: {res['verdict']['text']}")
  if "skipped" in h:
    out.append(f"- H: skipped ({h['skipped']})")
  t = results.get("tiktok", {})
  out.append(f"- T: {t['verdict']}" if "verdict" in t else f"- T: skipped ({t.get('skipped')})")
  r = results.get("regions", {})
  if "skipped" in r:
    out.append(f"- Regions: skipped ({r['skipped']})")
  elif r.get("mantel"):
    out.append("- Regions (Mantel r, one-sided p): " + "; ".join(
        f"{n} r = {output.num(t['r'], 2)} (p = {output.pvalue(t['p'])})"
        for n, t in r["mantel"].items()
        if t["r"] is not None and np.isfinite(t["r"])))
  else:
    out.append("- Regions: no two similarity matrices to compare")
  return out
