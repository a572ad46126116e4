"""mpjax.analysis.stats: Holm, the equivalence test, the song bootstrap, ridge with song-grouped
CV and PCA, on hand values and planted data."""
import numpy as np
import pytest

from mpjax.analysis import stats


def test_holm_on_hand_values():
  # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
  out = stats.holm([0.01, np.nan, 0.02])  # NaN is not in the family (m = 2)
  np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
  assert np.isnan(out[1])
  assert stats.holm([0.04]).tolist() == [0.04]


def test_equivalence_reads_the_90_percent_interval():
  rng = np.random.default_rng(0)
  tight = rng.normal(0.0, 0.005, 4000)  # 90 % interval about +-0.008
  wide = rng.normal(0.0, 0.05, 4000)
  shifted = rng.normal(0.05, 0.005, 4000)
  assert stats.equivalence(tight, 0.02)["equivalent"]
  assert not stats.equivalence(wide, 0.02)["equivalent"]      # inconclusive: too wide
  assert not stats.equivalence(shifted, 0.02)["equivalent"]   # a real effect
  e = stats.equivalence(tight, 0.02)
  assert e["level"] == pytest.approx(0.9) and e["ci"][0] < 0 < e["ci"][1]
  below = rng.normal(-0.05, 0.005, 4000)  # clearly negative: only the one-sided test passes
  assert not stats.equivalence(below, 0.02)["equivalent"]
  assert stats.equivalence(below, 0.02, two_sided=False)["equivalent"]
  assert not stats.equivalence(shifted, 0.02, two_sided=False)["equivalent"]
  with pytest.raises(ValueError, match="margin"):
    stats.equivalence(tight, 0.0)


def test_p_greater_and_percentile_ci():
  assert stats.p_greater(np.ones(99)) == pytest.approx(0.01)
  assert stats.p_greater(-np.ones(99)) == 1.0
  assert stats.p_greater(np.r_[np.ones(50), -np.ones(49), np.nan]) == pytest.approx(0.5)
  lo, hi = stats.percentile_ci(np.arange(1001.0))
  assert (lo, hi) == (pytest.approx(25.0), pytest.approx(975.0))
  assert np.isnan(stats.percentile_ci([np.nan])[0])


def test_song_bootstrap_moves_a_song_s_rows_together():
  groups = np.array([0, 0, 0, 1, 2, 2])
  w = stats.bootstrap_weights(groups, samples=200, seed=1)
  assert w.shape == (200, 6)
  assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 1] == w[:, 2]) and np.all(w[:, 4] == w[:, 5])
  assert np.all(w[:, [0, 3, 4]].sum(1) == 3)
  assert len({tuple(r) for r in w}) > 5
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = stats.resample_songs(groups, rng)
    counts = np.bincount(idx, minlength=6)
    assert counts[0] == counts[1] == counts[2] and counts[4] == counts[5]
    assert counts[[0, 3, 4]].sum() == 3


def test_weighted_r2_matches_plain_and_a_duplicated_sample():
  rng = np.random.default_rng(0)
  y, p = rng.normal(size=30), rng.normal(size=30)
  plain = 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()
  assert stats.weighted_r2(y, p) == pytest.approx(plain)
  w = np.ones(30)
  w[:5] = 2
  dup = np.concatenate([np.arange(30), np.arange(5)])
  assert stats.weighted_r2(y, p, w[None])[0] == pytest.approx(stats.weighted_r2(y[dup], p[dup]))


def test_song_folds_never_split_a_song():
  # Songs with 1..4 clips each, rows shuffled: every fold's train and test songs are disjoint and
  # the test folds cover every row once.
  rng = np.random.default_rng(2)
  songs = rng.permutation(np.repeat(np.arange(50), rng.integers(1, 5, size=50)))
  for seed in (0, 1):
    folds = stats.song_folds(songs, folds=5, seed=seed)
    assert len(folds) == 5
    for train_rows, test_rows in folds:
      assert not set(songs[train_rows]) & set(songs[test_rows])
    assert sorted(np.concatenate([t for _, t in folds])) == list(range(len(songs)))
  with pytest.raises(ValueError, match=r"too few groups \(songs\): 9 over"):
    stats.song_folds(np.arange(9), folds=5)


def test_ridge_cv_recovers_a_planted_line_and_shrinks_noise():
  rng = np.random.default_rng(0)
  n = 300
  groups = np.repeat(np.arange(100), 3)  # 100 songs, 3 rows each
  x = rng.normal(size=(n, 5))
  y = 2.0 * x[:, 0] + 0.1 * rng.normal(size=n)
  pred, alpha = stats.ridge_predict(x[:200], y[:200], groups[:200], x[200:])
  assert stats.weighted_r2(y[200:], pred) > 0.98 and alpha <= 1.0
  noise = rng.normal(size=n)
  _, alpha = stats.ridge_predict(x[:200], noise[:200], groups[:200], x[200:])
  assert alpha >= 100  # pure noise: the CV picks heavy shrinkage
  with pytest.raises(ValueError, match="too few groups"):
    stats.song_folds(np.arange(6), folds=5)


def test_pca_scores_fit_on_the_fit_rows_only():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(200, 1))
  x = np.concatenate([z, 2 * z + 0.01 * rng.normal(size=(200, 1)), rng.normal(size=(200, 3)),
                      np.ones((200, 1))], 1)
  fit = np.arange(200) < 150
  s = stats.pca_scores(x, fit, 3)
  assert s.shape == (200, 3)
  np.testing.assert_allclose(s[fit].std(0), 1.0)
  assert abs(np.corrcoef(s[:, 0], z[:, 0])[0, 1]) > 0.97  # the shared direction comes first
  with pytest.raises(ValueError, match="constant"):
    stats.pca_scores(np.ones((10, 3)), np.ones(10, bool), 2)


def test_ridge_refit_draws_is_sklearn_s_pipeline_on_the_repeated_rows():
  from sklearn.linear_model import Ridge
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  rng = np.random.default_rng(1)
  songs = rng.integers(0, 30, 90)  # 30 songs, several rows each
  x = np.concatenate([rng.normal(size=(90, 3)) + 50.0, np.ones((90, 1))], 1)  # offset + constant
  y = x[:, 0] - x[:, 2] + rng.normal(size=90)
  counts = stats.bootstrap_weights(np.arange(30), 5, 0)  # [5 draws, 30 songs]
  xs = rng.normal(size=(6, 4)) + 50.0
  got = stats.ridge_refit_draws(x, y, songs, counts, 2.0, xs)
  for b in range(5):
    w = counts[b, songs].astype(int)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=2.0)).fit(
        np.repeat(x, w, 0), np.repeat(y, w)).predict(xs)
    np.testing.assert_allclose(got[b], ref, rtol=1e-8, atol=1e-8)


def test_weighted_r2_with_one_prediction_per_resample():
  rng = np.random.default_rng(2)
  y, p = rng.normal(size=20), rng.normal(size=(3, 20))
  w = rng.integers(0, 3, size=(3, 20)).astype(float)
  got = stats.weighted_r2(y, p, w)
  for b in range(3):
    assert got[b] == pytest.approx(stats.weighted_r2(y, p[b], w[b:b + 1])[0])
