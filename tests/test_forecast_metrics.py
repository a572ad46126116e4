"""Forecast metrics (metrics.forecast, metrics.pinball_loss) against hand-computed values."""
import json
import math

import numpy as np
import pytest

from mpjax import metrics

# Streams F (forecast) and A (actual); the metrics take log1p of them.
F = np.array([[1.0, 3.0], [0.0, 9.0]])
A = np.array([[1.0, 1.0], [0.0, 3.0]])
NAMES = ["us", "gb", "de"]


def test_hand_computed_2x2():
  out = metrics.forecast(np.log1p(F), np.log1p(A), np.ones((2, 2)), [0, 1], NAMES)
  o = out["overall"]
  # log errors: 0, ln 2, 0, ln 2.5
  assert o["mae"] == pytest.approx(math.log(5) / 4, rel=1e-12)
  assert o["rmse"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(2.5) ** 2) / 4),
                                    rel=1e-12)
  # sMAPE terms: 0, 200*2/4 = 100, 0 (both zero), 200*6/12 = 100
  assert o["smape"] == pytest.approx(50.0, rel=1e-12)
  assert o["n"] == 4 and math.isnan(o["mase"])
  assert "pinball" not in o


def test_mask_excludes_points():
  mask = np.array([[1, 0], [1, 1]])
  a = metrics.forecast(np.log1p(F), np.log1p(A), mask, [0, 1], NAMES)
  target = np.log1p(A)
  target[0, 1] = 1e6
  b = metrics.forecast(np.log1p(F), target, mask, [0, 1], NAMES)
  assert json.dumps(a) == json.dumps(b)
  assert a["overall"]["n"] == 3
  assert a["overall"]["mae"] == pytest.approx(math.log(2.5) / 3, rel=1e-12)
  assert a["overall"]["smape"] == pytest.approx(100.0 / 3, rel=1e-12)


def test_mase():
  target = np.array([[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
  naive = target + np.array([[2.0, -4.0, 6.0], [-2.0, 8.0, 0.0]])
  half = target + np.array([[1.0, -2.0, 3.0], [-1.0, 4.0, 0.0]])
  ones, ids = np.ones_like(target), [0, 0]
  assert metrics.forecast(naive, target, ones, ids, NAMES, naive=naive)["overall"]["mase"] == 1.0
  assert metrics.forecast(half, target, ones, ids, NAMES, naive=naive)["overall"]["mase"] == 0.5
  # Masked points are excluded from both MAEs: only the (0, 0) point is left -> 1 / 2.
  m = np.zeros_like(target)
  m[0, 0] = 1
  assert metrics.forecast(half, target, m, ids, NAMES, naive=naive)["overall"]["mase"] == 0.5
  # Perfect naive -> NaN.
  assert math.isnan(metrics.forecast(half, target, ones, ids, NAMES,
                                     naive=target)["overall"]["mase"])


def test_pinball_loss_hand_values():
  q = [0.1, 0.5, 0.9]
  loss = metrics.pinball_loss(np.array([1.0, 2.0, 3.0]), 2.5, q)
  np.testing.assert_allclose(loss, [0.15, 0.25, 0.05], rtol=1e-12)
  loss = metrics.pinball_loss(np.array([[[1.0, 2.0, 3.0]], [[3.0, 4.0, 5.0]]]),
                              np.array([[2.5], [2.0]]), q)
  assert loss.shape == (2, 1, 3)
  # y = 2 below all: (q - 1) * (2 - y_q) = 0.9, 1.0, 0.3
  np.testing.assert_allclose(loss[1, 0], [0.9, 1.0, 0.3], rtol=1e-12)
  with pytest.raises(ValueError, match="pred_q"):
    metrics.pinball_loss(np.zeros((2, 2)), np.zeros(2), q)


def test_quantile_metrics_and_coverage():
  q = (0.1, 0.5, 0.9)
  pred = np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]],
                   [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]])
  target = np.array([[2.5, 3.0], [2.0, 9.0]])
  out = metrics.forecast(pred, target, np.ones((2, 2)), [0, 0], NAMES, quantiles=q)["overall"]
  # Inside [lo, hi]: 2.5 yes, 3.0 yes (edge), 2.0 no, 9.0 no.
  assert out["coverage"] == 0.5
  assert out["coverage_nominal"] == pytest.approx(0.8)
  losses = [[0.15, 0.25, 0.05], [0.2, 0.5, 0.0], [0.9, 1.0, 0.3], [0.9, 4.0, 6.3]]
  assert out["pinball"] == pytest.approx(np.mean(losses), rel=1e-12)
  assert out["crps"] == pytest.approx(2 * np.mean(losses), rel=1e-12)
  # Point forecast = the 0.5 level: medians 2, 2, 4, 1 vs 2.5, 3, 2, 9.
  assert out["mae"] == pytest.approx((0.5 + 1 + 2 + 8) / 4)
  # Without 0.5 the point forecast is the mean over levels.
  two = metrics.forecast(pred[..., [0, 2]], target, np.ones((2, 2)), [0, 0], NAMES,
                         quantiles=(0.1, 0.9))["overall"]
  assert two["mae"] == pytest.approx(out["mae"])
  assert two["coverage"] == 0.5


