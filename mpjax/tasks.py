"""One small object per task, so the train loop (`mpjax.train`) never asks which task it runs.

    task = tasks.get(config)          # MP2Task, MP3Task or SSLTask
    task.check(config)                # the task's own config fields, named on failure
    task.check_data(config, manifest) # the dataset fits the task (MP3: the window fits)
    task.train_batch(batch, config, step, window)  # per-step randomness: origins, masks
    task.eval_batch(batch, config, window)
    task.forward(model, batch, config, fbank, patchout_key)   # the model's output
    task.loss(out, batch, config)                             # a scalar
    task.eval_output(out, config)                             # what the eval step returns
    task.evaluate(eval_fn, params, data_dir, split, config, manifest, mesh) -> flat metrics
    task.headline(metrics)                                    # one log line

and `head_bias(config, target_stats)` (the level the head starts at), `frozen(config)`
(parameter-path prefix the optimizer keeps fixed) and `forecast_report`
(the test split also gets `mpjax.forecast.report`). The model itself comes from
`mpjax.models.factory.build_model`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mpjax import baselines
from mpjax import metrics as metrics_lib
from mpjax import records
from mpjax import sharding
from mpjax.input import pipeline
from mpjax.models import factory
from mpjax.models import mp3 as mp3_lib
from mpjax.models import ssl as ssl_lib

TASKS = ("mp2", "mp3", "ssl")

# Offsets of the seeds of the per-step random streams, so that patchout (config.seed), MP3's
# forecast origins and SSL's masks draw independently of each other (distinct primes).
ORIGIN_SEED_OFFSET = 7919
MASK_SEED_OFFSET = 104729


def get(config):
  """The task object of config.task."""
  if config.task not in _BY_NAME:
    raise ValueError(f"config.task: {config.task!r}: choose one of {TASKS}")
  return _BY_NAME[config.task]


def _bad(field, why):
  raise ValueError(f"config.{field}: {why}")


def eval_rows(data_dir, split, config, take, *, eval_fn=None, params=None, mesh=None,
              transform=None) -> dict:
  """`take(batch, pred)` -> {name: rows} over `split`'s eval batches (centre crop), concatenated
  and gathered from every process (a collective: every process calls it); pred is the model's
  output on the batch (None without eval_fn). `transform(batch)`: applied to each host batch
  first. {} when the split is empty."""
  ds = pipeline.make_dataset(data_dir, split, cfg=config.input, augment=None, seed=config.seed,
                             train=False)
  parts = {}
  for batch in ds:
    if transform is not None:
      batch = transform(batch)
    pred = None
    if eval_fn is not None:
      pred = sharding.to_host(eval_fn(params, sharding.to_global(batch, mesh)), mesh)
    for k, v in take(batch, pred).items():
      parts.setdefault(k, []).append(v)
  if not parts:
    return {}
  return sharding.gather_rows({k: np.concatenate(v, 0) for k, v in parts.items()})


def in_record_order(rows: dict, keep) -> dict:
  """The rows at `keep` (a boolean mask) in record order (stable: regions in vocabulary order
  within a record), the same rows in the same order whatever the number of processes."""
  idx = np.flatnonzero(keep)
  order = idx[np.argsort(rows["record"][idx], kind="stable")]
  return {k: v[order] for k, v in rows.items()}


class Task:
  """The defaults: no extra config fields, any dataset, no per-step batch transform, nothing
  frozen, the model's output evaluated as is."""
  name = ""
  forecast_report = False

  def check(self, config):
    pass

  def head_bias(self, config, stats):
    return 0.0

  def check_data(self, config, manifest, data_dir):
    pass

  def window(self, config, manifest):
    return None

  def frozen(self, config):
    return None

  def train_batch(self, batch, config, step, window):
    return batch

  def eval_batch(self, batch, config, window):
    return batch

  def eval_output(self, out, config):
    return out


# ------------------------------------------------------------------------------------------------
# MP2: summed streams over the first weeks, per region (regression)
# ------------------------------------------------------------------------------------------------


def mp2_loss(pred, batch, name: str = "mp2"):
  """Masked MSE over the (example, region) pairs with a target `name` (its weight: name_weight)."""
  w = batch[f"{name}_weight"]
  sq = jnp.where(w > 0, (pred - batch[name]) ** 2, 0.0) * w
  return sq.sum() / jnp.maximum(w.sum(), 1.0)


