"""Forecasting peers (mpjax.peers): history filling, statsforecast local models, the LightGBM
direct quantile model and the holiday features, on hand-built and synthetic data."""
import numpy as np
import pytest

from mpjax import peers

nan = np.nan


# ----------------------------------------------------------------------------- fill_history

def _rows():
  # row 0: on, on, off (floor 2.5), unknown, on, off without floor -> lowest observed (3.0)
  # row 1: never observed -> empty
  # row 2: leading unknown dropped; off without floor -> lowest observed 6; unknown -> ffill
  series = np.array([[5., 4., 0., 0., 3., 0.], [0.] * 6, [0., 7., 6., 0., 0., 0.]])
  mask = np.array([[1, 1, 0, 0, 1, 0], [0] * 6, [0, 1, 1, 0, 0, 0]], bool)
  known = np.array([[1, 1, 1, 0, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 0]], bool)
  floor = np.array([[2., 2., 2.5, 2., 2., nan], [1.] * 6, [nan] * 6])
  return series, mask, known, floor


def test_fill_history_rules():
  out = peers.fill_history(*_rows())
  np.testing.assert_array_equal(out[0], [5., 4., 2.5, 2.5, 3., 3.])
  assert out[1].shape == (0,)
  np.testing.assert_array_equal(out[2], [7., 6., 6., 6., 6.])


def test_fill_history_length_and_shape_errors():
  out = peers.fill_history(*_rows(), length=np.array([3, 6, 2]))
  np.testing.assert_array_equal(out[0], [5., 4., 2.5])
  np.testing.assert_array_equal(out[2], [7.])
  s, m, k, f = _rows()
  with pytest.raises(ValueError, match="known"):
    peers.fill_history(s, m, k[:, :3], f)
  with pytest.raises(ValueError, match="length"):
    peers.fill_history(s, m, k, f, length=np.array([7, 1, 1]))


# ----------------------------------------------------------------------------- local_forecasts

def test_local_forecasts_naive_ets_and_fallbacks():
  t = np.arange(21.0)
  hist = [10.0 + 0.1 * t,  # clean linear trend: ETS continues it
          np.full(15, 6.0),  # constant
          np.array([3.0, 2.0, 1.5]),  # too short for AutoETS (and AutoTheta)
          np.empty(0)]
  out = peers.local_forecasts(hist, 5)
  assert set(out) == set(peers.LOCAL_MODELS)
  assert all(v.shape == (4, 5) for v in out.values())
  np.testing.assert_array_equal(out["naive"][:3], [[12.0] * 5, [6.0] * 5, [1.5] * 5])
  np.testing.assert_allclose(out["autoets"][0], 12.0 + 0.1 * np.arange(1, 6), atol=0.05)
  np.testing.assert_allclose(out["autoets"][1], 6.0, atol=1e-6)
  np.testing.assert_allclose(out["autotheta"][1], 6.0, atol=1e-6)
  # The short row falls back to naive, and is counted; the empty row is NaN.
  for name in ("autoets", "autotheta"):
    np.testing.assert_array_equal(out[name][2], 1.5)
    assert out.fallbacks[name] == 1
    assert np.isnan(out[name][3]).all()
  assert np.isnan(out["naive"][3]).all()


def test_local_forecasts_errors():
  with pytest.raises(ValueError, match="models"):
    peers.local_forecasts([np.ones(10)], 3, models=("arima",))
  with pytest.raises(ValueError, match="histories"):
    peers.local_forecasts([np.array([1.0, nan])], 3)
  with pytest.raises(ValueError, match="h must"):
    peers.local_forecasts([np.ones(10)], 0)


# ----------------------------------------------------------------------------- lightgbm_direct

def _direct_data(n, seed, h=6):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, 3))
  last = 8.0 + rng.standard_normal(n)
  steps = np.arange(h)[None, :]
  change = -0.05 * steps * (x[:, :1] + 2.0)  # a known function of x0 and h
  y = last[:, None] + change + 0.05 * rng.standard_normal((n, h))
  ymask = rng.random((n, h)) < 0.8
  return x, last, y, ymask, last[:, None] + change


# Small and quick; one thread: LightGBM's OpenMP threads slow down ~10x on a busy 2-core host.
FAST = {"params": {"num_leaves": 15, "learning_rate": 0.1, "min_data_in_leaf": 20},
        "num_threads": 1}


@pytest.fixture(scope="module")
def direct_fit():
  x, last, y, ymask, _ = _direct_data(1500, 0)
  model = peers.lightgbm_direct(x, last, y, ymask, **FAST, num_rounds=150)
  return model, (x, last, y, ymask)


def test_lightgbm_direct_recovers_the_change(direct_fit):
  model, _ = direct_fit
  x, last, _, _, truth = _direct_data(500, 1)
  pred = model.predict(x, last)
  assert pred.shape == (500, 6, 3)
  mae = np.abs(pred[..., 1] - truth).mean()
  no_change = np.abs(last[:, None] - truth).mean()
  assert mae < 0.05 and mae < 0.25 * no_change, (mae, no_change)
  assert (np.diff(pred, axis=-1) >= 0).all()  # levels never cross
  assert (pred[..., 0] < pred[..., 1]).mean() > 0.9
  assert pred[..., 0].mean() < pred[..., 1].mean() < pred[..., 2].mean()


