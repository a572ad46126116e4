"""Forecast baselines against hand-computed values on tiny series."""
import math

import numpy as np
import pytest

from mpjax import baselines

# One fully observed row: k = 3 prefix [10, 9, 8.5], forecast steps 3, 4, 5 (H = 3).
ROW = np.array([[10.0, 9.0, 8.5, 7.0, 6.0, 5.0]])
ONES = np.ones_like(ROW)


def test_last_value():
  np.testing.assert_array_equal(baselines.last_value(ROW, ONES, 3), [[8.5, 8.5, 8.5]])


def test_seasonal_naive_repeats_last_season():
  # m = 2: steps k-2, k-1 = 1, 2 -> [9, 8.5, 9].
  np.testing.assert_array_equal(baselines.seasonal_naive(ROW, ONES, 3, 2), [[9.0, 8.5, 9.0]])
  # m = 1 is the last value; m = 3 repeats the whole prefix.
  np.testing.assert_array_equal(baselines.seasonal_naive(ROW, ONES, 3, 1), [[8.5, 8.5, 8.5]])
  np.testing.assert_array_equal(baselines.seasonal_naive(ROW, ONES, 3, 3), [[10.0, 9.0, 8.5]])


def test_seasonal_naive_fallbacks():
  # k < m: last observed value.
  np.testing.assert_array_equal(baselines.seasonal_naive(ROW, ONES, 3, 7), [[8.5, 8.5, 8.5]])
  # Step 1 unobserved: h = 0, 2 (source step 1) fall back to the last observed value 8.5.
  mask = np.array([[1, 0, 1, 1, 1, 1]])
  np.testing.assert_array_equal(baselines.seasonal_naive(ROW, mask, 3, 2), [[8.5, 8.5, 8.5]])
  # Step 2 unobserved: last observed is 9 (step 1); h = 1 (source step 2) uses it.
  mask = np.array([[1, 1, 0, 1, 1, 1]])
  np.testing.assert_array_equal(baselines.seasonal_naive(ROW, mask, 3, 2), [[9.0, 9.0, 9.0]])


def test_exp_decay_hand_values():
  # Least squares on t = 0, 1, 2: slope -0.75, mean y = 27.5 / 3 at mean t = 1.
  pred = baselines.exp_decay(ROW, ONES, 3)
  np.testing.assert_allclose(pred, [[23 / 3, 20.75 / 3, 18.5 / 3]], rtol=1e-12)


def test_exp_decay_clips_growth_and_floors():
  up = np.array([[1.0, 2.0, 3.0, 0.0, 0.0]])
  # Growing prefix: slope clipped to 0 -> prefix mean 2.
  np.testing.assert_allclose(baselines.exp_decay(up, np.ones_like(up), 3), [[2.0, 2.0]])
  down = np.array([[2.0, 1.0, 0.0, 0.0, 0.0]])
  m = np.ones_like(down)
  np.testing.assert_allclose(baselines.exp_decay(down, m, 3), [[0.0, 0.0]])
  np.testing.assert_allclose(baselines.exp_decay(down, m, 3, floor=None), [[-1.0, -2.0]])


def test_power_decay_recovers_power_law():
  t = np.arange(6.0)
  row = (5.0 - 2.0 * np.log(t + 1))[None]
  pred = baselines.power_decay(row, np.ones_like(row), 3)
  # 5 - 2 ln 4, 5 - 2 ln 5, 5 - 2 ln 6
  np.testing.assert_allclose(pred, [[2.2274112778, 1.7811241751, 1.4164810615]], rtol=1e-9)
  up = np.array([[1.0, 2.0, 3.0, 0.0]])
  np.testing.assert_allclose(baselines.power_decay(up, np.ones_like(up), 3), [[2.0]])


