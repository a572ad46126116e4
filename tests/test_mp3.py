"""MP3: shapes, monotone quantiles, masking (zero loss and gradient off the observed steps),
encoder loaded from an MP2 checkpoint, audio-free mode, and the demo config end to end."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import mp2 as mp2_config
from configs import mp3 as mp3_config
from data_prep import build, synthetic
from mpjax import checkpoint, tasks, train
from mpjax.models import factory
from mpjax.models import ast, mp3

from fakes import tiny_train

CFG = ast.config_for("tiny", depth=1, input_tdim=32, input_fdim=32, fstride=16, tstride=16)
Q = (0.1, 0.5, 0.9)


def make(prefix_steps=2, horizon=6, mode="cls_token", quantiles=Q, audio=True, seed=0):
  return mp3.MP3(CFG, 3, mode, horizon=horizon, prefix_steps=prefix_steps, quantiles=quantiles,
                 audio=audio, dec_depth=1, rngs=nnx.Rngs(seed), level_init=5.0)


def inputs(b=2, r=2, k=2, seed=0):
  rs = np.random.RandomState(seed)
  fb = jnp.asarray(rs.randn(b, 32, 32), jnp.float32)
  ids = jnp.asarray(rs.randint(0, 3, (b, r)), jnp.int32)
  prefix = jnp.asarray(10 + rs.randn(b, r, k), jnp.float32)
  pmask = jnp.ones((b, r, k), jnp.float32)
  return fb, ids, prefix, pmask


def randomize(model, seed=1):
  """Non-zero output layer (it starts at zero), so outputs depend on the inputs."""
  rs = np.random.RandomState(seed)
  model.out.kernel[...] = jnp.asarray(rs.randn(*model.out.kernel.shape) * 0.5, jnp.float32)
  return model


@pytest.mark.parametrize("mode", ["cls_token", "embedding", "none"])
def test_shapes_and_monotone_quantiles(mode):
  model = randomize(make(mode=mode))
  out = model(*inputs())
  assert out.shape == (2, 2, 4, 3)
  assert np.all(np.diff(np.asarray(out), axis=-1) >= 0)
  assert np.all(np.isfinite(np.asarray(out)))
  assert model.point(out).shape == (2, 2, 4)


@pytest.mark.parametrize("series_len,shared", [(1, True), (2, True), (0, True), (3, False)])
def test_cross_attention_to_shared_memory_equals_attention_to_the_repeated_memory(series_len,
                                                                                  shared):
  """DecoderBlock.cross projects a clip's shared (audio) tokens once for its R series: the
  same result as the library's MultiHeadAttention over the memory repeated per series."""
  blk = mp3.DecoderBlock(32, 4, 64, cross=True, dtype=jnp.float32, rngs=nnx.Rngs(3))
  b, r, length, m = 2, 3, 5, 7
  rs = np.random.RandomState(series_len)
  h = jnp.asarray(rs.randn(b * r, length, 32), jnp.float32)
  series = jnp.asarray(rs.randn(b * r, series_len, 32), jnp.float32) if series_len else None
  audio = jnp.asarray(rs.randn(b, m, 32), jnp.float32) if shared else None
  parts = ([series] if series is not None else []) + (
      [jnp.repeat(audio, r, axis=0)] if audio is not None else [])
  full = jnp.concatenate(parts, axis=1)
  np.testing.assert_allclose(blk.cross(h, series, audio), blk.cross_attn(h, full, full),
                             rtol=1e-5, atol=1e-6)


def test_fresh_model_forecasts_the_last_observed_level():
  model = make()  # zero output layer: every quantile = anchor + lowest-level offset 0 ...
  fb, ids, prefix, pmask = inputs()
  pmask = pmask.at[0, 0, 1].set(0.0)  # last prefix step unobserved: anchor = step 0
  out = np.asarray(model(fb, ids, prefix, pmask))
  np.testing.assert_allclose(out[0, 0, :, 0], np.full(4, prefix[0, 0, 0]), rtol=1e-6)
  np.testing.assert_allclose(out[1, 1, :, 0], np.full(4, prefix[1, 1, 1]), rtol=1e-6)
  # ... and with no observed prefix step, the learned per-region level (level_init = 5).
  out = np.asarray(model(fb, ids, prefix, jnp.zeros_like(pmask)))
  np.testing.assert_allclose(out[..., 0], 5.0, rtol=1e-6)


