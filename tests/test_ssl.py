"""SSL (SSAST) pretraining: masking, the loss learning, audio-only datasets, init_from into MP2."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import mp2 as mp2_config
from configs import ssl as ssl_config
from data_prep import build, synthetic
from mpjax import checkpoint, sharding, tasks, train
from mpjax.models import factory
from mpjax.input import pipeline, tfrecord
from mpjax.models import ast as ast_lib
from mpjax.models import ssl as ssl_lib

from fakes import tiny_train


def tiny_cfg(**kw):
  return ast_lib.config_for("tiny", depth=1, input_tdim=64, fstride=16, tstride=16, dtype="float32",
                            **kw)


# -- masking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5, 0.75, 0.99])
def test_mask_count_follows_the_ratio_and_never_masks_everything(ratio):
  cfg = tiny_cfg()  # 8 x 4 = 32 patches
  n = cfg.num_patches
  m = ssl_lib.num_masked(cfg, ratio)
  assert 2 <= m <= n - 1
  if 2 / n <= ratio <= (n - 1) / n:
    assert m == round(ratio * n)
  for cluster in (1, 3):
    idx = np.asarray(ssl_lib.mask_indices(jax.random.split(jax.random.key(0), 16), cfg.grid, m, cluster))
    assert idx.shape == (16, m)
    assert idx.min() >= 0 and idx.max() < n
    assert all(len(set(row)) == m for row in idx)  # distinct: exactly m masked per clip


def test_a_clip_mask_follows_its_record_not_its_row():
  """Two processes hold a global batch's examples in another row order: masks keyed per record."""
  config = ssl_config.get_config("demo")
  config.model.update(input_tdim=64)
  fb = jnp.zeros((4, 64, 128))
  rec = jnp.asarray([7, 3, 9, 1], jnp.int32)
  a = tasks.with_mask({"fbank": fb, "record": rec}, config, jax.random.key(5))["mask_idx"]
  perm = jnp.asarray([2, 0, 3, 1])
  b = tasks.with_mask({"fbank": fb, "record": rec[perm]}, config, jax.random.key(5))["mask_idx"]
  np.testing.assert_array_equal(np.asarray(a)[np.asarray(perm)], np.asarray(b))
  assert len({tuple(np.sort(r)) for r in np.asarray(a)}) == 4  # different clips, different masks


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1])
def test_bad_mask_ratio_is_refused(ratio):
  with pytest.raises(ValueError, match="mask_ratio"):
    ssl_lib.num_masked(tiny_cfg(), ratio)


def _neighbour_share(idx, grid):
  """Share of masked patches with a masked 4-neighbour."""
  fp, tp = grid
  out = []
  for row in idx:
    mask = np.zeros(fp * tp, bool)
    mask[row] = True
    mask = mask.reshape(fp, tp)
    pad = np.pad(mask, 1)
    nb = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
    out.append((nb & mask).sum() / mask.sum())
  return float(np.mean(out))


def test_cluster_masking_masks_neighbours_together():
  grid, count = (8, 32), 40  # 256 patches, 16 % masked
  rand = np.asarray(ssl_lib.mask_indices(jax.random.split(jax.random.key(1), 64), grid, count, 1))
  clus = np.asarray(ssl_lib.mask_indices(jax.random.split(jax.random.key(1), 64), grid, count, 3))
  assert _neighbour_share(clus, grid) > _neighbour_share(rand, grid) + 0.3


# -- the model and its loss -------------------------------------------------------------------------


def _structured_fbank(rng, b, cfg):
  """Clips with learnable structure: a few frequency bands, each rising and falling in time."""
  t = np.arange(cfg.input_tdim)[None, :, None]
  f = np.arange(cfg.input_fdim)[None, None, :]
  band = rng.integers(10, 110, size=(b, 1, 1))
  rate = rng.uniform(0.05, 0.3, size=(b, 1, 1))
  x = np.exp(-0.5 * ((f - band) / 6.0) ** 2) * (1 + np.sin(rate * t)) - 0.5
  return jnp.asarray(x + 0.05 * rng.standard_normal(x.shape), jnp.float32)