def test_trend_fallbacks_to_last_value():
  series = np.array([[10.0, 9.0, 8.0, 1.0, 1.0],   # one observed prefix point (step 0)
                     [4.0, 3.0, 2.0, 1.0, 1.0],    # unobserved prefix at 1 -> fit on steps 0, 2
                     [7.0, 7.0, 7.0, 1.0, 1.0]])   # no observed prefix -> 0
  mask = np.array([[1, 0, 0, 1, 1], [1, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
  for fn in (baselines.exp_decay, baselines.power_decay):
    pred = fn(series, mask, 3)
    assert pred.shape == (3, 2) and np.all(np.isfinite(pred))
    np.testing.assert_array_equal(pred[0], [10.0, 10.0])
    np.testing.assert_array_equal(pred[2], [0.0, 0.0])
  # Line through (0, 4), (2, 2): slope -1 -> 1, 0.
  np.testing.assert_allclose(baselines.exp_decay(series, mask, 3)[1], [1.0, 0.0], atol=1e-12)
  np.testing.assert_array_equal(baselines.last_value(series, mask, 3)[:, 0], [10.0, 2.0, 0.0])


# Training set for train_drift: k = 2, T = 4 (H = 2).
TR_SERIES = np.array([[5.0, 4.0, 3.0, 2.0],    # region 0, last 4, drift [-1, -2]
                      [6.0, 6.0, 5.0, 0.0],    # region 0, last 6, drift [-1, (masked)]
                      [3.0, 0.0, 4.0, 4.0]])   # region 1, last 3 (step 0), drift [1, 1]
TR_MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1]])
TR_REG = np.array([0, 0, 1])