def test_region_outputs_independent_of_companions():
  model = randomize(make())
  fb, ids, prefix, pmask = inputs(r=3)
  both = np.asarray(model(fb, ids, prefix, pmask))
  alone = np.asarray(model(fb, ids[:, 1:2], prefix[:, 1:2], pmask[:, 1:2]))
  np.testing.assert_allclose(both[:, 1:2], alone, rtol=1e-5, atol=1e-5)


def test_audio_changes_the_forecast_and_audio_free_ignores_it():
  fb, ids, prefix, pmask = inputs()
  model = randomize(make())
  a = np.asarray(model(fb, ids, prefix, pmask))
  b = np.asarray(model(fb * 0 + 1.0, ids, prefix, pmask))
  assert np.abs(a - b).max() > 1e-4
  free = randomize(make(audio=False))
  assert free.encoder is None
  a = np.asarray(free(fb, ids, prefix, pmask))
  b = np.asarray(free(None, ids, prefix, pmask))
  np.testing.assert_array_equal(a, b)


def test_bad_inputs_named():
  model = make()
  fb, ids, prefix, pmask = inputs()
  with pytest.raises(ValueError, match="prefix/prefix_mask must be"):
    model(fb, ids, prefix[..., :1], pmask[..., :1])
  with pytest.raises(ValueError, match="pass prefix"):
    model(fb, ids)
  with pytest.raises(ValueError, match="unknown region id"):
    model(fb, ids + 5, prefix, pmask)
  with pytest.raises(ValueError, match="quantiles"):
    make(quantiles=(0.5, 0.1))
  with pytest.raises(ValueError, match="must include 0.5"):
    make(quantiles=(0.1, 0.9))
  with pytest.raises(ValueError, match="prefix_steps"):
    make(prefix_steps=6, horizon=6)


@pytest.mark.parametrize("quantiles", [Q, None])
def test_unobserved_steps_give_zero_loss_and_gradient(quantiles):
  rs = np.random.RandomState(0)
  b, r, t, k = 3, 2, 7, 2
  nq = len(quantiles) if quantiles else 1
  out = jnp.asarray(rs.randn(b, r, t - k, nq).cumsum(-1) + 10, jnp.float32)
  series = jnp.asarray(10 + rs.randn(b, r, t), jnp.float32)
  mask = jnp.asarray(rs.rand(b, r, t) > 0.4, jnp.float32)
  loss = lambda o, s: mp3.forecast_loss(o, s, mask, prefix_steps=k, quantiles=quantiles)
  # Targets where the mask is 0 do not matter ...
  garbage = jnp.where(mask > 0, series, 1e6)
  np.testing.assert_allclose(float(loss(out, series)), float(loss(out, garbage)), rtol=1e-6)
  # ... and the outputs there get exactly zero gradient, the others not.
  g = np.asarray(jax.grad(loss)(out, series))
  unobs = np.asarray(mask[..., k:]) == 0
  assert np.all(g[unobs] == 0)
  assert np.all(np.abs(g[~unobs]).sum(-1) > 0)
  # Pinball by hand for the point/quantile case on one element.
  if quantiles:
    e = float(series[0, 0, k] - out[0, 0, 0, 0])
    assert float(mp3.pinball(out[0, 0, 0], series[0, 0, k], quantiles)[0]) == pytest.approx(
        max(0.1 * e, -0.9 * e), rel=1e-6)


def test_censored_term_penalises_only_gaps_before_the_last_observation():
  k = 1
  series = jnp.asarray([[[10.0, 9.0, 0.0, 8.0, 0.0, 0.0]]])
  mask = jnp.asarray([[[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]]])
  high = jnp.full((1, 1, 5, 1), 12.0)  # above the floor (8) everywhere
  base = mp3.forecast_loss(high, series, mask, prefix_steps=k, quantiles=None)
  cens = mp3.forecast_loss(high, series, mask, prefix_steps=k, quantiles=None, censored_weight=1.0)
  # Only step 2 (a gap before the last observation at step 3) is off-chart: hinge 12 - 8 = 4.
  assert float(cens - base) == pytest.approx(4.0)