def test_structure_and_json():
  q = (0.1, 0.5, 0.9)
  rng = np.random.default_rng(0)
  pred = np.sort(rng.normal(size=(4, 3, 3)), axis=-1)
  target = rng.normal(size=(4, 3))
  mask = np.ones((4, 3))
  mask[:, 2] = 0
  mask[3] = 0
  out = metrics.forecast(pred, target, mask, [0, 1, 1, 2], NAMES, quantiles=q,
                         naive=rng.normal(size=(4, 3)), k=5)
  assert set(out) == {"overall", "per_region", "per_horizon"}
  assert list(out["per_region"]) == ["us", "gb"]  # de has no observed point
  assert out["per_region"]["gb"]["n"] == 4
  assert [e["step"] for e in out["per_horizon"]] == [5, 6, 7]
  assert [e["n"] for e in out["per_horizon"]] == [3, 3, 0]
  assert math.isnan(out["per_horizon"][2]["mae"]) and math.isnan(out["per_horizon"][2]["pinball"])
  assert sum(e["n"] for e in out["per_horizon"]) == out["overall"]["n"] == 6
  for key in ("mae", "rmse", "smape", "mase", "n", "pinball", "crps", "coverage",
              "coverage_nominal"):
    assert key in out["overall"]
  text = json.dumps(out)
  assert json.loads(text)["per_horizon"][0]["step"] == 5
  assert all(type(v) in (float, int) for v in out["overall"].values())


def test_errors():
  t = np.zeros((2, 3))
  with pytest.raises(ValueError, match="quantiles"):
    metrics.forecast(np.zeros((2, 3, 3)), t, t, [0, 0], NAMES)
  with pytest.raises(ValueError, match="pred"):
    metrics.forecast(np.zeros((2, 4)), t, t, [0, 0], NAMES)
  with pytest.raises(ValueError, match="mask"):
    metrics.forecast(t, t, np.zeros((2, 2)), [0, 0], NAMES)
  with pytest.raises(ValueError, match="naive"):
    metrics.forecast(t, t, t, [0, 0], NAMES, naive=np.zeros(3))
  with pytest.raises(ValueError, match="region_ids"):
    metrics.forecast(t, t, t, [0, 3], NAMES)
  with pytest.raises(ValueError, match="ascending"):
    metrics.forecast(np.zeros((2, 3, 2)), t, t, [0, 0], NAMES, quantiles=(0.9, 0.1))


def test_point_from_quantiles():
  p = np.array([[0.0, 1.0, 5.0]])
  np.testing.assert_array_equal(metrics.point_from_quantiles(p, (0.1, 0.5, 0.9)), [1.0])
  np.testing.assert_array_equal(metrics.point_from_quantiles(p, (0.1, 0.3, 0.9)), [2.0])


def test_bands_pool_their_steps_only():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
  mask = rng.random((5, 6)) > 0.3
  k = 2
  out = metrics.forecast(pred, target, mask, np.zeros(5, int), NAMES, k=k,
                         bands={"early": (2, 4), "late": (4, 8)})
  for name, (lo, hi) in (("early", (0, 2)), ("late", (2, 6))):
    sel = np.zeros_like(mask)
    sel[:, lo:hi] = mask[:, lo:hi]
    assert out["per_band"][name]["mae"] == pytest.approx(np.abs(pred - target)[sel].mean(), rel=1e-12)
    assert out["per_band"][name]["n"] == sel.sum()
  with pytest.raises(ValueError, match=r"bands\['bad'\]"):
    metrics.forecast(pred, target, mask, np.zeros(5, int), NAMES, k=k, bands={"bad": (0, 3)})


def test_per_series_mae_weighs_every_series_the_same():
  # Series 0: errors 1, 1, 1 (MAE 1); series 1: one scored point, error 4; series 2 unscored.
  pred = np.array([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
  target = np.zeros((3, 3))
  mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
  r = metrics.forecast(pred, target, mask, [0, 1, 1], ["a", "b"])
  assert r["overall"]["mae"] == pytest.approx(7 / 4)          # pooled over 4 points
  assert r["overall"]["mae_series"] == pytest.approx(2.5)     # (1 + 4) / 2 series
  assert r["overall"]["n_series"] == 2 and r["overall"]["n"] == 4
  assert r["per_region"]["b"]["mae_series"] == 4.0 and r["per_region"]["b"]["n_series"] == 1
  assert r["per_horizon"][1]["n_series"] == 1 and r["per_horizon"][1]["mae_series"] == 1.0