def test_train_drift_hand_values():
  f = baselines.train_drift(TR_SERIES, TR_MASK, TR_REG, 2, 3)
  test = np.array([[0.0, 7.0, 0.0, 0.0],   # region 0, last 7 -> 7 + [-1, -2]
                   [0.0, 2.0, 0.0, 0.0],   # region 1, last 2 -> 2 + [1, 1]
                   [0.0, 1.0, 0.0, 0.0],   # region 2 (no training data): all-region [-1/3, -1/2]
                   [9.0, 9.0, 0.0, 0.0]])  # region 0, no observed prefix: level [4, 2]
  mask = np.array([[0, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
  pred = f(test, mask, np.array([0, 1, 2, 0]))
  np.testing.assert_allclose(pred, [[6.0, 5.0], [3.0, 3.0], [2 / 3, 0.5], [4.0, 2.0]],
                             rtol=1e-12)


def test_train_drift_step_without_data_is_zero_drift():
  mask = TR_MASK.copy()
  mask[:, 3] = 0
  f = baselines.train_drift(TR_SERIES, mask, TR_REG, 2, 2)
  pred = f(np.array([[0.0, 7.0, 0.0, 0.0]]), np.ones((1, 4)), np.array([0]))
  np.testing.assert_allclose(pred, [[6.0, 7.0]])


def test_train_drift_k0_is_mean_level():
  f = baselines.train_drift(TR_SERIES, TR_MASK, TR_REG, 0, 2)
  pred = f(np.zeros((2, 4)), np.zeros((2, 4)), np.array([0, 1]))
  # Region 1 step 1 has no data: all-region mean of step 1 = (4 + 6) / 2.
  np.testing.assert_allclose(pred, [[5.5, 5.0, 4.0, 2.0], [3.0, 5.0, 4.0, 4.0]])


def test_extrinsic_ridge_recovers_linear_relation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 2)) * [3.0, 0.5] + [1.0, -2.0]
  reg = rng.integers(0, 2, size=60)
  h = np.arange(4)
  y = 1.0 + 2.0 * x[:, :1] - x[:, 1:] + 0.5 * h + 3.0 * reg[:, None]
  series = np.concatenate([np.zeros((60, 1)), y], axis=1)  # k = 1, T = 5
  f = baselines.extrinsic_regressor(x, series, np.ones_like(series), reg, 1, 2, alpha=1e-8)
  xt = np.array([[0.0, 0.0], [2.0, 1.0], [-1.0, -3.0]])
  rt = np.array([0, 1, 0])
  want = 1.0 + 2.0 * xt[:, :1] - xt[:, 1:] + 0.5 * h + 3.0 * rt[:, None]
  np.testing.assert_allclose(f(xt, rt), want, atol=1e-5)


def test_extrinsic_ridge_no_features_and_sparse_steps():
  series = np.array([[0.0, 1.0, 5.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]])
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
  f = baselines.extrinsic_regressor(np.zeros((3, 0)), series, mask, np.array([0, 0, 1]), 1, 2,
                                    alpha=1e-9)
  pred = f(np.zeros((2, 0)), np.array([0, 1]))
  # Step 1: region means 2 and 10. Step 2: one row -> its value 5. Step 3: none -> mean of all
  # observed forecast-window values (1 + 3 + 10 + 5) / 4.
  np.testing.assert_allclose(pred, [[2.0, 5.0, 4.75], [10.0, 5.0, 4.75]], atol=1e-6)


def test_run_all_keys_and_shapes():
  rng = np.random.default_rng(1)
  def split(n):
    return {"series": rng.normal(5, 1, size=(n, 8)), "mask": rng.random((n, 8)) > 0.2,
            "region_ids": rng.integers(0, 3, size=n), "extrinsic": rng.normal(size=(n, 4))}
  train, test = split(20), split(7)
  out = baselines.run_all(train, test, 3, 2, 3)
  assert sorted(out) == sorted(["seasonal_naive", "last_value", "exp_decay", "power_decay",
                                "mean_last7", "prefix_ridge", "prefix_boosted", "train_drift",
                                "extrinsic_ridge"])
  for v in out.values():
    assert v.shape == (7, 5) and v.dtype == np.float64 and np.all(np.isfinite(v))
  del test["extrinsic"], train["extrinsic"]
  out0 = baselines.run_all(train, test, 0, 2, 3)
  assert sorted(out0) == ["extrinsic_ridge", "train_drift"]
  assert all(v.shape == (7, 8) for v in out0.values())


def test_mean_last_hand_values():
  y = np.array([[1.0, 2.0, 3.0, 9.0, 9.0],
                [4.0, 8.0, 5.0, 9.0, 9.0],
                [7.0, 7.0, 7.0, 9.0, 9.0]])
  m = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(baselines.mean_last(y, m, 3, 7), [[2.0] * 2, [4.5] * 2, [0.0] * 2])
  np.testing.assert_array_equal(baselines.mean_last(y, m, 3, 2), [[2.5] * 2, [5.0] * 2, [0.0] * 2])
  with pytest.raises(ValueError, match="window"):
    baselines.mean_last(y, m, 3, 0)


def test_prefix_features_hand_values():
  y = np.array([[10.0, 12.0, 11.0]])
  m = np.array([[1, 1, 1]])
  f = baselines.prefix_features(y, m, 2, [1], 3)
  # shape rel. to last (12): [-2, 0]; flags [1, 1]; level 12; slope 2; has 1; region one-hot
  np.testing.assert_array_equal(f, [[-2.0, 0.0, 1.0, 1.0, 12.0, 2.0, 1.0, 0.0, 1.0, 0.0]])


@pytest.mark.parametrize("fit", [baselines.prefix_ridge, baselines.prefix_boosted])
def test_prefix_regressors_learn_a_shape_rule(fit):
  # Every training curve drops by 1.5 per step after the prefix whatever its level: both
  # global models forecast last value - 1.5 h (the ridge's slope on the level is shrunk to ~0;
  # the trees split on nothing useful and predict the common change).
  rng = np.random.default_rng(0)
  n, k, t = 200, 3, 6
  level = rng.uniform(8, 14, n)
  y = level[:, None] + np.concatenate([rng.normal(0, 0.1, (n, k)),
                                       -1.5 * np.arange(1, t - k + 1)[None, :].repeat(n, 0)
                                       + rng.normal(0, 0.01, (n, t - k))], 1)
  y[:, k:] += (y[:, k - 1] - level)[:, None]  # relative to the last prefix value
  m = np.ones_like(y)
  ids = rng.integers(0, 2, n)
  f = fit(y, m, ids, k, 2)
  test = np.array([[10.0, 10.2, 10.1, 0, 0, 0], [13.0, 12.8, 13.3, 0, 0, 0]])
  pred = f(test, np.array([[1, 1, 1, 0, 0, 0]] * 2), np.array([0, 1]))
  expect = test[:, 2:3] - 1.5 * np.arange(1, 4)[None, :]
  np.testing.assert_allclose(pred, expect, atol=0.15)
  # A row without an observed prefix gets train_drift's forecast (the mean level per step).
  empty = f(np.zeros((1, t)), np.zeros((1, t)), np.array([0]))
  drift = baselines.train_drift(y, m, ids, k, 2)(np.zeros((1, t)), np.zeros((1, t)), [0])
  np.testing.assert_array_equal(empty, drift)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="mask"):
    baselines.last_value(ROW, np.ones((1, 5)), 3)
  with pytest.raises(ValueError, match="series"):
    baselines.last_value(ROW[0], ONES[0], 3)
  with pytest.raises(ValueError, match="k"):
    baselines.last_value(ROW, ONES, 6)
  with pytest.raises(ValueError, match="k"):
    baselines.seasonal_naive(ROW, ONES, 0, 1)
  with pytest.raises(ValueError, match="m "):
    baselines.seasonal_naive(ROW, ONES, 3, 0)
  with pytest.raises(ValueError, match="train_region_ids"):
    baselines.train_drift(TR_SERIES, TR_MASK, np.array([0, 0, 2]), 2, 2)
  f = baselines.train_drift(TR_SERIES, TR_MASK, TR_REG, 2, 2)
  with pytest.raises(ValueError, match="region_ids"):
    f(TR_SERIES, TR_MASK, np.array([0, 1]))
  with pytest.raises(ValueError, match="training T"):
    f(TR_SERIES[:, :3], TR_MASK[:, :3], TR_REG)
  g = baselines.extrinsic_regressor(np.zeros((3, 2)), TR_SERIES, TR_MASK, TR_REG, 2, 2)
  with pytest.raises(ValueError, match="extrinsic.*F = 2"):
    g(np.zeros((3, 1)), TR_REG)
  with pytest.raises(ValueError, match="train_extrinsic"):
    baselines.extrinsic_regressor(np.zeros((2, 2)), TR_SERIES, TR_MASK, TR_REG, 2, 2)
  assert math.isfinite(g(np.full((3, 2), np.nan), TR_REG).sum())