def test_censored_term_with_known_days_ignores_missing_charts_not_late_drops():
  k = 1
  series = jnp.asarray([[[10.0, 9.0, 0.0, 8.0, 0.0, 0.0]]])
  mask = jnp.asarray([[[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]]])
  high = jnp.full((1, 1, 5, 1), 12.0)  # above the floor (8) everywhere
  loss = lambda known, w: mp3.forecast_loss(high, series, mask, prefix_steps=k, quantiles=None,
                                            censored_weight=w, series_known=jnp.asarray(known))
  base = loss([[[1, 1, 1, 1, 1, 1]]], 0.0)
  # Step 2 had no chart (unknown): not off-chart; steps 4 and 5 after the last observation are
  # known and off the chart: censored, hinge 4 each.
  assert float(loss([[[1, 1, 0, 1, 1, 1]]], 1.0) - base) == pytest.approx(4.0)
  # Step 5 unknown too (the data end): only step 4 counts, still a mean hinge of 4.
  assert float(loss([[[1, 1, 0, 1, 1, 0]]], 1.0) - base) == pytest.approx(4.0)
  # Nothing known beyond the observed steps: no censored term at all.
  assert float(loss([[[1, 1, 0, 1, 0, 0]]], 1.0) - base) == 0.0
  # The fitted (uncensored) part never depends on known.
  assert float(loss([[[1, 1, 0, 1, 0, 0]]], 0.0)) == float(base)


def test_censored_term_uses_the_charts_floor_when_given():
  """With series_floor the hinge is relu(median - that step's floor): 0 below it, positive above
  it; a step without a floor (0 or NaN) falls back to the proxy (the lowest observed value, 8)."""
  import ml_collections
  from mpjax import tasks
  k = 1
  series = jnp.asarray([[[10.0, 9.0, 0.0, 8.0, 0.0, 0.0]]])
  mask = jnp.asarray([[[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]]])  # off the chart: steps 2, 4, 5
  known = jnp.ones_like(series)

  def cens(pred, floor):
    out = jnp.asarray(pred, jnp.float32).reshape(1, 1, 5, 1)
    loss = lambda w: mp3.forecast_loss(out, series, mask, prefix_steps=k, quantiles=None,  # noqa: E731
                                       censored_weight=w, series_known=known, series_floor=floor)
    return float(loss(1.0) - loss(0.0))

  real = jnp.asarray([[[9.5] * 6]])
  # 9 is below the chart's floor (9.5) on every off-chart step: no hinge; the proxy floor (8)
  # would have penalised it by 1 a step.
  assert cens([9.0] * 5, real) == 0.0
  assert cens([9.0] * 5, None) == pytest.approx(1.0)
  assert cens([7.0] * 5, real) == 0.0
  assert cens([12.0] * 5, real) == pytest.approx(2.5)  # 12 - 9.5 on each off-chart step
  # Per step: floor 11 on step 2 (10 is below: 0), 9.5 on step 4 (0.5), none on step 5 (the
  # proxy 8: 2); the mean over the three.
  for missing in (0.0, np.nan):
    floor = jnp.asarray([[[0.0, 0.0, 11.0, 0.0, 9.5, missing]]])
    assert cens([10.0] * 5, floor) == pytest.approx(2.5 / 3)
    g = jax.grad(lambda o: mp3.forecast_loss(o, series, mask, prefix_steps=k, quantiles=None,
                                             censored_weight=1.0, series_known=known,
                                             series_floor=floor))(jnp.full((1, 1, 5, 1), 10.0))
    assert np.isfinite(np.asarray(g)).all()
  # MP3Task.loss passes the batch's series_floor through.
  c = ml_collections.ConfigDict({"task": "mp3", "mp3": {"prefix_steps": k, "quantiles": None,
                                                        "censored_weight": 1.0}})
  batch = {"series": series, "series_mask": mask, "series_known": known}
  high = jnp.full((1, 1, 5, 1), 9.0)
  task = tasks.get(c)
  assert float(task.loss(high, {**batch, "series_floor": real}, c)) < float(task.loss(high, batch, c))


def test_missing_prefix_day_is_not_an_off_chart_day():
  model = randomize(make(audio=False, prefix_steps=3, horizon=6))
  model.prefix_proj.kernel[...] = jnp.asarray(
      np.random.RandomState(2).randn(*model.prefix_proj.kernel.shape), jnp.float32)
  _, ids, prefix, _ = inputs(k=3)
  pmask = jnp.asarray(np.array([1.0, 0.0, 1.0])[None, None].repeat(2, 0).repeat(2, 1))
  off = model(None, ids, prefix, pmask, prefix_known=jnp.ones_like(pmask))
  missing = model(None, ids, prefix, pmask, prefix_known=pmask)
  default = model(None, ids, prefix, pmask)
  np.testing.assert_array_equal(np.asarray(default), np.asarray(off))  # None: every day known
  assert np.abs(np.asarray(off) - np.asarray(missing)).max() > 1e-3
  # The value of an unobserved day is never read, known or not.
  garbage = jnp.where(pmask > 0, prefix, 1e6)
  np.testing.assert_array_equal(np.asarray(model(None, ids, garbage, pmask, prefix_known=pmask)),
                                np.asarray(missing))