def test_lightgbm_direct_deterministic_and_ignores_masked_targets(direct_fit):
  model, (x, last, y, ymask) = direct_fit
  garbage = np.where(ymask, y, 1e6)
  garbage[~ymask & (np.arange(y.shape[1]) % 2 == 0)] = nan
  again = peers.lightgbm_direct(x, last, garbage, ymask, **FAST, num_rounds=150)
  xt, lt, *_ = _direct_data(200, 2)
  np.testing.assert_array_equal(model(xt, lt), again(xt, lt))


def test_lightgbm_direct_early_stopping_and_errors():
  x, last, y, ymask, _ = _direct_data(600, 3)
  xv, lv, yv, mv, _ = _direct_data(300, 4)
  model = peers.lightgbm_direct(x, last, y, ymask, quantiles=(0.5,), **FAST,
                                num_rounds=2000, x_val=xv, last_val=lv, y_val=yv, ymask_val=mv,
                                early_stopping_rounds=10)
  assert 1 <= model.rounds[0] < 2000
  assert model.predict(xv, lv).shape == (300, 6, 1)
  with pytest.raises(ValueError, match="x must be"):
    model.predict(xv[:, :2], lv)
  with pytest.raises(ValueError, match="quantiles"):
    peers.lightgbm_direct(x, last, y, ymask, quantiles=(0.5, 1.0))
  with pytest.raises(ValueError, match="x_val"):
    peers.lightgbm_direct(x, last, y, ymask, x_val=xv)
  with pytest.raises(ValueError, match="finite"):
    peers.lightgbm_direct(x, last, np.where(ymask, nan, y), ymask)


def test_direct_inputs_appends_extra_columns():
  series = np.array([[5.0, 4.0, 3.0, 2.0], [1.0, 0.0, 0.0, 0.0]])
  mask = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], bool)
  x, last = peers.direct_inputs(series, mask, 3, np.array([0, 1]), 2, extra=np.ones((2, 4)))
  np.testing.assert_array_equal(last, [4.0, 1.0])
  np.testing.assert_array_equal(x[:, -4:], 1.0)
  assert x.shape == (2, 2 * 3 + 3 + 2 + 4)


# ----------------------------------------------------------------------------- holiday_features

def test_holiday_features_christmas():
  dates = np.array(["2025-12-20", "2025-12-26", "2026-01-10", "2025-06-13", "2025-12-20",
                    "2025-12-24", "2025-12-25"], "datetime64[D]")
  f28 = peers.holiday_features(["ph", "ph", "ph", "ph", "vn", "ph", "ph"], dates, 28)
  f1 = peers.holiday_features(["ph"] * 2, dates[5:], 1)  # the forecast is the next day only
  assert f28.shape == (7, len(peers.HOLIDAY_FEATURES))
  col = {name: f28[:, i] for i, name in enumerate(peers.HOLIDAY_FEATURES)}
  # PH public holidays around the new year: Dec 24, 25, 30, 31, Jan 1 (VN: Jan 1 only);
  # none in Jun 14 .. Jul 11, Independence Day on Jun 12.
  np.testing.assert_array_equal(col["holidays_forecast"][:5], [5, 3, 0, 0, 1])
  np.testing.assert_array_equal(col["holidays_prefix_week"][:5], [0, 2, 0, 1, 0])
  np.testing.assert_array_equal(col["days_to_christmas"][:5], [5, -1, -16, -60, 5])
  np.testing.assert_array_equal(col["christmas_season"][:5], [1, 1, 0, 0, 1])
  # Day boundaries: forecast days start the day after the origin; the week ends at it.
  np.testing.assert_array_equal(f1[:, :2], [[1, 1], [0, 2]])
  np.testing.assert_array_equal(f1[:, 2:], [[1, 1], [0, 1]])
  # The season is Dec 10 .. Dec 31 of the forecast days.
  edge = np.array(["2025-12-01", "2025-12-01", "2025-12-30", "2025-12-31"], "datetime64[D]")
  season = [peers.holiday_features(["kr"], edge[i:i + 1], n)[0, 3] for i, n in
            enumerate([8, 9, 28, 28])]
  np.testing.assert_array_equal(season, [0, 1, 1, 0])


def test_holiday_features_errors():
  dates = np.array(["2025-12-20"], "datetime64[D]")
  with pytest.raises(ValueError, match="country_codes"):
    peers.holiday_features(["xx"], dates, 28)
  with pytest.raises(ValueError, match="country_codes"):
    peers.holiday_features(["ph", "ph"], dates, 28)
  with pytest.raises(ValueError, match="horizon"):
    peers.holiday_features(["ph"], dates, 0)


def test_missing_extra_names_the_install_command(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` now fails
  x, last, y, ymask, _ = _direct_data(50, 5)
  with pytest.raises(ImportError, match=r"pip install -e \.\[forecast\]"):
    peers.lightgbm_direct(x, last, y, ymask)
