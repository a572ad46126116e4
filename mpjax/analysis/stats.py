"""The statistics the research analyses share (H, T, regions, probes), on scikit-learn and scipy.

- `song_folds`, `ridge_cv`, `ridge_predict`: ridge regression on standardised features, the
  penalty chosen from `ALPHAS` by K-fold CV grouped by song (a song's rows never sit on both
  sides of a fold).
- `pca_scores`: standardise, then PCA fitted on the fit rows only.
- `bootstrap_weights`, `resample_songs`: the song (cluster) bootstrap. A song charts in several
  regions; its rows move together.
- `weighted_r2`, `percentile_ci`, `p_greater`: R² under resampling weights, percentile
  intervals, one-sided bootstrap p-values.
- `holm`: Holm's step-down adjustment of a family of p-values.
- `equivalence`: the two one-sided tests (TOST) read off a bootstrap distribution: an effect is
  "negligible" when the 1 - 2 alpha interval lies inside (-margin, margin) (or, one-sided,
  below margin).
"""
from __future__ import annotations

import numpy as np

ALPHAS = np.logspace(-3, 4, 15)


# ------------------------------------------------------------------------------------------------
# Ridge with song-grouped cross-validation, PCA
# ------------------------------------------------------------------------------------------------


def song_folds(groups, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """(train rows, test rows) of each fold: shuffled GroupKFold (seeded), so every row of a group
  (a song) sits in one test fold and in no training fold beside it. Raises ValueError when there
  are fewer than 2 * folds groups."""
  from sklearn.model_selection import GroupKFold
  groups = np.asarray(groups)
  n_groups = len(np.unique(groups))
  if n_groups < 2 * folds:
    raise ValueError(f"too few groups (songs): {n_groups} over {len(groups)} rows for "
                     f"{folds} folds (need >= {2 * folds})")
  cv = GroupKFold(folds, shuffle=True, random_state=seed)
  return list(cv.split(np.zeros((len(groups), 1)), groups=groups))


def ridge_cv(x, y, groups, *, alphas=ALPHAS, folds: int = 5, seed: int = 0):
  """A fitted `StandardScaler -> Ridge` pipeline whose alpha minimises the song-grouped K-fold
  CV mean squared error on (x, y); folds shrink to the number of songs // 2 (at least 2)."""
  from sklearn.linear_model import Ridge
  from sklearn.model_selection import GridSearchCV
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n_songs = len(np.unique(groups))
  folds = max(2, min(folds, n_songs // 2))
  search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()),
                        {"ridge__alpha": list(alphas)}, scoring="neg_mean_squared_error",
                        cv=song_folds(groups, folds, seed))
  return search.fit(x, y).best_estimator_


def ridge_predict(x_fit, y_fit, groups_fit, x_score, *, alphas=ALPHAS, folds: int = 5,
                  seed: int = 0) -> tuple[np.ndarray, float]:
  """`ridge_cv` on the fit rows, predictions on the score rows; (predictions, alpha)."""
  model = ridge_cv(x_fit, y_fit, groups_fit, alphas=alphas, folds=folds, seed=seed)
  return model.predict(np.asarray(x_score, np.float64)), float(model[-1].alpha)


def ridge_refit_draws(x_fit, y_fit, groups, counts, alpha: float, x_score) -> np.ndarray:
  """[B, n_score] predictions of `StandardScaler -> Ridge(alpha)` refitted for each of B
  song-bootstrap draws: draw b weights every fit row by counts[b, its group] (groups [n_fit]
  ints in [0, G), counts [B, G]), the same model as sklearn's pipeline fitted on the rows
  repeated that often (a test checks it). The weighted moments are sums of per-song moments,
  so a draw costs one matrix product instead of a pass over the rows."""
  x = np.asarray(x_fit, np.float64)
  x = x - x.mean(0)  # centred once: the per-draw covariance below loses no precision
  y = np.asarray(y_fit, np.float64)
  xs = np.asarray(x_score, np.float64) - np.asarray(x_fit, np.float64).mean(0)
  g = np.asarray(groups)
  n_groups, d = counts.shape[1], x.shape[1]
  onehot = np.zeros((n_groups, len(g)))
  onehot[g, np.arange(len(g))] = 1.0
  per = lambda v: onehot @ v  # noqa: E731  [G, ...]: the per-song sums
  n_g = onehot.sum(1)
  sx, sy = per(x), per(y)
  sxx = per((x[:, :, None] * x[:, None, :]).reshape(len(x), d * d))
  sxy = per(x * y[:, None])
  c = np.asarray(counts, np.float64)
  tot = c @ n_g  # [B]
  mu = (c @ sx) / tot[:, None]
  ym = (c @ sy) / tot
  cov = (c @ sxx).reshape(-1, d, d) / tot[:, None, None] - mu[:, :, None] * mu[:, None, :]
  cxy = (c @ sxy) / tot[:, None] - mu * ym[:, None]
  var = np.diagonal(cov, axis1=1, axis2=2)
  sd = np.sqrt(np.maximum(var, 0.0))
  sd = np.where(sd > 1e-12 * np.maximum(np.abs(mu), 1.0), sd, 1.0)
  gram = tot[:, None, None] * cov / (sd[:, :, None] * sd[:, None, :]) + alpha * np.eye(d)
  coef = np.linalg.solve(gram, (tot[:, None] * cxy / sd)[..., None])[..., 0]  # [B, d]
  scaled = coef / sd  # [B, d]: the coefficients on the centred, unscaled features
  return scaled @ xs.T - ((mu * scaled).sum(1) - ym)[:, None]



def pca_scores(x, fit, k: int) -> np.ndarray:
  """[N, k'] scores of the top k' <= k principal components of the standardised x, both fitted
  on the `fit` rows (bool [N]), each scaled to unit variance on them. Constant columns and
  components of (numerically) zero variance are dropped."""
  from sklearn.decomposition import PCA
  x = np.asarray(x, np.float64)
  fit = np.asarray(fit, bool)
  mu, sd = x[fit].mean(0), x[fit].std(0)
  keep = sd > 1e-9
  if not keep.any():
    raise ValueError("the representation is constant over the fit rows")
  z = (x[:, keep] - mu[keep]) / sd[keep]
  k = min(k, int(fit.sum()) - 1, int(keep.sum()))
  pca = PCA(n_components=k, svd_solver="full").fit(z[fit])
  ev = pca.explained_variance_
  k = int((ev > 1e-12 * ev[0]).sum())
  scores = pca.transform(z)[:, :k]
  return scores / scores[fit].std(0)


# ------------------------------------------------------------------------------------------------
# The song bootstrap
# ------------------------------------------------------------------------------------------------


def bootstrap_weights(groups, samples: int, seed) -> np.ndarray:
  """[samples, n] row weights: groups (songs) drawn with replacement, each row weighted by its
  group's count in the draw. seed: an int or a tuple of ints (np.random.default_rng)."""
  uniq, idx = np.unique(np.asarray(groups), return_inverse=True)
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=samples)
  return counts[:, idx.reshape(-1)].astype(np.float64)