def test_weekday_input_conditions_the_forecast():
  model = randomize(mp3.MP3(CFG, 3, "cls_token", horizon=6, prefix_steps=2, quantiles=Q,
                            audio=False, dec_depth=1, weekday=True, rngs=nnx.Rngs(0)))
  _, ids, prefix, pmask = inputs()
  fri = model(None, ids, prefix, pmask, weekday=jnp.full(ids.shape, 4, jnp.int32))
  mon = model(None, ids, prefix, pmask, weekday=jnp.zeros(ids.shape, jnp.int32))
  unknown = model(None, ids, prefix, pmask)
  assert np.abs(np.asarray(fri) - np.asarray(mon)).max() > 1e-4
  np.testing.assert_array_equal(
      np.asarray(unknown), np.asarray(model(None, ids, prefix, pmask,
                                            weekday=jnp.full(ids.shape, -1, jnp.int32))))
  assert make().weekday_embed is None  # off unless asked for


# ------------------------------------------------------------------------------------------------
# With the train loop: MP2 checkpoint -> MP3 encoder; demo config end to end
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  raw = str(tmp_path_factory.mktemp("raw"))
  out = str(tmp_path_factory.mktemp("ds"))
  synthetic.generate(raw, seed=3, n_songs=40, n_artists=10, regions=("global", "us", "kr"),
                     clip_seconds=5.5, weeks=36, horizon=12, fit_chart_oracle=False)
  build.build(build.BuildConfig(raw=raw, out=out, progress=False, records_per_shard=8, horizon=12))
  return out


def shrink(c, data):
  c = tiny_train(c, data)
  c.total_steps = 3
  c.optim.warmup_steps = 1
  if c.task == "mp3":
    c.input.regions_per_example = 2  # the test data have 3 regions; the demo's 4
  return c


@pytest.fixture(scope="module")
def mp2_ckpt(data, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("mp2"))
  train.train_and_evaluate(shrink(mp2_config.get_config("demo"), data), work)
  return os.path.join(work, "checkpoints")


def test_demo_config_trains_from_the_mp2_encoder(data, mp2_ckpt, tmp_path, capsys):
  c = shrink(mp3_config.get_config("demo"), data)
  c.init_from = mp2_ckpt
  c.seed = 7  # a fresh init far from the checkpoint's (MP2 used seed 0)
  work = str(tmp_path / "mp3")
  result = train.train_and_evaluate(c, work)
  assert np.isfinite(result["test/mae"])
  printed = capsys.readouterr().out
  assert "parameters loaded" in printed
  # The encoder really came from the MP2 checkpoint (then trained 3 small steps): close to
  # it, far from the fresh init of the same seed.
  src = checkpoint.read_checkpoint_params(mp2_ckpt)
  fresh = {k: np.asarray(v) for k, v in checkpoint._flat_params(
      nnx.state(train_model(c, data), nnx.Param)).items()}
  got = checkpoint.read_checkpoint_params(os.path.join(work, "checkpoints"))
  enc = [k for k in src if k.startswith("encoder/")]
  assert enc and all(k in got for k in enc)
  for key in ("encoder/pos_embed", "encoder/blocks/0/mlp/fc1/kernel", "regions/table"):
    assert not np.allclose(src[key], fresh[key])           # the checkpoint is not a fresh init
    assert np.abs(got[key] - src[key]).max() < 0.1 * np.abs(src[key] - fresh[key]).max()
  # The forecast report: model and every baseline, on the same test rows.
  fdir = os.path.join(work, "forecast")
  summary = json.load(open(os.path.join(fdir, "summary.json")))
  assert {"mp3", "seasonal_naive", "last_value", "exp_decay", "power_decay", "train_drift",
          "extrinsic_ridge"} <= set(summary)
  assert len({s["n"] for s in summary.values()}) == 1
  assert os.path.getsize(os.path.join(fdir, "fan_charts.png")) > 1000
  assert "| mp3 " in open(os.path.join(fdir, "forecast_table.md")).read()