def test_model_shapes_and_targets_are_the_masked_patches():
  cfg = tiny_cfg()
  model = ssl_lib.SSAST(cfg, rngs=nnx.Rngs(0))
  fb = _structured_fbank(np.random.default_rng(0), 2, cfg)
  idx = ssl_lib.mask_indices(jax.random.split(jax.random.key(0), 2), cfg.grid, 10)
  c, r, target = model(fb, idx)
  assert c.shape == r.shape == target.shape == (2, 10, 256)
  # Patch (fi, ti) is token fi * Tp + ti and holds fbank[ti*16:(ti+1)*16, fi*16:(fi+1)*16].T.
  fi, ti = divmod(int(idx[1, 3]), cfg.grid[1])
  want = np.asarray(fb[1, ti * 16:(ti + 1) * 16, fi * 16:(fi + 1) * 16]).T.reshape(-1)
  np.testing.assert_allclose(np.asarray(target[1, 3]), want, rtol=1e-6)


def test_masked_patch_content_does_not_reach_the_encoder():
  cfg = tiny_cfg()
  model = ssl_lib.SSAST(cfg, rngs=nnx.Rngs(0))
  fb = _structured_fbank(np.random.default_rng(0), 1, cfg)
  idx = jnp.asarray([[0, 5, 9]], jnp.int32)
  c1, r1, _ = model(fb, idx)
  # Change only what lies under patch 5 (fi 1, ti 1): the predictions must not move.
  fb2 = fb.at[0, 16:32, 16:32].add(3.0)
  c2, r2, t2 = model(fb2, idx)
  np.testing.assert_allclose(np.asarray(c1), np.asarray(c2), atol=1e-5)
  np.testing.assert_allclose(np.asarray(r1), np.asarray(r2), atol=1e-5)
  assert not np.allclose(np.asarray(t2[0, 1]), np.asarray(fb[0, 16:32, 16:32]).T.reshape(-1))


