"""mpjax.export and mpjax.predict: a bundle predicts what the trained model predicts, through
its Orbax parameters (any device count) and through the serialized jax.export program (loaded
in a process that never imports mpjax); the predict CLI end to end, bad inputs included."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from configs import mp2 as mp2_config
from configs import mp3 as mp3_config
from mpjax import checkpoint as ckpt_lib
from mpjax import export, predict, records, tasks, train
from mpjax.models import factory
from mpjax.input import pipeline

from fakes import tiny_dataset, tiny_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return tiny_dataset(tmp_path_factory)


def run(tmp_path_factory, data, task):
  work = str(tmp_path_factory.mktemp(task))
  c = tiny_train((mp2_config if task == "mp2" else mp3_config).get_config("demo"), data)
  c.init_from = None
  c.train_mp2_first = False
  if task == "mp3":
    c.input.regions_per_example = 2
  train.train_and_evaluate(c, work)
  return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
  """{task: (workdir, bundle)} for a tiny MP2 and a tiny MP3 run."""
  out = {}
  for task in ("mp2", "mp3"):
    work = run(tmp_path_factory, data, task)
    bundle = os.path.join(work, "bundle")
    if task == "mp2":
      export.export(work, bundle, "latest")
    else:  # the CLI
      r = subprocess.run([sys.executable, "-m", "mpjax.export", f"--workdir={work}",
                          f"--out={bundle}", "--step=latest"], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
      assert r.returncode == 0, r.stderr[-2000:]
      assert "[export] self-check" in r.stdout and "bundle written" in r.stdout
    out[task] = (work, bundle)
  return out


def eval_batch(data, config, n=6):
  """The first n validation examples, all regions, as the training pipeline feeds them."""
  cfg = dict(config.input.to_dict(), eval_batch_size=n)
  ds = pipeline.make_dataset(data, "val", cfg=cfg, augment=None, seed=0, train=False)
  return next(iter(ds))


def all_regions(meta, b):
  return np.tile(np.arange(len(meta["regions"]), dtype=np.int32), (b, 1))


def inputs(meta, batch):
  """The bundle program's inputs for a pipeline batch (every region, its prefix)."""
  b = batch["fbank"].shape[0]
  args = [np.asarray(batch["fbank"], np.float32), all_regions(meta, b)]
  k = meta["targets"]["prefix_steps"] if meta["task"] == "mp3" else 0
  if k:
    ids = np.asarray(batch["region_ids"])
    prefix = np.zeros((b, len(meta["regions"]), k), np.float32)
    mask = np.zeros_like(prefix)
    for i in range(b):
      for j, r in enumerate(ids[i]):
        if r < len(meta["regions"]):
          prefix[i, r] = batch["series"][i, j, :k]
          mask[i, r] = batch["series_mask"][i, j, :k]
    args += [prefix, mask]
  return args


def training_model(work):
  """The model as training built it (the run's own config: attention 'auto'), with the
  checkpoint's latest parameters."""
  config = export.run_config(work)
  manifest = records.load_manifest(config.data_dir)
  model = factory.build_model(config, manifest)
  params = ckpt_lib.read_checkpoint_params(os.path.join(work, "checkpoints"))
  nnx.update(model, export.params_tree(nnx.state(model, nnx.Param), params))
  return model, config


@pytest.mark.parametrize("task", ["mp2", "mp3"])
def test_bundle_predicts_like_the_trained_model(runs, data, task, tmp_path):
  work, bundle = runs[task]
  model, config = training_model(work)
  batch = eval_batch(data, config)
  bmodel, meta = export.load(bundle)
  args = inputs(meta, batch)
  ref = export.infer(model, *[jax.numpy.asarray(a) for a in args])
  got = export.infer(bmodel, *[jax.numpy.asarray(a) for a in args])
  assert set(got) == {"prediction", "embedding"}
  for k in got:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-5, atol=1e-5)
  # The training loop's own forward on the same batch (its region slots) agrees too.
  fwd = np.asarray(tasks.get(config).forward(model, jax.tree.map(jax.numpy.asarray, batch), config))
  if task == "mp2":
    fwd = fwd[..., 0]  # [B, R, targets]: the bundle serves the first target of config.mp2.targets
  ids = np.asarray(batch["region_ids"])
  pred = np.asarray(got["prediction"])
  for i in range(ids.shape[0]):
    for j, r in enumerate(ids[i]):
      if r < len(meta["regions"]) and batch["region_mask"][i, j] > 0:
        np.testing.assert_allclose(pred[i, r], fwd[i, j], rtol=1e-5, atol=1e-5)

  # The serialized program, in a process that never imports mpjax (one device there).
  np.savez(tmp_path / "in.npz", *args)
  script = textwrap.dedent(f"""
      import sys, numpy as np, jax, orbax.checkpoint as ocp
      exp = jax.export.deserialize(open({os.path.join(bundle, 'model.jax_export')!r}, 'rb').read())
      params = ocp.StandardCheckpointer().restore({os.path.join(bundle, 'params')!r})
      z = np.load({str(tmp_path / 'in.npz')!r})
      out = exp.call(params, *[z[f'arr_{{i}}'] for i in range(len(z.files))])
      np.savez({str(tmp_path / 'out.npz')!r}, **{{k: np.asarray(v) for k, v in out.items()}})
      assert not any(m == 'mpjax' or m.startswith('mpjax.') for m in sys.modules), 'imported mpjax'
      print(len(jax.devices()), exp.platforms)
      """)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/",
                     env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split()[0] == "1" and "cuda" in r.stdout and "tpu" in r.stdout
  out = np.load(tmp_path / "out.npz")
  for k in got:
    np.testing.assert_allclose(out[k], np.asarray(got[k]), rtol=1e-5, atol=1e-5)