# ----------------------------------------------------------------------------- known / weekday

def test_prefix_features_known_and_weekday_hand_values():
  # k = 3, T = 5, R = 2. Row 0: all observed, Friday. Row 1: step 1 off chart (known, unobserved),
  # Monday. Row 2: step 0 missing (unknown), step 2 off chart, weekday unknown (-1).
  y = np.array([[10.0, 11.0, 12.0, 0.0, 0.0],
                [8.0, 5.0, 6.0, 0.0, 0.0],
                [7.0, 9.0, 3.0, 0.0, 0.0]])
  m = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
  known = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], bool)
  f = baselines.prefix_features(y, m, 3, [0, 1, 0], 2, known=known, weekday=[4, 0, -1])
  # rel (3) | observed (3) | level, slope, has | region (2) | off chart (3) | weekday (7)
  want = [[-2, -1, 0, 1, 1, 1, 12, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
          [2, 0, 0, 1, 0, 1, 6, -1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0],
          [0, 0, 0, 0, 1, 0, 9, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]]
  np.testing.assert_array_equal(f, np.array(want, np.float64))
  # 0/1 ints work like bools; each new block alone sits after the old columns.
  np.testing.assert_array_equal(
      baselines.prefix_features(y, m, 3, [0, 1, 0], 2, known=known.astype(int)), f[:, :14])
  np.testing.assert_array_equal(
      baselines.prefix_features(y, m, 3, [0, 1, 0], 2, weekday=[4, 0, -1]),
      np.concatenate([f[:, :11], f[:, 14:]], axis=1))


def _random_split(rng, n, t=8, regions=3):
  return {"series": rng.normal(5, 1, size=(n, t)), "mask": rng.random((n, t)) > 0.3,
          "region_ids": rng.integers(0, regions, size=n), "extrinsic": rng.normal(size=(n, 2)),
          "known": rng.random((n, t)) > 0.3, "weekday": rng.integers(-1, 7, size=n)}


def test_defaults_keep_the_old_features_and_forecasts():
  from sklearn.linear_model import Ridge
  rng = np.random.default_rng(2)
  train, test = _random_split(rng, 40, t=5), _random_split(rng, 9, t=5)  # H = 2: fewer fits
  k, r = 3, 3
  ys, ms, ids = train["series"], train["mask"], train["region_ids"]
  old = baselines.prefix_features(ys, ms, k, ids, r)
  assert old.shape == (40, 2 * k + 3 + r)
  new = baselines.prefix_features(ys, ms, k, ids, r, train["known"], train["weekday"])
  assert new.shape == (40, 3 * k + 3 + r + 7)
  np.testing.assert_array_equal(new[:, :old.shape[1]], old)
  # prefix_ridge without the new args = a ridge per step on the old 2k + 3 + R columns.
  tes, tem, tei = test["series"], test["mask"], test["region_ids"]
  pred = baselines.prefix_ridge(ys, ms, ids, k, r)(tes, tem, tei)
  last, has = baselines._last_observed(ys, ms, k)
  lt, ht = baselines._last_observed(tes, tem, k)
  want = baselines.train_drift(ys, ms, ids, k, r)(tes, tem, tei)
  xt = baselines.prefix_features(tes[ht], tem[ht], k, tei[ht], r)
  assert xt.shape[1] == 2 * k + 3 + r
  for h in range(ys.shape[1] - k):
    rows = has & ms[:, k + h]
    mdl = Ridge(alpha=1.0).fit(old[rows], ys[rows, k + h] - last[rows])
    want[ht, h] = lt[ht] + mdl.predict(xt)
  np.testing.assert_array_equal(pred, want)
  # run_all: without the keys, or with a key on one side only (ignored), the same forecasts;
  # with both keys on both sides only the prefix models change.
  bare = [{key: v for key, v in d.items() if key not in ("known", "weekday")}
          for d in (train, test)]
  out = baselines.run_all(*bare, k, 2, r)
  np.testing.assert_array_equal(out["prefix_ridge"], pred)
  np.testing.assert_array_equal(
      out["prefix_boosted"], baselines.prefix_boosted(ys, ms, ids, k, r)(tes, tem, tei))
  one_sided = baselines.run_all(dict(bare[0], known=train["known"]),
                                dict(bare[1], weekday=test["weekday"]), k, 2, r)
  with_none = baselines.run_all(dict(bare[0], known=None, weekday=None),
                                dict(bare[1], known=test["known"], weekday=None), k, 2, r)
  full = baselines.run_all(train, test, k, 2, r)
  for name in out:
    np.testing.assert_array_equal(one_sided[name], out[name])
    np.testing.assert_array_equal(with_none[name], out[name])
    if not name.startswith("prefix_"):
      np.testing.assert_array_equal(full[name], out[name])
  assert not np.array_equal(full["prefix_ridge"], out["prefix_ridge"])
  kw = dict(train_known=train["known"], train_weekday=train["weekday"])
  for name, fit in (("prefix_ridge", baselines.prefix_ridge),
                    ("prefix_boosted", baselines.prefix_boosted)):
    np.testing.assert_array_equal(
        full[name], fit(ys, ms, ids, k, r, **kw)(tes, tem, tei, test["known"], test["weekday"]))


def test_off_chart_vs_missing_prefix_day():
  # k = 3, T = 6. Prefix step 1 is observed, off the chart (known, unobserved) or missing
  # (unknown) in equal thirds; off-chart rows drop by 3 after the prefix, the others stay level.
  rng = np.random.default_rng(3)
  n, k, t = 300, 3, 6
  level = rng.uniform(8, 14, n)
  y = level[:, None] + rng.normal(0, 0.05, (n, t))
  kind = np.arange(n) % 3  # 0 observed, 1 off chart, 2 missing
  m = np.ones((n, t), bool)
  m[kind > 0, 1] = False
  known = np.ones((n, t), bool)
  known[kind == 2, 1] = False
  y[:, k:] = y[:, k - 1:k] - 3.0 * (kind == 1)[:, None] + rng.normal(0, 0.05, (n, t - k))
  ids = np.zeros(n, int)
  test = np.array([[10.0, 0.0, 10.0, 0, 0, 0]] * 2)
  tm = np.array([[1, 0, 1, 0, 0, 0]] * 2)
  tk = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1]])  # row 0 off chart, row 1 missing
  feats = baselines.prefix_features(test, tm, k, [0, 0], 1, known=tk)
  assert not np.array_equal(feats[0], feats[1])
  np.testing.assert_array_equal(feats[:, -k:], [[0, 1, 0], [0, 0, 0]])
  # Without `known` the two rows look the same.
  plain = baselines.prefix_features(test, tm, k, [0, 0], 1)
  np.testing.assert_array_equal(plain[0], plain[1])
  pred = baselines.prefix_ridge(y, m, ids, k, 1, train_known=known)(test, tm, [0, 0], tk)
  np.testing.assert_allclose(pred[0], 7.0, atol=0.2)   # off chart: drop by 3
  np.testing.assert_allclose(pred[1], 10.0, atol=0.2)  # missing: no drop
  assert np.all(pred[1] - pred[0] > 2.7)
  # A ridge without `known` cannot tell them apart and predicts the mix for both.
  blind = baselines.prefix_ridge(y, m, ids, k, 1)(test, tm, [0, 0])
  np.testing.assert_array_equal(blind[0], blind[1])
  np.testing.assert_allclose(blind[0], 8.5, atol=0.2)