def test_ssl_loss_decreases_on_a_tiny_config():
  cfg = tiny_cfg()
  model = ssl_lib.SSAST(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(1e-3)
  opt = tx.init(params)
  rng = np.random.default_rng(0)
  m = ssl_lib.num_masked(cfg, 0.5)

  @jax.jit
  def step(params, opt, fb, key):
    idx = ssl_lib.mask_indices(jax.random.split(key, fb.shape[0]), cfg.grid, m, 2)
    def f(p):
      return ssl_lib.loss(nnx.merge(graphdef, p)(fb, idx), 10.0)
    loss, g = jax.value_and_grad(f)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses = []
  for s in range(60):
    params, opt, loss = step(params, opt, _structured_fbank(rng, 8, cfg), jax.random.key(s))
    losses.append(float(loss))
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
  eval_fb = _structured_fbank(np.random.default_rng(9), 8, cfg)  # held-out clips, fixed masks
  idx = ssl_lib.mask_indices(jax.random.split(jax.random.key(99), 8), cfg.grid, m, 2)
  nce0, mse0, _ = ssl_lib.losses(*model(eval_fb, idx))
  nce1, mse1, _ = ssl_lib.losses(*nnx.merge(graphdef, params)(eval_fb, idx))
  assert float(nce1.mean()) < float(nce0.mean()) and float(mse1.mean()) < 0.7 * float(mse0.mean())


# -- audio-only data, the train loop, init_from ----------------------------------------------------


@pytest.fixture(scope="module")
def audio_only(tmp_path_factory):
  raw = str(tmp_path_factory.mktemp("raw_ssl"))
  out = str(tmp_path_factory.mktemp("ds_ssl"))
  synthetic.generate(raw, seed=3, n_songs=24, n_artists=6, regions=("us", "kr"), clip_seconds=5.5,
                     weeks=30, fit_chart_oracle=False)
  os.remove(os.path.join(raw, "charts.csv"))  # audio-only never reads the charts
  manifest = build.build(build.BuildConfig(raw=raw, out=out, progress=False, audio_only=True,
                                           records_per_shard=8))
  return out, manifest, raw


def test_audio_only_build_writes_every_clip_without_targets(audio_only):
  out, manifest, raw = audio_only
  import pandas as pd
  clips = pd.read_csv(os.path.join(raw, "clips.csv"))
  counts = manifest["counts"]
  assert sum(counts[s]["records"] for s in counts) == len(clips)  # charting or not
  assert manifest["audio_only"] and manifest["regions"] == []
  songs = [set() for _ in range(3)]
  for j, split in enumerate(("train", "val", "test")):
    for shard in manifest["shards"][split]:
      for data in tfrecord.iter_records(os.path.join(out, shard)):
        ex = tfrecord.decode_example(data)
        assert len(ex["regions"]) == 0 and len(ex["series"]) == 0
        assert int(ex["fbank_shape"][0]) > 0
        songs[j].add(ex["song_id"][0])
  assert not (songs[0] & songs[1]) and not (songs[0] & songs[2]) and not (songs[1] & songs[2])
  batch = next(iter(pipeline.make_dataset(out, "train", cfg={"batch_size": 4, "input_tdim": 64},
                                          train=True)))
  assert batch["fbank"].shape == (4, 64, 128) and batch["region_mask"].sum() == 0


def test_audio_only_refuses_a_time_split(tmp_path):
  with pytest.raises(ValueError, match="--audio-only"):
    build.BuildConfig(raw=str(tmp_path), out=str(tmp_path / "o"), audio_only=True,
                      split_by="cutoff", cutoff="2025-01-01").check()


def test_init_from_an_ssl_checkpoint_loads_the_encoder_and_nothing_else(audio_only, tmp_path):
  data, _, _ = audio_only
  c = tiny_train(ssl_config.get_config("demo"), data)
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.total_steps = 4
  c.eval_every = 4
  result = train.train_and_evaluate(c, str(tmp_path / "ssl"))
  assert np.isfinite(result["val/loss"]) and 0 <= result["val/acc"] <= 1
  src = checkpoint.read_checkpoint_params(str(tmp_path / "ssl" / "checkpoints"))
  assert "mask_token" in src and any(k.startswith("recon_head/") for k in src)

  m = tiny_train(mp2_config.get_config("demo"), data)
  mp2 = factory.build_model(m, {"regions": ["kr", "us"]})
  before = {sharding.path_str(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(mp2, nnx.Param))}
  report = checkpoint.init_from(mp2, str(tmp_path / "ssl" / "checkpoints"))
  encoder = {k for k in before if k.startswith("encoder/")}
  assert set(report["loaded"]) == encoder and encoder
  assert set(report["absent"]) == set(before) - encoder and not report["reinit"]
  after = {sharding.path_str(p): np.asarray(v)
           for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(mp2, nnx.Param))}
  for k in encoder:
    np.testing.assert_array_equal(after[k], src[k])
  for k in set(before) - encoder:
    np.testing.assert_array_equal(after[k], before[k])


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_ssl_step_traced_here_lowers_for_accelerators(platform):
  """The whole SSL train step (masks, encoder, heads, AdamW) traced on this CPU host lowers for
  GPU and TPU in bfloat16: splash attention (a TPU custom call) on TPU only."""
  import re
  config = ssl_config.get_config("demo")
  config.model.update(dtype="bfloat16", depth=2, input_tdim=64)
  cfg = factory.model_config(config)
  graphdef, params = nnx.split(ssl_lib.SSAST(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  tx = train.make_optimizer(config, params, cfg.depth)
  step, _ = train.make_steps(graphdef, tx, None, config)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  batch = {"fbank": jnp.zeros((2, 64, 128), jnp.float32), "record": jnp.arange(2, dtype=jnp.int32)}
  text = jax.jit(step).trace(state, batch).lower(lowering_platforms=(platform,)).as_text()
  calls = set(re.findall(r"custom_call @([\w$.]+)", text))
  assert ("tpu_custom_call" in calls) == (platform == "tpu"), calls
