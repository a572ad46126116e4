"""The model a config asks for: `build_model(config, manifest)` -> MP2, MP3 or SSAST.

The one place that reads `config.model` (the AST encoder) and `config.mp3` (the decoder) into
model constructors, so training, export, evaluation, prediction and the probes all build the
same model from a run's saved config.json.
"""
from __future__ import annotations

from flax import nnx

from mpjax.models import ast as ast_lib
from mpjax.models import mp2 as mp2_lib
from mpjax.models import mp3 as mp3_lib
from mpjax.models import ssl as ssl_lib


def model_config(config) -> ast_lib.ASTConfig:
  """The AST encoder's ASTConfig from config.model."""
  m = config.model
  return ast_lib.config_for(m.variant, fstride=m.fstride, tstride=m.tstride,
                            input_tdim=m.input_tdim, input_fdim=m.input_fdim, ln_eps=m.ln_eps,
                            dtype=m.dtype, attention=m.attention, scan=m.scan,
                            remat_policy=m.remat_policy, patchout_time=m.patchout_time,
                            patchout_freq=m.patchout_freq,
                            **({"depth": m.depth} if m.get("depth") else {}))


MP2_TARGETS = ("mp2", "longevity")


def mp2_targets(config) -> tuple[str, ...]:
  """config.mp2.targets: what the MP2 head predicts, the first being the headline target
  (the one `MP2.__call__` returns and the unprefixed metrics describe). ('mp2',) when unset."""
  f = config.get("mp2")
  targets = tuple(f.get("targets", ("mp2",))) if f is not None else ("mp2",)
  if not targets or len(set(targets)) != len(targets) or set(targets) - set(MP2_TARGETS):
    raise ValueError(f"config.mp2.targets: {targets}: choose distinct names among {MP2_TARGETS} "
                     "(the first is the headline target)")
  return targets


def quantiles_of(config):
  """config.mp3.quantiles as a tuple of floats, or None (point forecast)."""
  q = config.mp3.quantiles
  return tuple(float(v) for v in q) if q else None


def window_of(config, manifest: dict) -> int:
  """Series length MP3 sees, prefix included: mp3.window, or the dataset's horizon when 0.
  A longer stored series serves the later forecast origins of training (mp3.origins)."""
  w = int(config.mp3.get("window", 0) or 0)
  return w or int(manifest["horizon"])


def build_model(config, manifest: dict, *, seed: int = 0, head_bias=0.0):
  """The task's model (config.task: mp2, mp3 or ssl) for a dataset with this manifest (its
  regions, horizon and feature names). head_bias: the regression head's initial level (MP2:
  one per target of config.mp2.targets, or one number for all)."""
  cfg = model_config(config)
  rngs = nnx.Rngs(seed)
  if config.task == "ssl":
    return ssl_lib.SSAST(cfg, rngs=rngs)
  num_regions = len(manifest["regions"])
  if config.task == "mp2":
    return mp2_lib.MP2(cfg, num_regions, config.region_mode, rngs=rngs, head_bias=head_bias,
                       num_targets=len(mp2_targets(config)))
  if config.task == "mp3":
    f = config.mp3
    return mp3_lib.MP3(cfg, num_regions, config.region_mode,
                       horizon=window_of(config, manifest), max_origin=f.get("origins", 0),
                       prefix_steps=f.prefix_steps, quantiles=quantiles_of(config),
                       audio=f.audio, dec_depth=f.dec_depth, dec_heads=f.dec_heads or None,
                       freeze_encoder=f.freeze_encoder, level_init=head_bias,
                       weekday=f.get("weekday_input", False),
                       num_extrinsic=len(manifest["feature_names"]) if f.get("extrinsic_input") else 0,
                       floor_input=f.get("floor_input", False), rngs=rngs)
  raise ValueError(f"config.task={config.task!r}: no model (known: mp2, mp3, ssl)")