def test_weekday_effect_is_recovered():
  # Debuts on a Friday (4) drift +1.0 more than the others (including unknown -1).
  rng = np.random.default_rng(4)
  n, k, t = 400, 3, 7
  wd = rng.integers(-1, 7, n)
  level = rng.uniform(8, 14, n)
  y = level[:, None] + rng.normal(0, 0.05, (n, t))
  h = np.arange(1, t - k + 1)
  y[:, k:] = (y[:, k - 1:k] - 0.5 * h[None, :] + 1.0 * (wd == 4)[:, None]
              + rng.normal(0, 0.05, (n, t - k)))
  ids = rng.integers(0, 2, n)
  f = baselines.prefix_ridge(y, np.ones_like(y), ids, k, 2, train_weekday=wd)
  test = np.array([[11.0, 11.0, 11.0, 0, 0, 0, 0]] * 3)
  tm = np.array([[1, 1, 1, 0, 0, 0, 0]] * 3)
  pred = f(test, tm, [0, 1, 0], weekday=[4, 2, -1])
  np.testing.assert_allclose(pred[0] - pred[1], 1.0, atol=0.1)
  np.testing.assert_allclose(pred[1] - pred[2], 0.0, atol=0.1)
  np.testing.assert_allclose(pred[1], 11.0 - 0.5 * h, atol=0.15)


