"""AST weight conversion and files: `load()` and the converters it uses.

  from_hf_state_dict(state_dict, hf_config)   HF ASTModel / ASTForAudioClassification, both
                                               the hub checkpoints' naming and transformers 5.x's
  from_deit_state_dict(state_dict, input_fdim, input_tdim, fstride, tstride)
                                               timm DeiT/ViT (and official AST) by the official rule
  big_vision_to_timm(params)                   big_vision / vit_jax .npz names -> timm names
  load(path, ...)                              .safetensors / .pth (weights_only) / .bin / .npz
  stack_blocks / unstack_blocks                per-layer <-> scanned (`model.scan`) parameters

Never unpickles untrusted files: torch files go through `torch.load(weights_only=True)`. Every
mismatch raises `WeightError` naming the key and the shapes. Keyword overrides (e.g.
`dtype='bfloat16'`, `scan=True`, `attention='xla'`) set the other `ASTConfig` fields.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mpjax.models.ast import AST, ASTConfig

class WeightError(ValueError):
  """A state dict does not match the model: names the key and what is wrong."""


def _to_numpy(v) -> np.ndarray:
  if isinstance(v, np.ndarray):
    return v
  if hasattr(v, "detach"):  # torch.Tensor, without importing torch
    v = v.detach().cpu()
    if str(v.dtype) in ("torch.bfloat16", "torch.float16"):
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def _from_flat(cfg: ASTConfig, flat: Mapping[tuple, np.ndarray], source: str) -> AST:
  """Builds an AST whose parameters are `flat` (keys = per-layer NNX state paths; stacked
  when `cfg.scan`). Checks everything."""
  flat = {"/".join(map(str, k)): np.asarray(v, np.float32) for k, v in flat.items()}
  if cfg.scan:
    flat = stack_blocks(flat)
  abstract = nnx.eval_shape(lambda: AST(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  leaves = nnx.to_flat_state(state)
  names = {path: "/".join(map(str, path)) for path, _ in leaves}
  missing = sorted(n for n in names.values() if n not in flat)
  if missing:
    raise WeightError(f"{source}: no value for model parameter(s) {missing[:5]}")
  out = []
  for path, var in leaves:
    value = flat[names[path]]
    want = tuple(var.get_value().shape)
    if value.shape != want:
      raise WeightError(f"{source}: parameter {names[path]} has shape "
                        f"{value.shape}, the model needs {want}")
    out.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(out))


def stack_blocks(flat: Mapping[str, Any], root: str = "blocks/") -> dict[str, Any]:
  """Per-layer parameters `{root}{i}/...` -> scanned `{root}...` with a leading layer axis
  (`model.scan=True`); root is a path prefix ('encoder/blocks/' in MP2/MP3). Other keys, and
  an already scanned layout, pass unchanged."""
  per_layer, out = {}, {}
  pattern = re.compile(re.escape(root) + r"(\d+)/(.+)$")
  for name, value in flat.items():
    m = pattern.match(name)
    if m is None:
      out[name] = value
    else:
      per_layer.setdefault(root + m[2], {})[int(m[1])] = value
  for name, layers in per_layer.items():
    if sorted(layers) != list(range(len(layers))):
      raise WeightError(f"{name}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
    out[name] = np.stack([np.asarray(layers[i]) for i in range(len(layers))])
  return out


def unstack_blocks(flat: Mapping[str, Any], root: str = "blocks/") -> dict[str, Any]:
  """Scanned `{root}...` parameters (leading layer axis) -> per-layer `{root}{i}/...`."""
  out = {}
  pattern = re.compile(re.escape(root) + r"(?!\d+/)(.+)$")
  for name, value in flat.items():
    m = pattern.match(name)
    if m is None:
      out[name] = value
      continue
    for i, layer in enumerate(np.asarray(value)):
      out[f"{root}{i}/{m[1]}"] = layer
  return out


def _take(sd: dict, key: str, shape: tuple | None, source: str) -> np.ndarray:
  if key not in sd:
    raise WeightError(f"{source}: missing key {key!r}")
  v = sd.pop(key)
  if shape is not None and tuple(v.shape) != tuple(shape):
    raise WeightError(f"{source}: key {key!r} has shape {tuple(v.shape)}, expected {tuple(shape)}")
  return v


def _block_params(cfg, flat, i, *, norm1, qkv_w, qkv_b, proj_w, proj_b, norm2, fc1, fc2):
  """Fills block i from torch-layout (out, in) weights."""
  b = ("blocks", i)
  flat[b + ("norm1", "scale")], flat[b + ("norm1", "bias")] = norm1
  flat[b + ("attn", "qkv", "kernel")] = qkv_w.T
  if cfg.qkv_bias:
    flat[b + ("attn", "qkv", "bias")] = qkv_b
  flat[b + ("attn", "proj", "kernel")] = proj_w.T
  flat[b + ("attn", "proj", "bias")] = proj_b
  flat[b + ("norm2", "scale")], flat[b + ("norm2", "bias")] = norm2
  flat[b + ("mlp", "fc1", "kernel")] = fc1[0].T
  flat[b + ("mlp", "fc1", "bias")] = fc1[1]
  flat[b + ("mlp", "fc2", "kernel")] = fc2[0].T
  flat[b + ("mlp", "fc2", "bias")] = fc2[1]


def _leftover(sd: dict, source: str, ignore=()):
  rest = sorted(k for k in sd if not any(re.match(p, k) for p in ignore))
  if rest:
    raise WeightError(f"{source}: unexpected key(s) {rest[:8]}{' ...' if len(rest) > 8 else ''}")


# ----------------------------------------------------------------------------------------------
# HF ASTModel / ASTForAudioClassification
# ----------------------------------------------------------------------------------------------

# Hub checkpoints' naming -> transformers 5.x naming.
_HF_RENAMES = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.(layernorm_before|layernorm_after)\.", r"layers.\1.\2."),
]


def _hf_get(hf_config, name, default=None):
  if isinstance(hf_config, Mapping):
    return hf_config.get(name, default)
  return getattr(hf_config, name, default)


def ast_config_from_hf(hf_config, **overrides) -> ASTConfig:
  """ASTConfig from a transformers `ASTConfig` object or its dict (`config.json`)."""
  act = _hf_get(hf_config, "hidden_act", "gelu")
  if act != "gelu":
    raise WeightError(f"HF config hidden_act={act!r}: only exact 'gelu' is supported")
  patch = _hf_get(hf_config, "patch_size", 16)
  if isinstance(patch, (list, tuple)):
    if len(set(patch)) != 1:
      raise WeightError(f"HF config patch_size={patch!r}: only square patches are supported")
    patch = patch[0]
  head_dim = _hf_get(hf_config, "head_dim", None)
  hidden = _hf_get(hf_config, "hidden_size", 768)
  heads = _hf_get(hf_config, "num_attention_heads", 12)
  if head_dim is not None and head_dim * heads != hidden:
    raise WeightError(f"HF config head_dim={head_dim} x heads={heads} != hidden_size={hidden}")
  kw = dict(
      hidden=hidden, depth=_hf_get(hf_config, "num_hidden_layers", 12), heads=heads,
      mlp_dim=_hf_get(hf_config, "intermediate_size", 3072), patch=patch,
      fstride=_hf_get(hf_config, "frequency_stride", 10),
      tstride=_hf_get(hf_config, "time_stride", 10),
      input_fdim=_hf_get(hf_config, "num_mel_bins", 128),
      input_tdim=_hf_get(hf_config, "max_length", 1024),
      ln_eps=_hf_get(hf_config, "layer_norm_eps", 1e-12),
      qkv_bias=_hf_get(hf_config, "qkv_bias", True))
  kw.update(overrides)
  return ASTConfig(**kw)


def from_hf_state_dict(state_dict: Mapping[str, Any], hf_config, **overrides) -> AST:
  """AST equal to HF `ASTModel` (its `pooler_output`) with the same weights.

  state_dict: an `ASTModel` or `ASTForAudioClassification` state dict (torch tensors or numpy
    arrays), in the released hub checkpoints' naming (`encoder.layer.N.attention.attention.
    query`...) or transformers 5.x's (`layers.N.attention.q_proj`...). The classifier head
    (`classifier.*`) is ignored: use `hf_classifier_params` to get it.
  hf_config: transformers `ASTConfig` or its dict. `overrides` replace ASTConfig fields
    (e.g. dtype='bfloat16'); shapes must still match the weights.
  """
  source = "HF AST state dict"
  cfg = ast_config_from_hf(hf_config, **overrides)
  sd = {}
  for k, v in state_dict.items():
    k = k.removeprefix("audio_spectrogram_transformer.")
    for pat, rep in _HF_RENAMES:
      k = re.sub(pat, rep, k)
    sd[k] = _to_numpy(v)
  d, fp_tp = cfg.hidden, cfg.num_patches
  flat = {}
  flat[("cls_token",)] = _take(sd, "embeddings.cls_token", (1, 1, d), source)
  flat[("dist_token",)] = _take(sd, "embeddings.distillation_token", (1, 1, d), source)
  flat[("pos_embed",)] = _take(sd, "embeddings.position_embeddings", (1, fp_tp + 2, d), source)
  w = _take(sd, "embeddings.patch_embeddings.projection.weight", (d, 1, cfg.patch, cfg.patch), source)
  flat[("patch_embed", "kernel")] = w[:, 0].transpose(1, 2, 0)  # [D,1,kf,kt] -> [kf,kt,D]
  flat[("patch_embed", "bias")] = _take(sd, "embeddings.patch_embeddings.projection.bias", (d,), source)
  lin = lambda n, i, o: (_take(sd, n + ".weight", (o, i), source), _take(sd, n + ".bias", (o,), source))
  ln = lambda n: (_take(sd, n + ".weight", (d,), source), _take(sd, n + ".bias", (d,), source))
  for i in range(cfg.depth):
    p = f"layers.{i}."
    ws, bs = [], []
    for name in ("q_proj", "k_proj", "v_proj"):
      ws.append(_take(sd, p + f"attention.{name}.weight", (d, d), source))
      if cfg.qkv_bias:
        bs.append(_take(sd, p + f"attention.{name}.bias", (d,), source))
    _block_params(
        cfg, flat, i, norm1=ln(p + "layernorm_before"),
        qkv_w=np.concatenate(ws, 0), qkv_b=np.concatenate(bs, 0) if bs else None,
        proj_w=_take(sd, p + "attention.o_proj.weight", (d, d), source),
        proj_b=_take(sd, p + "attention.o_proj.bias", (d,), source),
        norm2=ln(p + "layernorm_after"),
        fc1=lin(p + "mlp.fc1", d, cfg.mlp_dim), fc2=lin(p + "mlp.fc2", cfg.mlp_dim, d))
  flat[("norm", "scale")], flat[("norm", "bias")] = ln("layernorm")
  _leftover(sd, source, ignore=(r"^classifier\.", r"^embeddings\.position_ids$"))
  return _from_flat(cfg, flat, source)


def hf_classifier_params(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The `ASTForAudioClassification` head (layernorm + dense) as numpy arrays, if present."""
  return {k.removeprefix("classifier."): _to_numpy(v) for k, v in state_dict.items()
          if k.startswith("classifier.")}


# ----------------------------------------------------------------------------------------------
# timm DeiT / ViT (and official AST checkpoints) by the official rule
# ----------------------------------------------------------------------------------------------


def _resize_linear_torch(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  """1-D linear resize along `axis` with torch `interpolate(align_corners=False)` semantics."""
  n = x.shape[axis]
  if n == size:
    return x
  # float32 arithmetic in torch's order, so the result matches torch bit for bit (nearly).
  scale = np.float32(n) / np.float32(size)
  src = scale * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))  # torch clamps negative source coordinates to 0
  i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
  i1 = np.minimum(i0 + 1, n - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = size
  lam = lam.reshape(shape)
  x = x.astype(np.float32)
  return (np.float32(1) - lam) * np.take(x, i0, axis=axis) + lam * np.take(x, i1, axis=axis)


def _center_cut(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  n = x.shape[axis]
  start = n // 2 - size // 2  # int(n/2) - int(size/2), as the official code
  return np.take(x, np.arange(start, start + size), axis=axis)


def adapt_pos_grid(grid: np.ndarray, f_dim: int, t_dim: int) -> np.ndarray:
  """Official AST rule for a [D, H, W] position grid (H = frequency, W = time).

  Time axis first: centre-cut when t_dim <= W, else bilinear resize to (H, t_dim); then
  frequency: centre-cut when f_dim <= H, else bilinear resize to (f_dim, t_dim). Bilinear =
  torch `F.interpolate(mode='bilinear', align_corners=False)`, which is separable.
  """
  _, h, w = grid.shape
  grid = _center_cut(grid, 2, t_dim) if t_dim <= w else _resize_linear_torch(grid, 2, t_dim)
  grid = _center_cut(grid, 1, f_dim) if f_dim <= h else _resize_linear_torch(grid, 1, f_dim)
  return grid


def _strip_wrappers(state_dict: Mapping[str, Any]) -> dict:
  sd = dict(state_dict)
  for wrapper in ("model", "state_dict", "model_ema"):
    if wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = dict(sd[wrapper])
      break
  out = {}
  for k, v in sd.items():
    k = k.removeprefix("module.")
    k = k.removeprefix("v.")  # official AST checkpoints: module.v.*
    out[k] = v
  return out


def from_deit_state_dict(state_dict: Mapping[str, Any], input_fdim: int = 128,
                         input_tdim: int = 1024, fstride: int = 10, tstride: int = 10, *,
                         num_heads: int | None = None, source_grid: tuple[int, int] | None = None,
                         ln_eps: float = 1e-6, **overrides) -> AST:
  """AST initialised from a timm DeiT/ViT state dict by the official AST rule.

  - patch conv: the RGB input channels are summed into one (a 1-channel conv, e.g. an
    official AST checkpoint, is taken as is);
  - position grid (24x24 for 384 inputs; `source_grid` when not square, e.g. (12, 101) for an
    official AST AudioSet checkpoint): adjusted time axis first, then frequency, centre-cut
    when the target is smaller, else bilinear with torch semantics; cls/dist rows kept first.
  - a ViT without a distillation token: the cls token (and its position row) is duplicated
    as the distillation token, so the pooled output starts as the ViT's cls output.
  - heads: not stored in weights; default hidden // 64 (all DeiT/ViT sizes), else `num_heads`.
  Heads (`head.*`, `head_dist.*`, official AST `mlp_head.*`) are ignored.
  """
  source = "DeiT/ViT state dict"
  sd = {k: _to_numpy(v) for k, v in _strip_wrappers(state_dict).items()}
  w = _take(sd, "patch_embed.proj.weight", None, source)
  if w.ndim != 4 or w.shape[2] != w.shape[3]:
    raise WeightError(f"{source}: key 'patch_embed.proj.weight' has shape {w.shape}, expected [D, C, p, p]")
  d, chans, patch, _ = w.shape
  depth = 0
  while f"blocks.{depth}.norm1.weight" in sd:
    depth += 1
  if depth == 0:
    raise WeightError(f"{source}: missing key 'blocks.0.norm1.weight'")
  heads = num_heads or (d // 64 if d % 64 == 0 else None)
  if not heads:
    raise WeightError(f"{source}: cannot infer heads for hidden={d}; pass num_heads")
  mlp_dim = sd[f"blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 4 * d
  qkv_bias = "blocks.0.attn.qkv.bias" in sd
  cfg = ASTConfig(hidden=d, depth=depth, heads=heads, mlp_dim=mlp_dim, patch=patch,
                  fstride=fstride, tstride=tstride, input_fdim=input_fdim,
                  input_tdim=input_tdim, ln_eps=ln_eps, qkv_bias=qkv_bias, **overrides)
  flat = {}
  kernel = w.sum(axis=1)  # [D, p, p]; official rule: sum the RGB channels
  flat[("patch_embed", "kernel")] = kernel.transpose(1, 2, 0)
  flat[("patch_embed", "bias")] = _take(sd, "patch_embed.proj.bias", (d,), source)

  cls = _take(sd, "cls_token", (1, 1, d), source)
  has_dist = "dist_token" in sd
  dist = _take(sd, "dist_token", (1, 1, d), source) if has_dist else cls.copy()
  pos = _take(sd, "pos_embed", None, source)
  n_prefix = 2 if has_dist else 1
  if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d:
    raise WeightError(f"{source}: key 'pos_embed' has shape {pos.shape}, expected [1, N, {d}]")
  n_grid = pos.shape[1] - n_prefix
  if source_grid is None:
    side = int(round(np.sqrt(n_grid)))
    if side * side != n_grid:
      raise WeightError(f"{source}: key 'pos_embed' has {n_grid} patch rows, not a square grid; "
                        "pass source_grid=(freq, time)")
    source_grid = (side, side)
  if source_grid[0] * source_grid[1] != n_grid:
    raise WeightError(f"{source}: key 'pos_embed' has {n_grid} patch rows, source_grid={source_grid}")
  grid = pos[0, n_prefix:].T.reshape(d, *source_grid)
  f_dim, t_dim = cfg.grid
  grid = adapt_pos_grid(grid, f_dim, t_dim).reshape(d, f_dim * t_dim).T
  prefix = pos[:, :n_prefix]
  if not has_dist:
    prefix = np.concatenate([prefix, prefix], axis=1)
  flat[("cls_token",)] = cls
  flat[("dist_token",)] = dist
  flat[("pos_embed",)] = np.concatenate([prefix, grid[None]], axis=1)

  lin = lambda n, i, o: (_take(sd, n + ".weight", (o, i), source), _take(sd, n + ".bias", (o,), source))
  ln = lambda n: (_take(sd, n + ".weight", (d,), source), _take(sd, n + ".bias", (d,), source))
  for i in range(depth):
    p = f"blocks.{i}."
    _block_params(
        cfg, flat, i, norm1=ln(p + "norm1"),
        qkv_w=_take(sd, p + "attn.qkv.weight", (3 * d, d), source),
        qkv_b=_take(sd, p + "attn.qkv.bias", (3 * d,), source) if qkv_bias else None,
        proj_w=_take(sd, p + "attn.proj.weight", (d, d), source),
        proj_b=_take(sd, p + "attn.proj.bias", (d,), source),
        norm2=ln(p + "norm2"), fc1=lin(p + "mlp.fc1", d, mlp_dim), fc2=lin(p + "mlp.fc2", mlp_dim, d))
  flat[("norm", "scale")], flat[("norm", "bias")] = ln("norm")
  _leftover(sd, source, ignore=(r"^head\.", r"^head_dist\.", r"^mlp_head\."))
  return _from_flat(cfg, flat, source)


# ----------------------------------------------------------------------------------------------
# big_vision / vit_jax .npz -> timm naming
# ----------------------------------------------------------------------------------------------


def big_vision_to_timm(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Maps a big_vision (or vit_jax) ViT param dict with '/'-joined keys to timm names.

  Handles per-layer `Transformer/encoderblock_N/...` and scanned `Transformer/encoderblock/...`
  (leading layer axis). Position embeddings without a cls row (big_vision `pos_embedding`)
  get a zero cls row: big_vision adds no position embedding to the cls token.
  """
  source = "big_vision npz"
  p = {k.removeprefix("params/"): np.asarray(v) for k, v in params.items()}
  if "embedding/kernel" not in p:
    raise WeightError(f"{source}: missing key 'embedding/kernel'")
  out = {}
  k = p.pop("embedding/kernel")  # [p, p, C, D] (HWIO)
  out["patch_embed.proj.weight"] = k.transpose(3, 2, 0, 1)
  out["patch_embed.proj.bias"] = _take(p, "embedding/bias", None, source)
  d = k.shape[-1]
  cls = p.pop("cls", None)
  if cls is None:
    raise WeightError(f"{source}: missing key 'cls' (only cls-token ViTs can become an AST)")
  out["cls_token"] = cls.reshape(1, 1, d)
  if "Transformer/posembed_input/pos_embedding" in p:  # vit_jax: includes the cls row
    out["pos_embed"] = p.pop("Transformer/posembed_input/pos_embedding")
  else:
    pe = _take(p, "pos_embedding", None, source)
    out["pos_embed"] = np.concatenate([np.zeros((1, 1, d), pe.dtype), pe.reshape(1, -1, d)], 1)

  def blocks():
    if any(key.startswith("Transformer/encoderblock/") for key in p):
      scanned = {key[len("Transformer/encoderblock/"):]: p.pop(key) for key in list(p)
                 if key.startswith("Transformer/encoderblock/")}
      n = next(iter(scanned.values())).shape[0]
      return [{key: v[i] for key, v in scanned.items()} for i in range(n)]
    res, i = [], 0
    while any(key.startswith(f"Transformer/encoderblock_{i}/") for key in p):
      pre = f"Transformer/encoderblock_{i}/"
      res.append({key[len(pre):]: p.pop(key) for key in list(p) if key.startswith(pre)})
      i += 1
    return res

  for i, b in enumerate(blocks()):
    t = f"blocks.{i}."
    src = f"{source} block {i}"
    out[t + "norm1.weight"] = _take(b, "LayerNorm_0/scale", None, src)
    out[t + "norm1.bias"] = _take(b, "LayerNorm_0/bias", None, src)
    out[t + "norm2.weight"] = _take(b, "LayerNorm_1/scale", None, src)
    out[t + "norm2.bias"] = _take(b, "LayerNorm_1/bias", None, src)
    att = "MultiHeadDotProductAttention_0/"
    qkv_w = [_take(b, att + n + "/kernel", None, src).reshape(d, d).T for n in ("query", "key", "value")]
    qkv_b = [_take(b, att + n + "/bias", None, src).reshape(d) for n in ("query", "key", "value")]
    out[t + "attn.qkv.weight"] = np.concatenate(qkv_w, 0)
    out[t + "attn.qkv.bias"] = np.concatenate(qkv_b, 0)
    out[t + "attn.proj.weight"] = _take(b, att + "out/kernel", None, src).reshape(d, d).T
    out[t + "attn.proj.bias"] = _take(b, att + "out/bias", None, src)
    out[t + "mlp.fc1.weight"] = _take(b, "MlpBlock_0/Dense_0/kernel", None, src).T
    out[t + "mlp.fc1.bias"] = _take(b, "MlpBlock_0/Dense_0/bias", None, src)
    out[t + "mlp.fc2.weight"] = _take(b, "MlpBlock_0/Dense_1/kernel", None, src).T
    out[t + "mlp.fc2.bias"] = _take(b, "MlpBlock_0/Dense_1/bias", None, src)
    _leftover(b, src)
  out["norm.weight"] = _take(p, "Transformer/encoder_norm/scale", None, source)
  out["norm.bias"] = _take(p, "Transformer/encoder_norm/bias", None, source)
  _leftover(p, source, ignore=(r"^head/", r"^pre_logits/", r"^MAPHead_0/"))
  return out


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: str) -> dict[str, Any]:
  """Reads weights without unpickling untrusted data: safetensors, torch (weights_only), npz."""
  ext = os.path.splitext(path)[1].lower()
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if ext in (".pth", ".pt", ".bin", ".ckpt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0), "
                        "or convert it to .safetensors") from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
      raise WeightError(f"{path}: not loadable with torch.load(weights_only=True) "
                        f"(refusing to unpickle arbitrary objects): {e}") from e
    if not isinstance(obj, Mapping):
      raise WeightError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  raise WeightError(f"{path}: unknown weights format {ext!r} "
                    "(use .safetensors, .pth/.pt/.bin (torch) or .npz (big_vision))")


def load(path: str, *, input_fdim: int = 128, input_tdim: int = 1024, fstride: int = 10,
         tstride: int = 10, hf_config=None, **kwargs) -> AST:
  """AST from a weights file, whatever its origin.

  - HF AST (keys `embeddings.patch_embeddings...`, optionally prefixed
    `audio_spectrogram_transformer.`): shapes come from `hf_config` (object, dict, or path of a
    config.json; default: `config.json` next to the weights). Its own strides/lengths apply.
  - timm DeiT/ViT or official AST (`patch_embed.proj.weight`): the official conversion to the
    given input size and strides (`from_deit_state_dict`; kwargs go there).
  - big_vision/vit_jax `.npz`: mapped to timm names, then as above.
  """
  sd = read_state_dict(path)
  keys = set(sd)
  if any(k.removeprefix("audio_spectrogram_transformer.").startswith("embeddings.patch_embeddings")
         for k in keys):
    if hf_config is None:
      cand = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
      if not os.path.exists(cand):
        raise WeightError(f"{path}: HF AST weights need hf_config (or a config.json beside them)")
      hf_config = cand
    if isinstance(hf_config, (str, os.PathLike)):
      with open(hf_config) as f:
        hf_config = json.load(f)
    return from_hf_state_dict(sd, hf_config, **kwargs)
  if any(k.removeprefix("params/") == "embedding/kernel" for k in keys):
    sd = big_vision_to_timm(sd)
  return from_deit_state_dict(sd, input_fdim, input_tdim, fstride, tstride, **kwargs)