def resample_songs(groups, rng: np.random.Generator) -> np.ndarray:
  """Row indices of one song-bootstrap resample: songs drawn with replacement, each drawn song
  contributing all of its rows (a song drawn twice contributes them twice)."""
  uniq, idx = np.unique(np.asarray(groups), return_inverse=True)
  rows = [np.flatnonzero(idx == g) for g in range(len(uniq))]
  return np.concatenate([rows[g] for g in rng.integers(0, len(uniq), len(uniq))])


def weighted_r2(y, pred, w=None):
  """R² of pred for y (1 - SSE / SST around y's mean); with weights w [B, n] one R² per row of w
  (pred [n], or [B, n]: one prediction per resample), NaN where a resample's target is (nearly)
  constant."""
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  if w is None:
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
  tot = w.sum(1)
  mean = (w @ y) / tot
  sst = (w * (y[None] - mean[:, None]) ** 2).sum(1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(sst > 1e-9 * tot * max(float(y.var()), 1e-12),
                    1.0 - (w * (y - pred) ** 2).sum(-1) / sst, np.nan)


def percentile_ci(values, level: float = 0.95) -> list[float]:
  """[lo, hi] percentile interval of the finite values (NaN, NaN when none)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return [float("nan"), float("nan")]
  lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
  return [float(lo), float(hi)]


def p_greater(values) -> float:
  """One-sided bootstrap p-value of "the statistic is > 0": the share of finite resampled values
  <= 0, with the +1 correction (never 0)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return float((1 + (v <= 0).sum()) / (1 + len(v)))


# ------------------------------------------------------------------------------------------------
# Multiplicity and equivalence
# ------------------------------------------------------------------------------------------------


def holm(pvalues) -> np.ndarray:
  """Holm's step-down adjusted p-values (family-wise error), same order as given; NaN stays NaN
  and does not count in the family."""
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  ok = np.flatnonzero(np.isfinite(p))
  m = len(ok)
  order = ok[np.argsort(p[ok], kind="stable")]
  running = 0.0
  for i, j in enumerate(order):
    running = max(running, min(1.0, (m - i) * p[j]))
    out[j] = running
  return out


def equivalence(values, margin: float, alpha: float = 0.05, two_sided: bool = True) -> dict:
  """TOST on a bootstrap distribution: the effect lies within (-margin, margin) at level alpha
  when its 1 - 2 alpha percentile interval does. two_sided=False tests the upper side only
  (the effect is below margin: for effects that cannot be negative, such as the R² a nested
  model adds). Returns {'equivalent', 'ci' (that interval), 'margin', 'level', 'two_sided'}."""
  if not margin > 0:
    raise ValueError(f"equivalence margin must be > 0, got {margin}")
  ci = percentile_ci(values, 1 - 2 * alpha)
  ok = ci[1] < margin and (not two_sided or -margin < ci[0])
  return {"equivalent": bool(ok), "ci": ci, "margin": float(margin), "level": 1 - 2 * alpha,
          "two_sided": bool(two_sided)}


def diebold_mariano(d, h: int = 1) -> dict:
  """Diebold-Mariano test of equal forecast accuracy on a time-ordered loss differential d [T]
  (A's loss minus B's; NaN dropped). The long-run variance sums the autocovariances up to lag
  h - 1 (forecasts h steps ahead overlap that long) with Bartlett (Newey-West) weights, which
  keep it positive (the rectangular sum of many lags can nearly cancel and inflate the
  statistic), with the Harvey-Leybourne-Newbold small-sample correction and a t(T - 1)
  reference. Returns {stat, p (two-sided), mean, n}; NaN stat and p when T < 3 or the variance
  is 0."""
  from scipy import stats as st
  d = np.asarray(d, np.float64)
  d = d[np.isfinite(d)]
  t = len(d)
  nan = {"stat": float("nan"), "p": float("nan"), "mean": float(d.mean()) if t else float("nan"),
         "n": t}
  if t < 3:
    return nan
  h = max(1, min(int(h), t // 2))  # keeps the small-sample factor positive
  e = d - d.mean()
  gamma = [float(e @ e) / t] + [float(e[j:] @ e[:-j]) / t for j in range(1, h)]
  var = (gamma[0] + 2 * sum((1 - j / h) * g for j, g in enumerate(gamma[1:], 1))) / t
  if var <= 0:
    return nan
  stat = d.mean() / np.sqrt(var) * np.sqrt((t + 1 - 2 * h + h * (h - 1) / t) / t)
  return {"stat": float(stat), "p": float(2 * st.t.sf(abs(stat), t - 1)), "mean": float(d.mean()),
          "n": t}