class MP2Task(Task):
  """Regression per (song, region) of the targets in config.mp2.targets ('mp2': the seeds' summed
  streams; 'longevity': the decay slope, data_prep.targets): one head output each. The loss is
  their mean MSE, each weighted by (train-split sd of the first target / its own)², so every
  target counts as much as the first whatever its units (one target: the plain MSE). Metrics of
  the first target are unprefixed, the others' prefixed with their name ('longevity/r2')."""
  name = "mp2"

  def check(self, config):
    factory.mp2_targets(config)

  def check_data(self, config, manifest, data_dir):
    """Sets config.mp2.loss_weights from the train split's target spread (class doc)."""
    targets = factory.mp2_targets(config)
    if len(targets) == 1:
      return
    stats = records.target_stats(data_dir, manifest)
    sd = [stats.get(f"{t}_std") for t in targets]
    missing = [t for t, s in zip(targets, sd) if not s]
    if missing:
      raise ValueError(f"config.mp2.targets {targets}: the train split of {data_dir} has no "
                       f"spread of {missing} (no finite target); train on the others")
    weights = [(sd[0] / s) ** 2 for s in sd]
    with config.unlocked():
      config.mp2.loss_weights = tuple(float(w) for w in weights)

  def head_bias(self, config, stats):
    return [stats.get(f"{t}_mean") or 0.0 for t in factory.mp2_targets(config)]

  def forward(self, model, batch, config, fbank=None, patchout_key=None):
    """[B, R, targets] predictions. Eval with input.eval_crops = C > 1 gives fbank
    [B, C, T, F]: the prediction is the mean over the C crops of the clip."""
    fbank = batch["fbank"] if fbank is None else fbank
    regions = batch["region_ids"]
    if fbank.ndim == 4:
      b, c = fbank.shape[:2]
      pred = model.all_targets(fbank.reshape(b * c, *fbank.shape[2:]),
                               jnp.repeat(regions, c, axis=0), patchout_key=patchout_key)
      return pred.reshape(b, c, *pred.shape[1:]).mean(axis=1)
    return model.all_targets(fbank, regions, patchout_key=patchout_key)

  def loss(self, out, batch, config):
    targets = factory.mp2_targets(config)
    w = config.mp2.get("loss_weights") if config.get("mp2") else None
    w = w or (1.0,) * len(targets)
    return sum(w[j] * mp2_loss(out[..., j], batch, t) for j, t in enumerate(targets)) / len(targets)

  def rows(self, eval_fn, params, data_dir, split, config, mesh) -> dict:
    """`split`'s eval rows in record order (a collective): pred [N, V, targets] and, per target
    t, t / t_weight [N, V]; region_ids [N, V], record [N]. {} when the split is empty."""
    targets = factory.mp2_targets(config)
    keys = ("region_ids", "record", "valid") + sum(((t, f"{t}_weight") for t in targets), ())
    rows = eval_rows(data_dir, split, config, lambda b, pred: {"pred": pred, **{k: b[k] for k in keys}},
                     eval_fn=eval_fn, params=params, mesh=mesh)
    return in_record_order(rows, rows["valid"] > 0) if rows else {}

  def evaluate(self, eval_fn, params, data_dir, split, config, manifest, mesh):
    """Per-region regression metrics of `split` (`metrics.per_region`), per target."""
    return self.scores(self.rows(eval_fn, params, data_dir, split, config, mesh), config,
                       manifest)

  def scores(self, rows, config, manifest):
    """`evaluate`'s metrics of `rows` (as `rows` returns them)."""
    targets = factory.mp2_targets(config)
    if not rows:
      return {}
    out = {}
    for j, t in enumerate(targets):
      m = metrics_lib.per_region(rows["pred"][..., j], rows[t], rows[f"{t}_weight"],
                                 rows["region_ids"], manifest["regions"])
      out.update({(k if j == 0 else f"{t}/{k}"): v for k, v in m.items()})
    return out

  def headline(self, m):
    nan = float("nan")
    return (f"within-region r2 {m.get('within_region_r2', nan):.4f}  pooled r2 "
            f"{m.get('r2', nan):.4f} (region means {m.get('region_means_r2', nan):.4f})  "
            f"mse {m.get('mse', nan):.4f}  spearman {m.get('spearman', nan):.4f}"
            + "".join(f"  | {t} within-region r2 {m[f'{t}/within_region_r2']:.4f} pooled "
                      f"{m.get(f'{t}/r2', nan):.4f}" for t in factory.MP2_TARGETS
                      if f"{t}/within_region_r2" in m))