def train_model(c, data):
  """A fresh MP3 with the train loop's construction (same seed), for comparison."""
  manifest = json.load(open(os.path.join(data, "manifest.json")))
  return mp3.MP3(factory.model_config(c), len(manifest["regions"]), c.region_mode,
                 horizon=manifest["horizon"], prefix_steps=c.mp3.prefix_steps,
                 quantiles=tuple(c.mp3.quantiles), dec_depth=c.mp3.dec_depth, rngs=nnx.Rngs(c.seed))


def test_frozen_encoder_stays_equal_to_the_checkpoint(data, mp2_ckpt, tmp_path):
  c = shrink(mp3_config.get_config("demo"), data)
  c.init_from = mp2_ckpt
  c.mp3.freeze_encoder = True
  work = str(tmp_path / "frozen")
  train.train_and_evaluate(c, work)
  src = checkpoint.read_checkpoint_params(mp2_ckpt)
  got = checkpoint.read_checkpoint_params(os.path.join(work, "checkpoints"))
  for key in (k for k in src if k.startswith("encoder/")):
    np.testing.assert_array_equal(got[key], src[key])
  assert not np.array_equal(got["step_embed"], train_model(c, data).step_embed[...])


@pytest.mark.parametrize("field,value,match", [
    ("mp3.quantiles", (0.9, 0.1), r"config\.mp3\.quantiles"),
    ("mp3.prefix_steps", -1, r"config\.mp3\.prefix_steps"),
    ("task", "mp4", r"config\.task"),
    ("init_from", "None", r"config\.init_from: 'None' does not exist"),
])
def test_bad_mp3_config_fails_at_start(data, tmp_path, field, value, match):
  c = shrink(mp3_config.get_config("demo"), data)
  target = c
  *parents, leaf = field.split(".")
  for p in parents:
    target = target[p]
  target[leaf] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(c, str(tmp_path))


def _origin_config(origins, k=2):
  import ml_collections
  return ml_collections.ConfigDict({"mp3": {"prefix_steps": k, "origins": origins}})


def test_forecast_window_from_the_debut_in_evaluation():
  rs = np.random.RandomState(0)
  batch = {"series": jnp.asarray(rs.rand(3, 2, 10), jnp.float32),
           "series_mask": jnp.asarray(rs.rand(3, 2, 10) > 0.3, jnp.float32),
           "series_known": jnp.ones((3, 2, 10), jnp.float32),
           "series_floor": jnp.asarray(rs.rand(3, 2, 10), jnp.float32)}
  out = tasks.forecast_window(batch, _origin_config(4), 6)  # no key: evaluation
  np.testing.assert_array_equal(np.asarray(out["series"]), np.asarray(batch["series"][..., :6]))
  np.testing.assert_array_equal(np.asarray(out["series_floor"]),
                                np.asarray(batch["series_floor"][..., :6]))
  np.testing.assert_array_equal(np.asarray(out["origin"]), 0)


def test_forecast_origins_are_uniform_over_charted_prefixes():
  k, o_max, w = 2, 4, 5
  t = w + o_max
  series = jnp.broadcast_to(jnp.arange(t, dtype=jnp.float32), (1, 3, t))
  mask = np.zeros((1, 3, t), np.float32)
  mask[0, 0, [0, 5]] = 1  # prefixes [o, o+2) holding step 0 or 5: o in {0, 4}
  mask[0, 1, :] = 1       # every origin 0..4
  mask[0, 2, 7:] = 1      # no origin's prefix holds a value: origin 0
  batch = {"series": series, "series_mask": jnp.asarray(mask),
           "series_known": jnp.ones_like(series), "series_floor": series + 100.0}
  seen = {0: set(), 1: set(), 2: set()}
  counts = np.zeros(o_max + 1)
  for i in range(400):
    out = tasks.forecast_window(batch, _origin_config(o_max, k), w, jax.random.key(i))
    o = np.asarray(out["origin"])[0]
    for r in range(3):
      seen[r].add(int(o[r]))
      # The window is the stored series from the origin on, mask and known alike.
      np.testing.assert_array_equal(np.asarray(out["series"])[0, r], np.arange(o[r], o[r] + w))
      np.testing.assert_array_equal(np.asarray(out["series_mask"])[0, r], mask[0, r, o[r]:o[r] + w])
      np.testing.assert_array_equal(np.asarray(out["series_floor"])[0, r],
                                    np.arange(o[r], o[r] + w) + 100.0)
    counts[o[1]] += 1
  assert seen == {0: {0, 4}, 1: {0, 1, 2, 3, 4}, 2: {0}}
  assert counts.min() > 50  # roughly uniform: 80 expected each