def test_known_and_weekday_errors():
  y, m = TR_SERIES, TR_MASK
  with pytest.raises(ValueError, match="known"):
    baselines.prefix_features(y, m, 2, TR_REG, 2, known=np.ones((3, 3)))
  with pytest.raises(ValueError, match="known"):
    baselines.prefix_features(y, m, 2, TR_REG, 2, known=np.full((3, 4), "x"))
  with pytest.raises(ValueError, match="weekday"):
    baselines.prefix_features(y, m, 2, TR_REG, 2, weekday=np.zeros((3, 1), int))
  with pytest.raises(ValueError, match="weekday"):
    baselines.prefix_features(y, m, 2, TR_REG, 2, weekday=[0, 7, 1])
  with pytest.raises(ValueError, match="weekday"):
    baselines.prefix_features(y, m, 2, TR_REG, 2, weekday=[0, 1.5, 1])
  with pytest.raises(ValueError, match="train_known"):
    baselines.prefix_ridge(y, m, TR_REG, 2, 2, train_known=np.ones((2, 4)))
  with pytest.raises(ValueError, match="train_weekday"):
    baselines.prefix_boosted(y, m, TR_REG, 2, 2, train_weekday=[0, 1])
  known = np.ones_like(m)
  f = baselines.prefix_ridge(y, m, TR_REG, 2, 2, train_known=known, train_weekday=[0, 1, -1])
  assert f(y, m, TR_REG, known, [2, 3, 4]).shape == (3, 2)
  with pytest.raises(ValueError, match="known"):
    f(y, m, TR_REG, weekday=[2, 3, 4])
  with pytest.raises(ValueError, match="weekday"):
    f(y, m, TR_REG, known)
  with pytest.raises(ValueError, match="known"):
    f(y, m, TR_REG, known[:, :3], [2, 3, 4])
  g = baselines.prefix_ridge(y, m, TR_REG, 2, 2)
  with pytest.raises(ValueError, match="known"):
    g(y, m, TR_REG, known)
  with pytest.raises(ValueError, match="weekday"):
    g(y, m, TR_REG, weekday=[0, 0, 0])