# ------------------------------------------------------------------------------------------------
# MP3: the stream curve after the debut (forecasting)
# ------------------------------------------------------------------------------------------------


def forecast_window(batch, config, window: int | None, origin_key=None):
  """MP3's view of the series: steps [o, o + window) of the stored ones, with o = 0 (evaluation;
  a batch shifted to a later origin on the host, `shift_to_origin`, carries its own 'origin'),
  or, given origin_key and mp3.origins = O > 0 (training augmentation), a random origin per
  (example, region), uniform over `baselines.origin_support` (the o in [0, O] whose prefix
  holds an observed step; 0 when none does). Returns the batch with series / series_mask /
  series_known replaced and 'origin' [B, R] int32 (steps since the debut of the first prefix
  step)."""
  out = dict(batch)
  s, m = batch["series"], batch["series_mask"]
  known = batch.get("series_known", m)
  window = window or s.shape[-1]
  o_max = int(config.mp3.get("origins", 0) or 0)
  if origin_key is None or not o_max:
    origin = batch.get("origin")
    origin = jnp.zeros(s.shape[:-1], jnp.int32) if origin is None else origin.astype(jnp.int32)
    out.update(series=s[..., :window], series_mask=m[..., :window],
               series_known=known[..., :window], origin=origin)
    if "series_floor" in batch:
      out["series_floor"] = batch["series_floor"][..., :window]
    return out
  support = baselines.origin_support(m, config.mp3.prefix_steps, o_max, xp=jnp)
  logits = jnp.where(support, 0.0, -jnp.inf)
  origin = jax.random.categorical(origin_key, logits).astype(jnp.int32)
  idx = origin[..., None] + jnp.arange(window)
  take = lambda x: jnp.take_along_axis(x, idx, axis=-1)
  out.update(series=take(s), series_mask=take(m), series_known=take(known), origin=origin)
  if "series_floor" in batch:
    out["series_floor"] = take(batch["series_floor"])
  return out


def shift_to_origin(batch, origin: int) -> dict:
  """The host batch as seen from `origin` steps after the debut: every [B, R, H] series array
  moved left by `origin` (the freed steps at the end unknown: 0) and 'origin' [B, R] set, so
  `forecast_window` in eval mode scores the window [origin, origin + W) with the shapes, hence
  the compiled step, of origin 0."""
  out = dict(batch)
  h = batch["series"].shape[-1]
  for name in ("series", "series_mask", "series_known", "series_floor"):
    if name in batch:
      v = np.asarray(batch[name])
      out[name] = np.concatenate([v[..., origin:], np.zeros_like(v[..., :min(origin, h)])], -1)
  out["origin"] = np.full(batch["series"].shape[:-1], origin, np.int32)
  return out


def forecast_rows(data_dir, split, config, manifest, *, eval_fn=None, params=None,
                  mesh=None, origin: int = 0) -> dict:
  """One row per (record of `split`, region it charted in), eval mode (centre crop), in record
  order, gathered from every process (a collective): series [N, W], mask [N, W] (observed),
  known [N, W] (chart in the data), weekday [N], region_ids [N], extrinsic [N, F], record [N],
  and the model's output pred [N, H, Q] (None without eval_fn). W = the window, from `origin`
  steps after the debut (steps past the stored horizon: unknown)."""
  w = factory.window_of(config, manifest)

  def take(batch, pred):
    b, v = batch["region_ids"].shape
    rows = {"keep": ((batch["valid"][:, None] > 0) & (batch["region_mask"] > 0)).reshape(-1),
            "series": batch["series"][..., :w].reshape(b * v, -1),
            "mask": batch["series_mask"][..., :w].reshape(b * v, -1),
            "known": batch["series_known"][..., :w].reshape(b * v, -1),
            "weekday": batch["weekday"].reshape(-1),
            "region_ids": batch["region_ids"].reshape(-1),
            "extrinsic": batch["extrinsic"].reshape(b * v, -1),
            "record": np.repeat(batch["record"], v)}
    if pred is not None:
      rows["pred"] = pred.reshape(b * v, *pred.shape[2:])
    return rows

  rows = eval_rows(data_dir, split, config, take, eval_fn=eval_fn, params=params, mesh=mesh,
                   transform=(lambda b: shift_to_origin(b, origin)) if origin else None)
  if not rows:
    return {}
  rows = in_record_order(rows, rows.pop("keep"))
  rows.setdefault("pred", None)
  return rows


