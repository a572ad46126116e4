"""launch/dose.py: the within-region R² and its song-bootstrap interval."""
import importlib.util
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", "dose.py")
_spec = importlib.util.spec_from_file_location("launch_dose", _PATH)
dose = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dose)


def _pairs(signal_share, n_songs=120, seed=0):
  rng = np.random.default_rng(seed)
  song = np.repeat(np.arange(n_songs), 3)
  region = np.tile(np.array(["us", "kr", "br"]), n_songs)
  offset = np.select([region == "us", region == "kr"], [10.0, 5.0], 0.0)
  audio = rng.normal(size=n_songs)[song]
  y = offset + np.sqrt(signal_share) * audio + np.sqrt(1 - signal_share) * rng.normal(size=len(song))
  return y, offset + np.sqrt(signal_share) * audio, region, song.astype(str)


def test_within_region_r2_ignores_region_offsets():
  y, pred, region, _ = _pairs(0.5)
  r2 = dose.within_region_r2(y, pred, region)
  assert r2 == pytest.approx(0.5, abs=0.1)
  # Predicting the region means only: pooled R² would be high, within-region R² is 0.
  means = np.array([y[region == r].mean() for r in region])
  assert dose.within_region_r2(y, means, region) == pytest.approx(0.0, abs=1e-12)


def test_song_bootstrap_interval_covers_and_excludes_as_it_should():
  y, pred, region, song = _pairs(0.5)
  lo, hi = dose.song_bootstrap(dose.within_region_r2, y, (pred,), region, song, n=300)
  assert lo < dose.within_region_r2(y, pred, region) < hi and lo > 0.2
  # No signal: a prediction unrelated to the target, the interval holds 0 or lies below it.
  rng = np.random.default_rng(1)
  means = np.array([y[region == r].mean() for r in region])
  noise_pred = means + 0.01 * rng.normal(size=len(y))
  lo, hi = dose.song_bootstrap(dose.within_region_r2, y, (noise_pred,), region, song, n=300)
  assert lo < 0.05 and hi < 0.2


def test_gain_over_the_region_mean_is_paired_and_zero_without_signal():
  y, pred, region, song = _pairs(0.5)
  means = np.array([y[region == r].mean() for r in region])
  assert dose.gain_over(y, means, means, region) == 0.0
  # Pooled over regions: SSEs and SSTs summed, so it equals the mean R² when regions are alike.
  assert dose.pooled_within_region_r2(y, pred, region) == pytest.approx(
      dose.within_region_r2(y, pred, region), abs=0.05)
  gain = dose.gain_over(y, pred, means, region)
  lo, hi = dose.song_bootstrap(dose.gain_over, y, (pred, means), region, song, n=300)
  assert 0.3 < lo < gain < hi
  rng = np.random.default_rng(2)
  lo, hi = dose.song_bootstrap(dose.gain_over, y, (means + 0.01 * rng.normal(size=len(y)), means),
                               region, song, n=300)
  assert -0.01 < lo <= hi < 0.01
  # A resampled region whose targets are equal: the pooled figure stays finite, the mean of
  # per-region R²s leaves that region out.
  flat = y.copy()
  flat[region == "br"] = 1.0
  assert np.isfinite(dose.pooled_within_region_r2(flat, pred, region))
