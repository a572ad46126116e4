"""mpjax.input.augment: no-ops at zero strength, ranges, hand-checked values, determinism."""
import math

import numpy as np
import pytest

from mpjax.input import augment

T, F = 200, 128
ALL_ON = dict(specaug=dict(freq_masks=2, freq_width=24, time_masks=2, time_width=40), roll=True,
              gain_db=6.0, tilt_db=6.0, pitch_bins=3.0, mixup_alpha=0.5, mixup_prob=1.0)


def example(seed=0, frames=T, regions=(0, 2, 3)):
  rng = np.random.default_rng(seed)
  r = len(regions)
  mask = rng.random((r, 8)) < 0.7
  return {
      "fbank": rng.normal(size=(T, F)).astype(np.float32),
      "frames": frames,
      "regions": np.asarray(regions, np.int32),
      "mp2": rng.uniform(10, 16, size=r).astype(np.float32),
      "mp2_observed_steps": rng.integers(1, 7, size=r),
      "series": np.where(mask, rng.uniform(8, 14, size=(r, 8)), 0).astype(np.float32),
      "series_mask": mask,
      "extrinsic": rng.uniform(0, 50, size=(r, 4)).astype(np.float32),
      "labels": np.asarray([1], np.int32),
  }


def test_shapes_dtypes_preserved_and_input_untouched():
  ex = example()
  before = {k: np.copy(v) for k, v in ex.items()}
  out = augment.apply(ex, ALL_ON, np.random.default_rng(0), partner=example(1), log_scale=0.14)
  assert out["fbank"].shape == (T, F) and out["fbank"].dtype == np.float32
  assert np.isfinite(out["fbank"]).all()
  for k, v in before.items():
    np.testing.assert_array_equal(ex[k], v)  # apply returns a new dict, never edits its input
  for k in ("mp2", "series", "extrinsic"):
    assert out[k].dtype == np.float32


def test_zero_strength_is_exactly_a_noop():
  ex = example()
  rng = np.random.default_rng(0)
  # The whole composition, with a partner offered and mask counts but zero widths.
  cfg = dict(specaug=dict(freq_masks=3, freq_width=0, time_masks=3, time_width=0), roll=0.0,
             gain_db=0.0, tilt_db=0.0, pitch_bins=0.0, mixup_alpha=0.0, mixup_prob=1.0)
  out = augment.apply(ex, cfg, rng, partner=example(1), log_scale=0.2)
  for k in ex:
    np.testing.assert_array_equal(out[k], ex[k])
  assert not augment.enabled(cfg) and augment.enabled(ALL_ON)
  assert augment.apply(ex, None, rng)["fbank"] is not ex["fbank"]
  np.testing.assert_array_equal(augment.apply(ex, None, rng)["fbank"], ex["fbank"])
  # Each primitive at strength zero.
  x = ex["fbank"]
  np.testing.assert_array_equal(augment.gain(x.copy(), 0.0, 0.3), x)
  np.testing.assert_array_equal(augment.pitch_shift(x.copy(), 0.0), x)
  np.testing.assert_array_equal(augment.time_roll(x.copy(), 0), x)
  np.testing.assert_array_equal(augment.time_roll(x.copy(), T), x)
  curve = augment.tilt_curve(rng, F, 0.0)
  np.testing.assert_array_equal(augment.timbre(x.copy(), curve, 0.3), x)
  masks = augment.draw_masks(rng, F, 5, 0)
  assert all(w == 0 for _, w in masks)
  np.testing.assert_array_equal(augment.mask(x.copy(), masks, axis=1), x)


def test_masks_lie_inside_bounds_and_widths_at_most_max():
  rng = np.random.default_rng(1)
  for size, max_w in ((128, 48), (100, 192), (10, 3)):
    for start, w in augment.draw_masks(rng, size, 500, max_w):
      assert 0 <= w <= min(max_w, size) and 0 <= start and start + w <= size
  # Widths and starts are independent draws covering the whole range.
  ms = augment.draw_masks(np.random.default_rng(2), 128, 2000, 20)
  assert {w for _, w in ms} == set(range(21))
  assert min(s for s, _ in ms) == 0 and max(s + w for s, w in ms) == 128


