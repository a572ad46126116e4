"""The research report end to end: a tiny trained MP2 run on synthetic data with planted truth
gets every section (H with the fbank, encoder and planted representations, T with its shuffled
control, regions), and a dataset alone gets the data analyses."""
import json
import os

import numpy as np
import pytest

from configs import mp2 as mp2_config
from mpjax import train
from mpjax.analysis import hypothesis, research, rows

from fakes import tiny_dataset, tiny_train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  data = tiny_dataset(tmp_path_factory, n_songs=120, n_artists=30)
  wd = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(tiny_train(mp2_config.get_config("demo"), data), wd)
  return wd, data


def test_report_of_a_trained_run(run_dir, tmp_path):
  wd, data = run_dir
  out = str(tmp_path / "analysis")
  lines = []
  res = research.run(wd, out=out, bootstrap=200, permutations=200, log=lines.append)
  text = open(res["report"]).read()
  assert res["report"] == os.path.join(out, "report.md")
  h = res["hypothesis"]
  assert list(h["audio"]) == ["fbank", "encoder", "planted"]
  assert h["fit"] == "train" and h["score"] == "test"
  # The encoder representation is the trained run's: pooled + one patch mean per layer (depth 1).
  pairs = rows.load(data)
  enc = hypothesis.encoder_features(wd, pairs, data, log=lambda *_: None)
  assert enc.shape == (len(pairs["region"]), 2 * 192)
  assert np.all(enc[pairs["rec_key"] == pairs["rec_key"][0]] == enc[0])  # one clip, one row each
  for section in ("# Research report", "## Provenance", "## Summary",
                  "## H: debut from extrinsic factors", "### Audio = encoder",
                  "## T: TikTok songs vs the rest", "Control: the same comparison with the labels "
                  "shuffled", "## Regions: which share taste", "## Audio probes"):
    assert section in text, section
  assert f"run: `{os.path.abspath(wd)}`" in text and "synthetic truth:" in text
  assert "learned vs planted" in text  # the run's region vectors against the planted prefs
  for name in ("hypothesis.json", "hypothesis_fbank.png", "hypothesis_encoder.png",
               "tiktok.json", "tiktok_curves.png", "regions.json", "regions_heatmap.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "tiktok.json")) as f:
    t = json.load(f)
  # The planted TikTok wave: a second rise far more often in the labelled songs.
  assert t["stats"]["second_rise"]["TikTok"]["mean"] > t["stats"]["second_rise"]["rest"]["mean"] + 0.3
  assert res["tiktok"]["shuffled_control"]["stats"]["second_rise"]["p"] > 0.05
  assert lines[-1].startswith("[analysis] report written to")


def test_report_includes_the_probes_when_they_exist(run_dir, tmp_path):
  wd, _ = run_dir
  os.makedirs(os.path.join(wd, "probes"), exist_ok=True)
  with open(os.path.join(wd, "probes", "probes.md"), "w") as f:
    f.write("# Linear probes: x\n\n| target | n |\n|---|---|\n| tempo | 7 |\n")
  try:
    res = research.run(wd, out=str(tmp_path), bootstrap=150, permutations=100,
                       log=lambda *_: None)
  finally:
    os.remove(os.path.join(wd, "probes", "probes.md"))
  text = open(res["report"]).read()
  assert "## Audio probes (what the encoder learnt)" in text and "| tempo | 7 |" in text


def test_a_dataset_alone_gets_the_data_analyses(run_dir, tmp_path):
  _, data = run_dir
  res = research.run(None, data_dir=data, out=str(tmp_path), bootstrap=150, permutations=100,
                     log=lambda *_: None)
  assert list(res["hypothesis"]["audio"]) == ["fbank", "planted"]
  assert res["regions"]["run"] is None and "learned" not in res["regions"]["matrices"]
  assert "run: none (data analyses only)" in open(res["report"]).read()


def test_errors_name_the_problem(run_dir, tmp_path):
  wd, data = run_dir
  with pytest.raises(ValueError, match="no dataset: pass --data"):
    research.run(None, out=str(tmp_path))
  with pytest.raises(ValueError, match="no rows"):
    research.run(wd, out=str(tmp_path), fit="train", score="nosuchsplit", log=lambda *_: None)
  pairs = rows.load(data)
  raw = pairs["manifest"]["provenance"]["build_args"]["raw"]
  with pytest.raises(ValueError, match="lacks songs"):
    research.planted_attributes(dict(pairs, song=np.array(["nobody"] * len(pairs["song"]))), raw)