def test_bundle_restores_onto_another_device_count(runs, data):
  work, bundle = runs["mp2"]
  one, meta = export.load(bundle)
  mesh = jax.make_mesh((8,), ("data",))
  eight, _ = export.load(bundle, mesh)
  leaf = jax.tree.leaves(nnx.state(eight, nnx.Param))[0]
  assert len(leaf.sharding.device_set) == 8
  assert len(jax.tree.leaves(nnx.state(one, nnx.Param))[0].sharding.device_set) == 1
  args = inputs(meta, eval_batch(data, export.run_config(work), n=8))
  a = export.infer(one, *args)["prediction"]
  with jax.set_mesh(mesh):
    b = export.infer(eight, *args)["prediction"]
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_bundle_json_round_trips_and_other_versions_are_refused(runs, tmp_path):
  _, bundle = runs["mp3"]
  meta = export.read_meta(bundle)
  assert meta == json.load(open(os.path.join(bundle, "bundle.json")))
  assert meta["task"] == "mp3" and meta["targets"]["quantiles"] == [0.1, 0.5, 0.9]
  assert set(meta["region_mp2_distribution"]["quantiles"]) == set(meta["regions"])
  assert meta["provenance"]["step"] == 6 and len(meta["provenance"]["data_manifest_sha256"]) == 64
  assert meta["versions"]["jax"] == jax.__version__
  old = tmp_path / "old"
  os.makedirs(old)
  json.dump({**meta, "format": 99}, open(old / "bundle.json", "w"))
  with pytest.raises(export.BundleError, match="bundle format 99.*re-export"):
    export.read_meta(str(old))
  with pytest.raises(export.BundleError, match="not found"):
    export.read_meta(str(tmp_path / "nothing"))
  with pytest.raises(export.BundleError):
    predict.run(str(old), ["x.wav"], progress=False)