def test_specaugment_masks_whole_columns_rows_and_spares_padding():
  ex = example(frames=120)
  ex["fbank"] = np.ones((T, F), np.float32)
  cfg = dict(specaug=dict(freq_masks=2, freq_width=30, time_masks=2, time_width=50))
  for seed in range(20):
    x = augment.apply(ex, cfg, np.random.default_rng(seed))["fbank"]
    np.testing.assert_array_equal(x[120:], 1.0)  # padding frames untouched
    real = x[:120]
    zero_cols = np.flatnonzero((real == 0).all(0))
    zero_rows = np.flatnonzero((real == 0).all(1))
    # Every zero is on a fully masked mel column or a fully masked real frame.
    z = real == 0
    covered = np.zeros_like(z)
    covered[:, zero_cols] = True
    covered[zero_rows] = True
    assert (z <= covered).all()
    assert len(zero_cols) <= 2 * 30 and len(zero_rows) <= 2 * 50


def test_gain_shifts_mean_by_the_right_amount():
  x = np.zeros((T, F), np.float32)
  y = augment.gain(x.copy(), 6.0, log_scale=0.5)
  # +6 dB = amplitude x 10^(6/20): log(a^2) = 6 ln(10) / 10 = 1.3816 in log-mel, x 0.5 normalised
  np.testing.assert_allclose(y.mean(), 6.0 * math.log(10) / 10 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(math.log((10 ** (6 / 20)) ** 2) * 0.5, y[0, 0], rtol=1e-6)
  # Random gain through apply: one constant shift on the real frames, within bounds, no padding.
  ex = example(frames=150)
  for seed in range(10):
    out = augment.apply(ex, dict(gain_db=6.0), np.random.default_rng(seed), log_scale=0.25)
    d = out["fbank"] - ex["fbank"]
    assert np.ptp(d[:150]) < 1e-5
    assert abs(d[0, 0]) <= 6.0 * math.log(10) / 10 * 0.25 + 1e-6
    np.testing.assert_array_equal(d[150:], 0)


def test_pitch_shift_moves_a_peak_by_the_right_number_of_bins():
  x = np.zeros((4, F), np.float32)
  x[:, 40] = 10.0
  assert (augment.pitch_shift(x.copy(), 5).argmax(1) == 45).all()
  assert (augment.pitch_shift(x.copy(), -3).argmax(1) == 37).all()
  half = augment.pitch_shift(x.copy(), 2.5)
  np.testing.assert_allclose(half[0, 42:44], [5.0, 5.0])  # linear interpolation
  np.testing.assert_allclose(half.sum(1), 10.0)
  # Any shift equals per-frame linear interpolation at f - bins, edges replicated.
  rng = np.random.default_rng(4)
  y = rng.normal(size=(6, F)).astype(np.float32)
  f = np.arange(F)
  for s in (0.3, -0.7, 1.0, 7.25, -12.5, 200.0, -200.0):
    ref = np.stack([np.interp(f - s, f, row) for row in y])
    np.testing.assert_allclose(augment.pitch_shift(y.copy(), s), ref, atol=1e-5)
  # Through apply: the peak moves by at most pitch_bins (rounded), padding rows untouched.
  ex = {"fbank": np.zeros((T, F), np.float32), "frames": 100}
  ex["fbank"][:, 64] = 10.0
  moves = set()
  for seed in range(30):
    out = augment.apply(ex, dict(pitch_bins=4.0), np.random.default_rng(seed))["fbank"]
    moves.add(int(out[0].argmax()) - 64)
    np.testing.assert_array_equal(out[100:], ex["fbank"][100:])
  assert moves <= set(range(-4, 5)) and len(moves) > 3


def test_timbre_curve_is_bounded_and_smooth():
  rng = np.random.default_rng(3)
  for _ in range(50):
    c = augment.tilt_curve(rng, F, 6.0)
    assert np.abs(c).max() <= 6.0 + 1e-6
    assert np.abs(np.diff(c)).max() < 0.5  # broad curve, no notch
  ex = example(frames=80)
  out = augment.apply(ex, dict(tilt_db=6.0), np.random.default_rng(0), log_scale=1.0)
  d = out["fbank"] - ex["fbank"]
  np.testing.assert_allclose(d[:80], np.broadcast_to(d[0], (80, F)), atol=1e-5)  # same EQ per frame
  np.testing.assert_array_equal(d[80:], 0)


def test_roll_permutes_real_frames_only():
  ex = example(frames=150)
  for seed in range(5):
    out = augment.apply(ex, dict(roll=True), np.random.default_rng(seed))["fbank"]
    np.testing.assert_array_equal(out[150:], ex["fbank"][150:])
    k = [s for s in range(150) if np.array_equal(np.roll(ex["fbank"][:150], s, 0), out[:150])]
    assert len(k) == 1


def test_mixup_targets_mixed_in_linear_stream_domain():
  # Hand-computed: 100 and 300 streams, lambda 0.25 -> 0.25*100 + 0.75*300 = 250 streams.
  a, b = example(0, regions=(0, 2, 3)), example(1, regions=(3, 1, 2))
  a["mp2"] = np.log1p(np.array([100.0, 100.0, 7.0], np.float32))
  b["mp2"] = np.log1p(np.array([300.0, 9.0, 300.0], np.float32))
  out = augment.mixup(a, b, 0.25)
  np.testing.assert_array_equal(out["regions"], [2, 3])  # only the regions both charted in
  np.testing.assert_allclose(out["mp2"], np.log1p([250.0, 0.25 * 7 + 0.75 * 300]), rtol=1e-6)
  # Not the log-domain mix (a geometric mean, biased low).
  assert out["mp2"][0] > 0.25 * np.log1p(100) + 0.75 * np.log1p(300)
  ia, ib = [1, 2], [2, 0]  # rows of regions 2, 3 in a and b
  lo = np.minimum(a["mp2"][ia], b["mp2"][ib])
  hi = np.maximum(a["mp2"][ia], b["mp2"][ib])
  assert ((lo <= out["mp2"]) & (out["mp2"] <= hi)).all()
  np.testing.assert_array_equal(out["series_mask"], a["series_mask"][ia] & b["series_mask"][ib])
  np.testing.assert_allclose(out["series"], np.log1p(0.25 * np.expm1(a["series"][ia].astype(np.float64))
                                                     + 0.75 * np.expm1(b["series"][ib])), rtol=1e-6)
  np.testing.assert_array_equal(out["mp2_observed_steps"],
                                np.minimum(a["mp2_observed_steps"][ia], b["mp2_observed_steps"][ib]))
  np.testing.assert_allclose(out["extrinsic"], 0.25 * a["extrinsic"][ia] + 0.75 * b["extrinsic"][ib],
                             rtol=1e-6)
  np.testing.assert_allclose(out["fbank"], 0.25 * a["fbank"] + 0.75 * b["fbank"], rtol=1e-6)
  assert out["mixup_lambda"] == np.float32(0.25)
  a["debut"] = ["2025-01-01", "2025-01-02", "2025-01-03"]
  assert augment.mixup(a, b, 0.25)["debut"] == ["2025-01-02", "2025-01-03"]  # with its regions
  del a["debut"]
  # NaN (target not computable) in either stays NaN; disagreeing labels become unknown.
  b["mp2"][2] = np.nan
  b["labels"] = np.asarray([0], np.int32)
  out = augment.mixup(a, b, 0.5)
  assert np.isnan(out["mp2"][0]) and out["labels"].tolist() == [-1]
  # No region in common: unchanged.
  c = example(2, regions=(1,))
  out = augment.mixup(a, c, 0.3)
  np.testing.assert_array_equal(out["fbank"], a["fbank"])
  assert out["mixup_lambda"] == 1.0


def test_mixup_series_floor_bounds_the_mix_where_either_is_off_the_chart():
  """The mixed floor: each one's value where observed, its floor where not, mixed like the
  series (the mix is below it where either is off the chart); unknown (NaN) in either -> NaN."""
  a, b = example(0, regions=(0, 2)), example(1, regions=(2, 0))
  a["series_mask"][:, :3] = [True, False, False]
  b["series_mask"][:, :3] = [False, True, False]
  a["series"][:, :2] = np.log1p([1000.0, 0.0])
  b["series"][:, :2] = np.log1p([0.0, 3000.0])
  a["series_floor"] = np.full((2, 8), np.log1p(100.0), np.float32)
  b["series_floor"] = np.full((2, 8), np.log1p(200.0), np.float32)
  a["series_floor"][:, 2] = np.nan  # step 2: both off, a's floor unknown
  out = augment.mixup(a, b, 0.25)
  assert out["series_floor"].shape == (2, 8)
  # Step 0: a on (1000), b off (below 200); step 1: a off (below 100), b on (3000).
  np.testing.assert_allclose(out["series_floor"][:, 0], np.log1p(0.25 * 1000 + 0.75 * 200), rtol=1e-6)
  np.testing.assert_allclose(out["series_floor"][:, 1], np.log1p(0.25 * 100 + 0.75 * 3000), rtol=1e-6)
  assert np.isnan(out["series_floor"][:, 2]).all()


def test_mixup_through_apply_draws_beta_lambda():
  a, b = example(0, regions=(0, 2)), example(1, regions=(0, 2))
  lams = [float(augment.apply(a, dict(mixup_alpha=0.4), np.random.default_rng(s),
                              partner=b)["mixup_lambda"]) for s in range(200)]
  assert all(0 <= x <= 1 for x in lams)
  assert np.mean(lams) == pytest.approx(0.5, abs=0.08)
  assert np.mean([x < 0.1 or x > 0.9 for x in lams]) > 0.3  # Beta(0.4, 0.4) is U-shaped
  rng = np.random.default_rng(0)
  hits = sum(augment.wants_mixup(dict(mixup_alpha=0.4, mixup_prob=0.3), rng) for _ in range(2000))
  assert 450 < hits < 750
  assert not augment.wants_mixup(dict(mixup_alpha=0.0, mixup_prob=1.0), rng)


def test_deterministic_for_a_seed():
  a, b = example(0), example(1)
  o1 = augment.apply(a, ALL_ON, np.random.default_rng(7), partner=b, log_scale=0.2)
  o2 = augment.apply(a, ALL_ON, np.random.default_rng(7), partner=b, log_scale=0.2)
  o3 = augment.apply(a, ALL_ON, np.random.default_rng(8), partner=b, log_scale=0.2)
  for k in o1:
    np.testing.assert_array_equal(o1[k], o2[k])
  assert not np.array_equal(o1["fbank"], o3["fbank"])


def test_switching_one_augmentation_keeps_the_others_draws():
  ex = example(frames=T)
  ex["fbank"] = np.ones((T, F), np.float32)
  masks_only = dict(specaug=dict(freq_masks=2, freq_width=30))
  with_gain = dict(specaug=dict(freq_masks=2, freq_width=30), gain_db=3.0)
  m1 = augment.apply(ex, masks_only, np.random.default_rng(5))["fbank"] == 0
  m2 = augment.apply(ex, with_gain, np.random.default_rng(5))["fbank"] == 0
  np.testing.assert_array_equal(m1, m2)


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match=r"augment\.specaug\.freq_mask: unknown field"):
    augment.check_config(dict(specaug=dict(freq_mask=2)))
  with pytest.raises(ValueError, match=r"augment\.gain_db"):
    augment.check_config(dict(gain_db=-1))
  with pytest.raises(ValueError, match=r"augment\.roll"):
    augment.check_config(dict(roll=2.0))
  with pytest.raises(ValueError, match=r"augment\.specaug\.time_width"):
    augment.check_config(dict(specaug=dict(time_width=1.5)))
  cfg = augment.default_config()
  assert augment.check_config(cfg)["specaug"]["freq_masks"] == 0
