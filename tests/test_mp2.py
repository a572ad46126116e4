"""Regions (CLS tokens, embedding, none) and the MP2 regression model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mpjax.models import ast, mp2, regions

CFG = ast.config_for("tiny", depth=2, input_fdim=32, input_tdim=48, fstride=8, tstride=8)
X = np.random.RandomState(0).randn(3, 48, 32).astype(np.float32)


def model(mode, seed=0, num_regions=5):
  m = mp2.MP2(CFG, num_regions, mode, rngs=nnx.Rngs(seed))
  # The head starts at zero (prediction = head_bias); give it weights so outputs differ.
  m.head.kernel[...] = jax.random.normal(jax.random.key(seed), m.head.kernel.shape)
  return m


@pytest.mark.parametrize("mode", ["cls_token", "embedding"])
def test_several_regions_in_one_pass_equal_separate_passes(mode):
  m = model(mode)
  ids = np.array([[0, 3, 1], [2, 2, 4], [4, 0, 1]])
  together = m(X, ids)
  assert together.shape == (3, 3)
  for j in range(3):
    alone = m(X, ids[:, j])
    np.testing.assert_allclose(together[:, j], alone[:, 0], rtol=1e-5, atol=1e-5)
  # Regions really change the prediction.
  assert abs(float(together[0, 0] - together[0, 1])) > 1e-3
  # The same region twice gives the same number.
  np.testing.assert_allclose(together[1, 0], together[1, 1], rtol=1e-5)


def test_cls_token_outputs_do_not_leak_into_audio_tokens():
  """With region tokens prepended, the audio tokens' outputs are unchanged (mask works)."""
  m = model("cls_token")
  plain = m.encoder.encode(X)
  prefix = m.regions(np.array([[1, 2], [0, 3], [4, 4]]))
  with_prefix = m.encoder.encode(X, prefix_tokens=prefix)
  np.testing.assert_allclose(with_prefix[:, 2:], plain, rtol=1e-5, atol=1e-5)


def test_none_mode_broadcasts_pooled_output():
  m = model("none")
  y = m(X, np.array([[0, 1], [2, 3], [4, 4]]))
  np.testing.assert_allclose(y[:, 0], y[:, 1])
  pooled = m.encoder(X)
  np.testing.assert_allclose(y[:, 0], m.head(m.head_norm(pooled))[:, 0], rtol=1e-6)


def test_encode_regions_and_errors():
  vocab = ["global", "id", "kr", "vn"]
  np.testing.assert_array_equal(regions.encode_regions([["kr", "id"], ["vn", "kr"]], vocab),
                                [[2, 1], [3, 2]])
  with pytest.raises(ValueError, match=r"unknown region\(s\) \['xx'\]"):
    regions.encode_regions(["kr", "xx"], vocab)
  m = model("cls_token", num_regions=4)
  with pytest.raises(ValueError, match=r"unknown region id\(s\) \[4\]"):
    m(X, np.array([0, 1, 4]))
  with pytest.raises(ValueError, match=r"unknown region id\(s\) \[-1\]"):
    model("none", num_regions=4)(X, np.array([0, -1, 2]))
  with pytest.raises(ValueError, match="integers"):
    m(X, np.array([0.0, 1.0, 2.0]))
  with pytest.raises(ValueError, match=r"regions must be \[batch=3, R\]"):
    m(X, np.array([0, 1]))
  with pytest.raises(ValueError, match="unknown region mode 'token'"):
    mp2.MP2(CFG, 4, "token", rngs=nnx.Rngs(0))


def test_encoder_weights_are_used():
  enc = ast.init(CFG, seed=7)
  m = mp2.MP2(CFG, 3, "none", rngs=nnx.Rngs(0), encoder=enc)
  np.testing.assert_array_equal(m.encoder.pos_embed[...], enc.pos_embed[...])
  other = ast.init(ast.config_for("tiny", depth=1, input_fdim=32, input_tdim=48, fstride=8, tstride=8))
  with pytest.raises(ValueError, match="encoder config"):
    mp2.MP2(CFG, 3, "none", rngs=nnx.Rngs(0), encoder=other)


@pytest.mark.parametrize("mode", ["cls_token", "embedding"])
def test_jitted_adamw_steps_reduce_loss_and_train_region_params(mode):
  m = mp2.MP2(CFG, 4, mode, rngs=nnx.Rngs(1), head_bias=3.0)
  ids = np.array([[0, 1], [2, 3], [1, 0]])
  y = np.array([[1.0, 5.0], [4.0, 2.0], [6.0, 0.5]], np.float32)
  opt = nnx.Optimizer(m, optax.adamw(3e-3), wrt=nnx.Param)
  before = np.array(m.regions.table[...])

  @nnx.jit
  def step(m, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(X, ids) - y) ** 2))(m)
    opt.update(m, g)
    return loss

  losses = [float(step(m, opt)) for _ in range(25)]
  assert losses[-1] < 0.5 * losses[0]
  after = np.array(m.regions.table[...])
  assert np.abs(after - before).max() > 1e-4