class MP3Task(Task):
  name = "mp3"
  forecast_report = True

  def head_bias(self, config, stats):
    return stats.get("series_mean") or 0.0

  def check(self, config):
    f = config.mp3
    if f.prefix_steps < 0:
      _bad("mp3.prefix_steps", f"{f.prefix_steps} must be >= 0")
    q = list(f.quantiles) if f.quantiles else None
    if q is not None and (any(not 0 < v < 1 for v in q) or any(b <= a for a, b in zip(q, q[1:]))):
      _bad("mp3.quantiles", f"{q}: need strictly increasing levels in (0, 1), or None (point)")
    if q is not None and 0.5 not in q:
      _bad("mp3.quantiles", f"{q}: must include 0.5 (the point forecast)")
    if f.dec_depth < 1:
      _bad("mp3.dec_depth", f"{f.dec_depth} must be >= 1")
    if f.censored_weight < 0:
      _bad("mp3.censored_weight", f"{f.censored_weight} must be >= 0")
    if f.get("origins", 0) < 0 or f.get("window", 0) < 0:
      _bad("mp3.origins", f"origins={f.get('origins')}, window={f.get('window')}: must be >= 0")
    ev = [int(o) for o in (f.get("eval_origins") or ())]
    if any(o < 0 or o > f.get("origins", 0) for o in ev):
      _bad("mp3.eval_origins", f"{ev}: each must be in [0, mp3.origins = {f.get('origins', 0)}] "
           "(the origins the model was trained from)")
    if f.freeze_encoder and not f.audio:
      _bad("mp3.freeze_encoder", "needs mp3.audio=True (there is no encoder to freeze)")
    if config.input.get("eval_crops", 1) != 1:
      _bad("input.eval_crops", "MP3 evaluates one centre crop (set 1)")

  def check_data(self, config, manifest, data_dir):
    w, o = factory.window_of(config, manifest), config.mp3.get("origins", 0)
    if w + o > int(manifest["horizon"]) or w <= config.mp3.prefix_steps:
      raise ValueError(f"config.mp3: window {w} + origins {o} must fit the dataset's horizon "
                       f"{manifest['horizon']} ({data_dir}), and the window exceed prefix_steps "
                       f"{config.mp3.prefix_steps}; build with --horizon {w + o} or lower them")

  def window(self, config, manifest):
    return factory.window_of(config, manifest)

  def frozen(self, config):
    return "encoder/" if config.mp3.freeze_encoder else None

  def train_batch(self, batch, config, step, window):
    key = jax.random.fold_in(jax.random.key(config.seed + ORIGIN_SEED_OFFSET), step)
    return forecast_window(batch, config, window, key)

  def eval_batch(self, batch, config, window):
    return forecast_window(batch, config, window)

  def forward(self, model, batch, config, fbank=None, patchout_key=None):
    """[B, R, H, Q] forecasts from the first k = mp3.prefix_steps steps (after
    `forecast_window`)."""
    fbank = batch["fbank"] if fbank is None else fbank
    k = config.mp3.prefix_steps
    known = batch.get("series_known")
    return model(fbank, batch["region_ids"], batch["series"][..., :k],
                 batch["series_mask"][..., :k], patchout_key=patchout_key,
                 prefix_known=None if known is None else known[..., :k],
                 weekday=batch.get("weekday"), origin=batch.get("origin"),
                 extrinsic=batch.get("extrinsic"),
                 prefix_floor=(batch["series_floor"][..., :k]
                               if config.mp3.get("floor_input", False) else None))

  def loss(self, out, batch, config):
    f = config.mp3
    return mp3_lib.forecast_loss(out, batch["series"], batch["series_mask"],
                                 prefix_steps=f.prefix_steps,
                                 quantiles=factory.quantiles_of(config),
                                 censored_weight=f.censored_weight,
                                 series_known=batch.get("series_known"),
                                 series_floor=batch.get("series_floor"),
                                 per_series=f.get("loss_per_series", False))

  def evaluate(self, eval_fn, params, data_dir, split, config, manifest, mesh):
    """Forecast metrics of the window on `split`: overall and per-region MAE."""
    rows = forecast_rows(data_dir, split, config, manifest, eval_fn=eval_fn, params=params,
                         mesh=mesh)
    if not rows:
      return {}
    k = config.mp3.prefix_steps
    q = factory.quantiles_of(config)
    pred = rows["pred"] if q else rows["pred"][..., 0]
    naive = (baselines.seasonal_naive(rows["series"], rows["mask"], k, config.mp3.season)
             if k >= 1 else None)
    res = metrics_lib.forecast(pred, rows["series"][:, k:], rows["mask"][:, k:],
                               rows["region_ids"], manifest["regions"], quantiles=q,
                               naive=naive, k=k)
    out = dict(res["overall"])
    for name, m in res["per_region"].items():
      out[f"{name}/mae"] = m["mae"]
    return out

  def headline(self, m):
    nan = float("nan")
    return (f"mae {m.get('mae', nan):.4f}  rmse {m.get('rmse', nan):.4f}  "
            f"pinball {m.get('pinball', nan):.4f}  coverage {m.get('coverage', nan):.3f}")