def test_band_calibration_on_validation():
  from mpjax import forecast
  rs = np.random.RandomState(0)
  q = (0.1, 0.5, 0.9)
  n, t, k = 400, 8, 2
  series = rs.randn(n, t) * 2.0  # true sd 2: the 80 % band is +-2.56
  mask = np.ones((n, t))
  narrow = np.stack([np.full((n, t - k), v) for v in (-0.64, 0.0, 0.64)], -1)  # a quarter too narrow
  assert forecast.band_coverage(narrow, series, mask, k) < 0.3
  s = forecast.band_scale(narrow, series, mask, k, q)
  assert 3.5 < s < 4.5
  cal = forecast.scale_bands(narrow, q, s)
  assert abs(forecast.band_coverage(cal, series, mask, k) - 0.8) < 0.02
  np.testing.assert_array_equal(cal[..., 1], narrow[..., 1])  # the median is untouched
  mask[:, k:] = 0
  assert forecast.band_scale(narrow, series, mask, k, q) == 1.0  # nothing to calibrate on


def test_extrinsic_input_conditions_the_forecast_and_is_required():
  model = randomize(mp3.MP3(CFG, 3, "cls_token", horizon=6, prefix_steps=2, quantiles=Q,
                            audio=False, dec_depth=1, num_extrinsic=4, rngs=nnx.Rngs(0)))
  _, ids, prefix, pmask = inputs()
  a = model(None, ids, prefix, pmask, extrinsic=jnp.zeros(ids.shape + (4,)))
  b = model(None, ids, prefix, pmask, extrinsic=jnp.full(ids.shape + (4,), 30.0))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
  with pytest.raises(ValueError, match="extrinsic"):
    model(None, ids, prefix, pmask)


def test_per_series_loss_weighs_every_series_the_same():
  k = 1
  series = jnp.asarray([[[5.0, 1.0, 1.0, 1.0, 1.0]], [[5.0, 2.0, 0.0, 0.0, 0.0]]])
  mask = jnp.asarray([[[1.0, 1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 0.0, 0.0, 0.0]]])
  zero = jnp.zeros((2, 1, 4, 1))
  loss = lambda per: float(mp3.forecast_loss(zero, series, mask, prefix_steps=k, quantiles=None,  # noqa: E731
                                             per_series=per))
  # Squared errors: series 0 has 4 points of 1, series 1 one point of 4.
  assert loss(False) == pytest.approx((4 * 1.0 + 4.0) / 5)  # pooled over 5 points
  assert loss(True) == pytest.approx((1.0 + 4.0) / 2)        # mean of the 2 series' means


def test_floor_input_reads_the_prefix_floor_and_only_when_asked():
  fb, ids, prefix, pmask = inputs(k=2)
  pmask = pmask.at[:, :, 1].set(0.0)  # day 2 off the chart: its floor is the news
  model = randomize(mp3.MP3(CFG, 3, "cls_token", horizon=6, prefix_steps=2, quantiles=Q,
                            audio=False, dec_depth=1, rngs=nnx.Rngs(0), floor_input=True))
  low, high = jnp.full(prefix.shape, 8.0), jnp.full(prefix.shape, 9.5)
  a = model(None, ids, prefix, pmask, prefix_floor=low)
  b = model(None, ids, prefix, pmask, prefix_floor=high)
  assert not np.allclose(a, b)
  unknown = model(None, ids, prefix, pmask, prefix_floor=jnp.zeros(prefix.shape))
  np.testing.assert_allclose(unknown, model(None, ids, prefix, pmask,
                                            prefix_floor=jnp.full(prefix.shape, -1.0)))
  with pytest.raises(ValueError, match="prefix_floor"):
    model(None, ids, prefix, pmask)
  plain = mp3.MP3(CFG, 3, "cls_token", horizon=6, prefix_steps=2, quantiles=Q, audio=False,
                  dec_depth=1, rngs=nnx.Rngs(0))
  assert plain.prefix_proj.kernel.shape[0] == 3 and model.prefix_proj.kernel.shape[0] == 4