def test_several_targets_one_head_output_each():
  m = mp2.MP2(CFG, 4, "cls_token", rngs=nnx.Rngs(0), head_bias=[15.0, -0.2], num_targets=2)
  r = np.array([[0, 2], [1, 3], [3, 0]], np.int32)
  allt = m.all_targets(jnp.asarray(X), r)
  assert allt.shape == (3, 2, 2)
  np.testing.assert_allclose(allt[..., 0], 15.0)  # zero kernel: each head starts at its bias
  np.testing.assert_allclose(allt[..., 1], -0.2, rtol=1e-6)
  m.head.kernel[...] = jax.random.normal(jax.random.key(1), m.head.kernel.shape)
  allt = m.all_targets(jnp.asarray(X), r)
  np.testing.assert_array_equal(m(jnp.asarray(X), r), allt[..., 0])  # __call__: the first
  assert not np.allclose(allt[..., 0] - 15.0, allt[..., 1] + 0.2)  # two distinct heads
  with pytest.raises(ValueError, match="num_targets"):
    mp2.MP2(CFG, 4, "cls_token", rngs=nnx.Rngs(0), num_targets=0)


def test_mp2_targets_config_is_checked():
  import ml_collections
  from mpjax.models import factory
  c = ml_collections.ConfigDict({"mp2": {"targets": ("longevity", "mp2")}})
  assert factory.mp2_targets(c) == ("longevity", "mp2")
  assert factory.mp2_targets(ml_collections.ConfigDict({})) == ("mp2",)
  for bad in ((), ("mp2", "mp2"), ("mp2", "late")):
    with pytest.raises(ValueError, match=r"config\.mp2\.targets"):
      factory.mp2_targets(ml_collections.ConfigDict({"mp2": {"targets": bad}}))


def test_within_region_r2_and_region_means_baseline():
  from mpjax import metrics
  rng = np.random.default_rng(0)
  ids = np.repeat([0, 1], 200)
  level = np.where(ids == 0, 10.0, 14.0)
  signal = rng.normal(size=400)
  target = level + signal
  w = np.ones(400)
  # Region means alone: a high pooled R², 0 within regions.
  m = metrics.per_region(level, target, w, ids, ["a", "b"])
  assert m["r2"] > 0.7 and abs(m["within_region_r2"]) < 0.02
  assert m["region_means_r2"] == pytest.approx(m["r2"], abs=0.02)
  # The within-region signal: within-region R² 1.
  m = metrics.per_region(target, target, w, ids, ["a", "b"])
  assert m["within_region_r2"] == pytest.approx(1.0)
  assert m["within_region_r2"] == pytest.approx(np.mean([m["a/r2"], m["b/r2"]]))


def test_two_targets_weigh_alike_in_the_loss(tmp_path):
  """loss_weights = (sd of the first / sd of each)²: a target in small units (the longevity
  slope) counts as much as the summed streams."""
  import ml_collections
  from mpjax import tasks
  task = tasks.get(ml_collections.ConfigDict({"task": "mp2"}))
  c = ml_collections.ConfigDict({"task": "mp2", "mp2": {"targets": ("mp2", "longevity")}})
  manifest = {"target_stats": {"mp2_mean": 15.0, "mp2_std": 2.0, "longevity_mean": -0.2,
                               "longevity_std": 0.1}}
  task.check_data(c, manifest, str(tmp_path))
  assert c.mp2.loss_weights == pytest.approx((1.0, 400.0))
  w = jnp.ones((2, 3))
  batch = {"mp2": jnp.full((2, 3), 15.0), "mp2_weight": w,
           "longevity": jnp.full((2, 3), -0.2), "longevity_weight": w}
  out = jnp.stack([jnp.full((2, 3), 17.0), jnp.full((2, 3), -0.1)], -1)  # one sd off each
  assert float(task.loss(out, batch, c)) == pytest.approx((4.0 + 400.0 * 0.01) / 2)
  one = ml_collections.ConfigDict({"task": "mp2", "mp2": {"targets": ("mp2",)}})
  task.check_data(one, manifest, str(tmp_path))
  assert "loss_weights" not in one.mp2  # one target: the plain MSE, as before
  bad = {"target_stats": {**manifest["target_stats"], "longevity_std": None}}
  with pytest.raises(ValueError, match="longevity"):
    task.check_data(ml_collections.ConfigDict({"task": "mp2", "mp2": {"targets": ("mp2", "longevity")}}),
                    bad, str(tmp_path))


def test_eval_crops_average_the_predictions_of_each_crop():
  """input.eval_crops = C gives fbank [B, C, T, F]; MP2 predicts each crop and averages."""
  from mpjax import tasks
  m = mp2.MP2(CFG, 4, "cls_token", rngs=nnx.Rngs(0), num_targets=2)
  m.head.kernel[...] = jax.random.normal(jax.random.key(1), m.head.kernel.shape)
  crops = np.random.RandomState(1).randn(3, 2, 48, 32).astype(np.float32)
  r = np.array([[0, 2], [1, 3], [3, 0]], np.int32)
  got = tasks.MP2Task().forward(m, {"fbank": jnp.asarray(crops), "region_ids": r}, None)
  each = [m.all_targets(jnp.asarray(crops[:, c]), r) for c in range(2)]
  assert got.shape == (3, 2, 2)
  np.testing.assert_allclose(got, (each[0] + each[1]) / 2, rtol=1e-4, atol=1e-5)
  assert not np.allclose(each[0], each[1])  # the crops differ, so the mean is not either one