# ------------------------------------------------------------------------------------------------
# SSL: masked spectrogram patch modelling of the encoder (SSAST)
# ------------------------------------------------------------------------------------------------


def with_mask(batch, config, key):
  """The batch with 'mask_idx' [B, M]: the patches SSL masks in each clip (`ssl_lib.mask_indices`),
  keyed by (key, the example's record index): the same clip at the same step gets the same mask
  whatever its row, which depends on the process count."""
  cfg = factory.model_config(config)
  count = ssl_lib.num_masked(cfg, config.ssl.mask_ratio)
  keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(batch["record"])
  return dict(batch, mask_idx=ssl_lib.mask_indices(keys, cfg.grid, count, config.ssl.cluster))


class SSLTask(Task):
  name = "ssl"

  def check(self, config):
    s = config.ssl
    try:
      ssl_lib.num_masked(factory.model_config(config), s.mask_ratio)
    except ValueError as e:
      _bad("ssl.mask_ratio", str(e))
    if s.cluster < 1:
      _bad("ssl.cluster", f"{s.cluster} must be >= 1 (1 = random masking)")
    if s.recon_weight < 0:
      _bad("ssl.recon_weight", f"{s.recon_weight} must be >= 0")
    if config.input.get("eval_crops", 1) != 1:
      _bad("input.eval_crops", "SSL evaluates one centre crop (set 1)")

  def train_batch(self, batch, config, step, window):
    key = jax.random.fold_in(jax.random.key(config.seed + MASK_SEED_OFFSET), step)
    return with_mask(batch, config, key)

  def eval_batch(self, batch, config, window):
    # The same masks at every eval: comparable val losses.
    return with_mask(batch, config, jax.random.key(config.seed + MASK_SEED_OFFSET))

  def forward(self, model, batch, config, fbank=None, patchout_key=None):
    """(contrast, recon, target) [B, M, P] each, for the masked patches (after `with_mask`)."""
    fbank = batch["fbank"] if fbank is None else fbank
    return model(fbank, batch["mask_idx"])

  def loss(self, out, batch, config):
    return ssl_lib.loss(out, config.ssl.recon_weight)

  def eval_output(self, out, config):
    return jnp.stack(ssl_lib.losses(*out), -1)  # [B, 3]: InfoNCE, MSE, accuracy per clip

  def evaluate(self, eval_fn, params, data_dir, split, config, manifest, mesh):
    """Loss, InfoNCE, reconstruction MSE and contrastive accuracy on `split` (fixed masks),
    averaged over clips; the figures are global."""
    rows = eval_rows(data_dir, split, config, lambda b, pred: {"pred": pred, "valid": b["valid"]},
                     eval_fn=eval_fn, params=params, mesh=mesh)
    if not rows:
      return {}
    pred = rows["pred"][rows["valid"] > 0].astype(np.float64)
    nce, mse, acc = pred.mean(0)
    return {"loss": float(nce + config.ssl.recon_weight * mse), "nce": float(nce),
            "mse": float(mse), "acc": float(acc), "n": float(len(pred))}

  def headline(self, m):
    nan = float("nan")
    return (f"loss {m.get('loss', nan):.4f}  nce {m.get('nce', nan):.4f}  "
            f"mse {m.get('mse', nan):.4f}  acc {m.get('acc', nan):.3f}")


_BY_NAME = {"mp2": MP2Task(), "mp3": MP3Task(), "ssl": SSLTask()}