def test_export_picks_the_step_and_refuses_a_bad_out(runs, tmp_path):
  work, _ = runs["mp2"]
  config = export.run_config(work)
  assert export.choose_step(work, "latest", config)[0] == 6
  assert export.choose_step(work, "3", config)[0] == 3
  with pytest.raises(ValueError, match="one of the kept steps"):
    export.choose_step(work, "4", config)
  junk = tmp_path / "junk"
  os.makedirs(junk)
  (junk / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not a bundle"):
    export.export(work, str(junk), "latest")
  assert os.listdir(junk) == ["notes.txt"]


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


def tone(path, seconds, sr=22050, freq=440.0, fmt=None):
  t = np.arange(int(seconds * sr)) / sr
  x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
  sf.write(path, np.stack([x, 0.5 * x], 1).astype(np.float32), sr, format=fmt)
  return str(path)


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
  d = tmp_path_factory.mktemp("songs")
  good_wav = tone(d / "a.wav", 8.0)
  good_mp3 = tone(d / "b.mp3", 7.0, freq=660.0, fmt="MP3")
  short = tone(d / "short.wav", 2.0)
  broken = d / "broken.mp3"
  broken.write_bytes(b"ID3\x03\x00" + os.urandom(3000))
  return dict(good=[good_wav, good_mp3], short=short, broken=str(broken),
              missing=str(d / "missing.flac"))


def test_predict_mp2_multi_crop_and_bad_inputs(runs, songs, tmp_path, capsys):
  _, bundle = runs["mp2"]
  files = [songs["good"][0], songs["missing"], songs["broken"], songs["short"], songs["good"][1]]
  status = predict.run(bundle, files, regions=["us", "xx"], crops=3,
                       json_out=str(tmp_path / "p.json"), embeddings=str(tmp_path / "e.npy"),
                       plot_dir=str(tmp_path / "plots"), progress=False)
  out, err = capsys.readouterr()
  assert status == 1
  assert "unknown region(s) xx; the bundle knows global, kr, us" in err
  assert f"{songs['missing']}: no such file" in err
  assert f"{songs['broken']}: cannot decode it" in err
  assert f"{songs['short']}: shorter than the model's minimum (2.00 s < 5 s)" in err
  res = json.load(open(tmp_path / "p.json"))["results"]
  assert [r["ok"] for r in res] == [True, False, False, False, True]
  a = res[0]
  assert a["crops"] == 3 and set(a["regions"]) == {"us"} and a["seconds"] == 8.0
  us = a["regions"]["us"]
  assert us["streams"] == pytest.approx(np.expm1(us["log1p_streams"]), rel=1e-3)
  assert 0 <= us["percentile"] <= 100
  assert "a.wav" in out and "b.mp3" in out
  emb = np.load(tmp_path / "e.npy")
  assert emb.shape[0] == 2 and [r.get("embedding_row") for r in res if r["ok"]] == [0, 1]
  assert os.path.exists(os.path.join(tmp_path, "plots", "a.png"))

  # Multi-crop is the mean over the crops, each computed as the training pipeline crops.
  model, meta = export.load(bundle)
  x, _ = predict.song_crops(songs["good"][0], meta, 3)
  assert x.shape[0] == 3 and not np.allclose(x[0], x[2])
  each = np.asarray(export.infer(model, x, all_regions(meta, 3))["prediction"])
  us_id = meta["regions"].index("us")
  np.testing.assert_allclose(us["log1p_streams"], each[:, us_id].mean(), atol=1e-4)
  one = predict.run(bundle, [songs["good"][0]], regions=["us"], crops=1, progress=False,
                    json_out=str(tmp_path / "one.json"))
  assert one == 0
  centre = json.load(open(tmp_path / "one.json"))["results"][0]["regions"]["us"]
  np.testing.assert_allclose(centre["log1p_streams"], each[1, us_id], atol=1e-4)
  # Only unknown regions: nothing to predict.
  assert predict.run(bundle, songs["good"], regions=["xx"], progress=False) == 2


def test_predict_mp3_with_prefix_and_the_cli(runs, songs, tmp_path):
  _, bundle = runs["mp3"]
  meta = export.read_meta(bundle)
  k = meta["targets"]["prefix_steps"]
  wav = songs["good"][0]
  (tmp_path / "prefix.csv").write_text(
      "file,region,step,streams\n" + "".join(f"a.wav,us,{s},{200000 - 1000 * s}\n"
                                             for s in range(k)))
  r = subprocess.run(
      [sys.executable, "-m", "mpjax.predict", f"--model={bundle}", wav, songs["missing"],
       f"--prefix={tmp_path / 'prefix.csv'}", f"--json={tmp_path / 'f.json'}",
       f"--plot={tmp_path / 'plots'}", "--regions=us,kr"],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "missing.flac: no such file" in r.stderr and "streams per week" in r.stdout
  res = json.load(open(tmp_path / "f.json"))
  good = res["results"][0]
  us, kr = good["regions"]["us"], good["regions"]["kr"]
  assert us["steps"] == list(range(k, meta["targets"]["horizon"]))
  curve = np.asarray(us["log1p_streams"])
  assert curve.shape == (len(us["steps"]), 3) and np.all(np.diff(curve, axis=1) >= 0)
  assert us["prefix_log1p_streams"][0] == pytest.approx(np.log1p(200000), abs=1e-3)
  assert kr["prefix_log1p_streams"] == [None] * k
  # The forecast starts from the last observed value (MP3 anchors on it); kr, without a
  # prefix, from the learned level.
  last = np.log1p(200000 - 1000 * (k - 1))
  assert abs(curve[0, 1] - last) < 1.0
  assert not np.allclose(curve, np.asarray(kr["log1p_streams"]))
  assert os.path.exists(tmp_path / "plots" / "a.png")
  # A prefix naming a step outside the model's prefix is refused before anything runs.
  (tmp_path / "bad.csv").write_text(f"file,region,step,streams\na.wav,us,{k},5\n")
  with pytest.raises(ValueError, match=f"step {k} outside"):
    predict.run(bundle, [wav], prefix=str(tmp_path / "bad.csv"), progress=False)


# ------------------------------------------------------------------------------------------------
# evaluate: a trained run scored on any dataset with its vocabulary, without training
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["mp2", "mp3"])
def test_evaluate_reproduces_the_end_of_training_test_metrics(runs, task, tmp_path):
  from mpjax import evaluate
  work, _ = runs[task]
  final = json.load(open(os.path.join(work, "final_metrics.json")))
  assert final["step"] == 6
  got = evaluate.evaluate(work, split="test", step="latest", out=str(tmp_path / "ev"))
  expected = {k[len("test/"):]: v for k, v in final["metrics"].items() if k.startswith("test/")}
  assert got and got.keys() == expected.keys()
  np.testing.assert_equal(got, expected)  # exactly (NaN = NaN): the same program, same params
  written = json.load(open(tmp_path / "ev" / "metrics.json"))
  np.testing.assert_equal(written["metrics"], got)
  assert written["step"] == 6 and written["split"] == "test"
  if task == "mp3":
    ref = open(os.path.join(work, "forecast", "forecast_table.md")).read()
    assert open(tmp_path / "ev" / "forecast_table.md").read() == ref
  if task == "mp2":  # per-pair predictions: they reproduce the metrics of every target
    from mpjax import metrics as metrics_lib
    z = np.load(tmp_path / "ev" / "predictions.npz")
    config = export.run_config(work)
    assert list(z["targets"]) == list(factory.mp2_targets(config)) == ["mp2", "longevity"]
    songs = {r["song_id"] for r in records.read(config.data_dir, "test")}
    assert set(z["song_id"]) <= songs and len(z["song_id"]) == len(z["region"])
    for j, t in enumerate(z["targets"]):
      ok = np.isfinite(z[t])
      names = sorted(set(z["region"]))
      ids = np.array([names.index(r) for r in z["region"]])
      m = metrics_lib.per_region(z[f"pred_{t}"], np.where(ok, z[t], 0.0), ok, ids, names)
      key = "" if j == 0 else f"{t}/"
      for k in ("r2", "within_region_r2", "mse"):  # NaN = NaN where a target has too few pairs
        np.testing.assert_allclose(m[k], got[f"{key}{k}"], rtol=1e-5)
    assert np.isfinite(z["mp2"]).sum() >= 3 and np.isfinite(got["r2"])  # the tiny split: 3 pairs


def test_evaluate_with_several_crops(runs, tmp_path):
  from mpjax import evaluate
  work, _ = runs["mp2"]
  one = evaluate.evaluate(work, split="test", out=str(tmp_path / "c1"))
  three = evaluate.evaluate(work, split="test", out=str(tmp_path / "c3"), eval_crops=3)
  z1, z3 = (np.load(tmp_path / d / "predictions.npz") for d in ("c1", "c3"))
  np.testing.assert_array_equal(z1["song_id"], z3["song_id"])
  assert three["n"] == one["n"] and not np.allclose(z1["pred_mp2"], z3["pred_mp2"])
  with pytest.raises(ValueError, match="eval_crops=0"):
    evaluate.evaluate(work, split="test", out=str(tmp_path / "c0"), eval_crops=0)
  with pytest.raises(ValueError, match="mp3 one centre crop"):
    evaluate.evaluate(runs["mp3"][0], split="test", out=str(tmp_path / "m3"), eval_crops=2)


def test_evaluate_on_another_dataset_and_a_foreign_vocabulary(runs, tmp_path_factory):
  from data_prep import build, synthetic
  from mpjax import evaluate
  work, _ = runs["mp3"]

  def dataset(name, regions, seed):
    raw = str(tmp_path_factory.mktemp(f"raw_{name}"))
    out = str(tmp_path_factory.mktemp(name))
    synthetic.generate(raw, seed=seed, n_songs=40, n_artists=10, regions=regions,
                       clip_seconds=5.5, weeks=36, fit_chart_oracle=False)
    build.build(build.BuildConfig(raw=raw, out=out, progress=False, records_per_shard=8))
    return out

  later = dataset("later", ("global", "us", "kr"), 7)
  metrics = evaluate.evaluate(work, later, split="val")
  out = os.path.join(work, "eval", f"{os.path.basename(later)}-val-step6")
  assert metrics["n"] > 0 and os.path.exists(os.path.join(out, "forecast_table.md"))
  assert json.load(open(os.path.join(out, "metrics.json")))["data_dir"] == later
  other = dataset("other", ("global", "us"), 7)
  with pytest.raises(ValueError, match="region vocabulary"):
    evaluate.evaluate(work, other)
