"""AST: numerical parity with HF's PyTorch ASTModel, and the DeiT/ViT/big_vision conversions.

Parity is measured as max|ours - HF| / max|HF| over the pooled output (float32, matmul
precision 'highest' via conftest). No pretrained weights exist offline: state dicts are built
with the real names and shapes and random values.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from flax import nnx

from mpjax import sharding
from mpjax.models import ast

RTOL = 1e-5
# HF parity holds for the portable XLA attention and for `auto` (XLA on CPU, chosen at lowering).
ATTENTION = ["xla", "auto"]


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def hf_model(cls=transformers.ASTModel, seed=0, **kw):
  base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=160,
              num_mel_bins=32, max_length=96, frequency_stride=8, time_stride=8)
  base.update(kw)
  cfg = transformers.ASTConfig(**base)
  if cls is transformers.ASTForAudioClassification:
    cfg.num_labels = 1
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():  # HF zero-inits cls/pos; random everything so parity means something
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  return model, cfg


def pooled(model, x):
  with torch.no_grad():
    m = model.audio_spectrogram_transformer if hasattr(model, "classifier") else model
    return m(torch.from_numpy(x)).pooler_output.numpy()


def to_hub_naming(sd):
  """transformers 5.x names -> the names in the released hub checkpoints."""
  out = {}
  for k, v in sd.items():
    k = re.sub(r"layers\.(\d+)\.attention\.(q|k|v)_proj\.",
               lambda m: f"encoder.layer.{m[1]}.attention.attention."
               f"{dict(q='query', k='key', v='value')[m[2]]}.", k)
    k = re.sub(r"layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense.", k)
    k = re.sub(r"layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense.", k)
    k = re.sub(r"layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense.", k)
    k = re.sub(r"layers\.(\d+)\.(layernorm_before|layernorm_after)\.", r"encoder.layer.\1.\2.", k)
    out[k] = v
  return out


# --------------------------------------------------------------------------------------------
# HF parity
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("kw", [
    dict(),                                                      # non-overlapping, stride 8 = ...
    dict(frequency_stride=16, time_stride=16, max_length=128),   # stride == patch: reshape path
    dict(frequency_stride=10, time_stride=10, max_length=100),   # overlapping (official 10/10)
    dict(frequency_stride=6, time_stride=12, max_length=77),     # asymmetric, odd max_length
    dict(num_mel_bins=128, max_length=300, frequency_stride=10, time_stride=10,
         hidden_size=96, num_attention_heads=3, num_hidden_layers=3),
])
def test_hf_parity_shapes(kw, attention):
  model, cfg = hf_model(**kw)
  ours = ast.from_hf_state_dict(model.state_dict(), cfg, attention=attention)
  x = np.random.RandomState(1).randn(3, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
  ref = pooled(model, x)
  out = ours(x)
  assert out.shape == (3, cfg.hidden_size)
  assert rel_err(out, ref) <= RTOL
  # The jitted call (as training uses it) agrees too.
  out_jit = nnx.jit(lambda m, x: m(x))(ours, x)
  assert rel_err(out_jit, ref) <= RTOL


def test_hf_parity_both_namings_and_classifier_prefix():
  model, cfg = hf_model(transformers.ASTForAudioClassification)
  sd = model.state_dict()
  assert any(k.startswith("audio_spectrogram_transformer.layers.") for k in sd)
  assert "classifier.dense.weight" in sd
  x = np.random.RandomState(2).randn(2, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
  ref = pooled(model, x)
  new = ast.from_hf_state_dict(sd, cfg)
  old = ast.from_hf_state_dict(to_hub_naming(sd), cfg.to_dict())  # dict config, hub names
  assert any(k.startswith("audio_spectrogram_transformer.encoder.layer.0.attention.attention.query")
             for k in to_hub_naming(sd))
  assert rel_err(new(x), ref) <= RTOL
  assert rel_err(old(x), ref) <= RTOL
  head = ast.hf_classifier_params(sd)
  assert set(head) == {"layernorm.weight", "layernorm.bias", "dense.weight", "dense.bias"}


def test_parity_is_sensitive_to_a_wrong_weight():
  """The parity check can fail: a single transposed block weight breaks it."""
  model, cfg = hf_model(hidden_size=64)
  sd = {k: v.clone() for k, v in model.state_dict().items()}
  sd["layers.1.attention.k_proj.weight"] = sd["layers.1.attention.k_proj.weight"].T.contiguous()
  ours = ast.from_hf_state_dict(sd, cfg)
  x = np.random.RandomState(3).randn(2, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
  assert rel_err(ours(x), pooled(model, x)) > 1e-3


def test_bf16_compute_close_to_float32():
  model, cfg = hf_model()
  f32 = ast.from_hf_state_dict(model.state_dict(), cfg)
  bf16 = ast.from_hf_state_dict(model.state_dict(), cfg, dtype="bfloat16")
  x = np.random.RandomState(4).randn(2, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
  out = bf16(x)
  assert out.dtype == jnp.float32
  assert bf16.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32  # params stay float32
  err = rel_err(out, f32(x))
  assert 1e-6 < err < 5e-2  # really computed in bf16, and still close


def small_cfg(**kw):
  return ast.config_for("tiny", depth=3, input_fdim=32, input_tdim=48, fstride=8, tstride=8, **kw)


def grads_of(model, x, w):
  loss = lambda m: jnp.sum(m.encode(x) * w)
  return nnx.jit(nnx.grad(loss))(model)


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_policies_equal_none(policy):
  x = np.random.RandomState(5).randn(2, 48, 32).astype(np.float32)
  w = np.random.RandomState(6).randn(2, 17, 192).astype(np.float32)
  m1 = ast.init(small_cfg(), seed=3)
  m2 = ast.init(small_cfg(remat_policy=policy), seed=3)
  np.testing.assert_allclose(m1(x), m2(x), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_of(m1, x, w)), jax.tree.leaves(grads_of(m2, x, w))):
    assert rel_err(b, a) <= 1e-5
  with pytest.raises(ValueError, match="remat_policy"):
    small_cfg(remat_policy="everything")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_equals_unscanned(remat):
  """Same weights, stacked: outputs and gradients equal; the layouts convert both ways."""
  x = np.random.RandomState(7).randn(2, 48, 32).astype(np.float32)
  w = np.random.RandomState(8).randn(2, 17, 192).astype(np.float32)
  loop = ast.init(small_cfg(remat_policy=remat), seed=4)
  scan = ast.init(small_cfg(scan=True, remat_policy=remat), seed=9)
  flat = {sharding.path_str(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(loop, nnx.Param))}
  stacked = ast.stack_blocks(flat)
  assert stacked["blocks/attn/qkv/kernel"].shape == (3, 192, 576)
  nnx.update(scan, nnx.from_flat_state(
      [(tuple(name.split("/")), nnx.Param(jnp.asarray(v))) for name, v in stacked.items()]))
  np.testing.assert_allclose(scan(x), loop(x), rtol=1e-5, atol=1e-6)
  g_loop, g_scan = grads_of(loop, x, w), grads_of(scan, x, w)
  flat_scan = {sharding.path_str(p): np.asarray(v)
               for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(g_scan, nnx.Param))}
  flat_loop = {sharding.path_str(p): np.asarray(v)
               for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(g_loop, nnx.Param))}
  back = ast.unstack_blocks(flat_scan)
  assert set(back) == set(flat_loop)
  for name in flat_loop:
    assert rel_err(back[name], flat_loop[name]) <= 1e-5, name
  # ast.load-style conversion straight into the scanned layout gives the same model.
  hf, hf_cfg = hf_model()
  a = ast.from_hf_state_dict(hf.state_dict(), hf_cfg)
  b = ast.from_hf_state_dict(hf.state_dict(), hf_cfg, scan=True)
  xx = np.random.RandomState(9).randn(2, hf_cfg.max_length, hf_cfg.num_mel_bins).astype(np.float32)
  np.testing.assert_allclose(b(xx), a(xx), rtol=1e-5, atol=1e-6)


def test_jvp_through_the_xla_model():
  m = ast.init(small_cfg(attention="xla"), seed=2)
  x = np.random.RandomState(10).randn(2, 48, 32).astype(np.float32)
  t = np.random.RandomState(11).randn(2, 48, 32).astype(np.float32)
  out, tangent = jax.jvp(lambda v: m(v), (x,), (t,))
  eps = 1e-3
  fd = (m(x + eps * t) - m(x - eps * t)) / (2 * eps)
  assert rel_err(tangent, fd) <= 1e-2
  assert float(jnp.abs(tangent).max()) > 0


def test_patchout_off_is_bit_equal_and_on_keeps_the_promised_tokens():
  x = np.random.RandomState(12).randn(2, 48, 32).astype(np.float32)
  plain = ast.init(small_cfg(), seed=5)
  po = ast.init(small_cfg(patchout_time=0.4, patchout_freq=0.34), seed=5)
  key = jax.random.key(0)
  # No key (eval) or zero rates: bit-equal to no patchout.
  np.testing.assert_array_equal(np.asarray(po(x)), np.asarray(plain(x)))
  np.testing.assert_array_equal(np.asarray(plain(x, patchout_key=key)), np.asarray(plain(x)))
  assert po.cfg.grid == (3, 5) and po.cfg.patchout_grid == (2, 3)
  tokens = po.encode(x, patchout_key=key)
  assert tokens.shape == (2, 2 + 2 * 3, 192)
  # Different keys drop different patches; the same key the same ones.
  a, b = po(x, patchout_key=key), po(x, patchout_key=jax.random.key(1))
  assert float(jnp.abs(a - b).max()) > 1e-4
  np.testing.assert_array_equal(np.asarray(a), np.asarray(po(x, patchout_key=key)))


def test_patchout_keeps_position_embeddings_aligned():
  """A kept patch carries its own position embedding: with a zero patch kernel (tokens are
  bias + position) the kept tokens equal exactly the position rows of the kept grid cells."""
  m = ast.init(small_cfg(patchout_time=0.5), seed=6)
  m.patch_embed.kernel[...] = jnp.zeros_like(m.patch_embed.kernel[...])
  x = np.random.RandomState(13).randn(1, 48, 32).astype(np.float32)
  key = jax.random.key(3)
  kept = np.asarray(m.embed(x, patchout_key=key))[0, 2:]
  pos = np.asarray(m.pos_embed[...])[0, 2:] + np.asarray(m.patch_embed.bias[...])
  fp, tp = m.cfg.grid
  grid = pos.reshape(fp, tp, -1)
  _, kt = jax.random.split(key)
  cols = np.sort(np.asarray(jax.random.permutation(kt, tp))[:m.cfg.patchout_grid[1]])
  np.testing.assert_allclose(kept, grid[:, cols].reshape(-1, grid.shape[-1]), rtol=1e-6)


def test_bf16_gradients_close_to_float32():
  """A bf16 compute step gives finite gradients within a few % of float32 on the same weights."""
  x = np.random.RandomState(14).randn(2, 48, 32).astype(np.float32)
  w = np.random.RandomState(15).randn(2, 17, 192).astype(np.float32)
  f32 = ast.init(small_cfg(), seed=7)
  bf16 = ast.init(small_cfg(dtype="bfloat16"), seed=7)
  g32, g16 = grads_of(f32, x, w), grads_of(bf16, x, w)
  for a, b in zip(jax.tree.leaves(nnx.state(g32)), jax.tree.leaves(nnx.state(g16))):
    assert b.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(b)))
    assert rel_err(b, a) <= 0.05


# --------------------------------------------------------------------------------------------
# DeiT / ViT conversion against an independent torch port of the official rule
# --------------------------------------------------------------------------------------------

def deit_state_dict(d=128, depth=2, grid=24, dist=True, seed=0):
  g = torch.Generator().manual_seed(seed)
  r = lambda *s: torch.randn(*s, generator=g) * 0.2
  sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, grid * grid + (2 if dist else 1), d),
        "patch_embed.proj.weight": r(d, 3, 16, 16), "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d), "norm.bias": r(d), "head.weight": r(10, d), "head.bias": r(10)}
  if dist:
    sd.update({"dist_token": r(1, 1, d), "head_dist.weight": r(10, d), "head_dist.bias": r(10)})
  for i in range(depth):
    p = f"blocks.{i}."
    sd.update({p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
               p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
               p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
               p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
               p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d),
               p + "mlp.fc2.weight": r(d, 4 * d), p + "mlp.fc2.bias": r(d)})
  return sd


def official_ast_reference(sd, fdim, tdim, fstride, tstride):
  """Port of the official ASTModel.__init__ (imagenet_pretrain branch) into HF ASTModel names."""
  d = sd["cls_token"].shape[-1]
  hw = 24
  f_dim = (fdim - 16) // fstride + 1
  t_dim = (tdim - 16) // tstride + 1
  proj_w = torch.sum(sd["patch_embed.proj.weight"], dim=1).unsqueeze(1)
  new_pos = sd["pos_embed"][:, 2:, :].detach().reshape(1, hw * hw, d).transpose(1, 2).reshape(1, d, hw, hw)
  if t_dim <= hw:
    new_pos = new_pos[:, :, :, int(hw / 2) - int(t_dim / 2): int(hw / 2) - int(t_dim / 2) + t_dim]
  else:
    new_pos = F.interpolate(new_pos, size=(hw, t_dim), mode="bilinear")
  if f_dim <= hw:
    new_pos = new_pos[:, :, int(hw / 2) - int(f_dim / 2): int(hw / 2) - int(f_dim / 2) + f_dim, :]
  else:
    new_pos = F.interpolate(new_pos, size=(f_dim, t_dim), mode="bilinear")
  new_pos = new_pos.reshape(1, d, f_dim * t_dim).transpose(1, 2)
  pos = torch.cat([sd["pos_embed"][:, :2, :].detach(), new_pos], dim=1)
  hf = {"embeddings.cls_token": sd["cls_token"], "embeddings.distillation_token": sd["dist_token"],
        "embeddings.position_embeddings": pos,
        "embeddings.patch_embeddings.projection.weight": proj_w,
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
  i = 0
  while f"blocks.{i}.norm1.weight" in sd:
    p, q = f"blocks.{i}.", f"layers.{i}."
    wq, wk, wv = sd[p + "attn.qkv.weight"].chunk(3, 0)
    bq, bk, bv = sd[p + "attn.qkv.bias"].chunk(3, 0)
    hf.update({q + "attention.q_proj.weight": wq, q + "attention.q_proj.bias": bq,
               q + "attention.k_proj.weight": wk, q + "attention.k_proj.bias": bk,
               q + "attention.v_proj.weight": wv, q + "attention.v_proj.bias": bv,
               q + "attention.o_proj.weight": sd[p + "attn.proj.weight"],
               q + "attention.o_proj.bias": sd[p + "attn.proj.bias"],
               q + "layernorm_before.weight": sd[p + "norm1.weight"],
               q + "layernorm_before.bias": sd[p + "norm1.bias"],
               q + "layernorm_after.weight": sd[p + "norm2.weight"],
               q + "layernorm_after.bias": sd[p + "norm2.bias"],
               q + "mlp.fc1.weight": sd[p + "mlp.fc1.weight"], q + "mlp.fc1.bias": sd[p + "mlp.fc1.bias"],
               q + "mlp.fc2.weight": sd[p + "mlp.fc2.weight"], q + "mlp.fc2.bias": sd[p + "mlp.fc2.bias"]})
    i += 1
  cfg = transformers.ASTConfig(hidden_size=d, num_hidden_layers=i, num_attention_heads=d // 64,
                               intermediate_size=4 * d, num_mel_bins=fdim, max_length=tdim,
                               frequency_stride=fstride, time_stride=tstride, layer_norm_eps=1e-6)
  model = transformers.ASTModel(cfg).eval()
  model.load_state_dict(hf)
  return model, pos


@pytest.mark.parametrize("fdim,tdim,fstride,tstride,branch", [
    (128, 100, 10, 10, "cut t (9 <= 24), cut f (12)"),
    (128, 400, 10, 10, "interpolate t (39 > 24), cut f (12)"),
    (128, 300, 4, 10, "interpolate t (29) and f (29 > 24)"),
    (64, 208, 16, 16, "stride == patch, cut f (4), cut t (13)"),
])
def test_deit_conversion_matches_official_rule(fdim, tdim, fstride, tstride, branch):
  sd = deit_state_dict()
  ref_model, ref_pos = official_ast_reference(sd, fdim, tdim, fstride, tstride)
  ours = ast.from_deit_state_dict(sd, fdim, tdim, fstride, tstride)
  np.testing.assert_allclose(ours.pos_embed[...], ref_pos.numpy(), rtol=1e-6, atol=1e-6,
                             err_msg=branch)
  x = np.random.RandomState(6).randn(2, tdim, fdim).astype(np.float32)
  assert rel_err(ours(x), pooled(ref_model, x)) <= RTOL, branch


def test_deit_conversion_from_numpy_and_wrapped_checkpoint():
  sd = deit_state_dict(seed=1)
  wrapped = {"model": {k: v.numpy() for k, v in sd.items()}}
  a = ast.from_deit_state_dict(sd, 128, 100, 10, 10)
  b = ast.from_deit_state_dict(wrapped, 128, 100, 10, 10)
  np.testing.assert_array_equal(a.pos_embed[...], b.pos_embed[...])


def test_vit_without_distillation_token_duplicates_cls():
  sd = deit_state_dict(dist=False, seed=2)
  m = ast.from_deit_state_dict(sd, 128, 100, 10, 10)
  np.testing.assert_array_equal(m.dist_token[...], m.cls_token[...])
  np.testing.assert_array_equal(m.pos_embed[0, 1], m.pos_embed[0, 0])
  np.testing.assert_array_equal(m.pos_embed[0, 0], sd["pos_embed"][0, 0].numpy())
  # With dist == cls (and equal position rows), the pooled output is the cls output.
  x = np.random.RandomState(7).randn(1, 100, 128).astype(np.float32)
  tok = m.encode(x)
  np.testing.assert_allclose(m(x), tok[:, 0], rtol=1e-5, atol=1e-6)


def test_big_vision_npz_roundtrip(tmp_path):
  """timm weights written in big_vision layout (per-layer and scanned) convert to the same AST."""
  sd = {k: v.numpy() for k, v in deit_state_dict(dist=False, seed=3).items()}
  d, heads = 128, 2

  def bv(scanned):
    p = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"],
         "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    blocks = []
    for i in range(2):
      t = f"blocks.{i}."
      wq, wk, wv = np.split(sd[t + "attn.qkv.weight"], 3)
      bq, bk, bv_ = np.split(sd[t + "attn.qkv.bias"], 3)
      att = "MultiHeadDotProductAttention_0/"
      blocks.append({
          "LayerNorm_0/scale": sd[t + "norm1.weight"], "LayerNorm_0/bias": sd[t + "norm1.bias"],
          "LayerNorm_1/scale": sd[t + "norm2.weight"], "LayerNorm_1/bias": sd[t + "norm2.bias"],
          att + "query/kernel": wq.T.reshape(d, heads, d // heads),
          att + "key/kernel": wk.T.reshape(d, heads, d // heads),
          att + "value/kernel": wv.T.reshape(d, heads, d // heads),
          att + "query/bias": bq.reshape(heads, -1), att + "key/bias": bk.reshape(heads, -1),
          att + "value/bias": bv_.reshape(heads, -1),
          att + "out/kernel": sd[t + "attn.proj.weight"].T.reshape(heads, d // heads, d),
          att + "out/bias": sd[t + "attn.proj.bias"],
          "MlpBlock_0/Dense_0/kernel": sd[t + "mlp.fc1.weight"].T,
          "MlpBlock_0/Dense_0/bias": sd[t + "mlp.fc1.bias"],
          "MlpBlock_0/Dense_1/kernel": sd[t + "mlp.fc2.weight"].T,
          "MlpBlock_0/Dense_1/bias": sd[t + "mlp.fc2.bias"]})
    if scanned:
      for k in blocks[0]:
        p["Transformer/encoderblock/" + k] = np.stack([b[k] for b in blocks])
    else:
      for i, b in enumerate(blocks):
        p.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
    return p

  ref = ast.from_deit_state_dict(sd, 128, 100, 10, 10)
  x = np.random.RandomState(8).randn(2, 100, 128).astype(np.float32)
  for scanned in (False, True):
    path = tmp_path / f"vit_{scanned}.npz"
    np.savez(path, **bv(scanned))
    m = ast.load(str(path), input_fdim=128, input_tdim=100, fstride=10, tstride=10)
    assert rel_err(m(x), ref(x)) <= 1e-6


# --------------------------------------------------------------------------------------------
# Files and errors
# --------------------------------------------------------------------------------------------

def test_load_safetensors_pth_and_hf_config_json(tmp_path):
  import json

  from safetensors.numpy import save_file
  model, cfg = hf_model(transformers.ASTForAudioClassification)
  sd = model.state_dict()
  x = np.random.RandomState(9).randn(1, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
  ref = pooled(model, x)
  save_file({k: v.numpy() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
  assert rel_err(ast.load(str(tmp_path / "model.safetensors"))(x), ref) <= RTOL
  torch.save(sd, tmp_path / "pytorch_model.bin")
  assert rel_err(ast.load(str(tmp_path / "pytorch_model.bin"))(x), ref) <= RTOL
  deit = deit_state_dict(seed=4)
  torch.save({"model": deit}, tmp_path / "deit.pth")
  m = ast.load(str(tmp_path / "deit.pth"), input_fdim=128, input_tdim=100, fstride=10, tstride=10)
  np.testing.assert_allclose(m(np.zeros((1, 100, 128), np.float32)),
                             ast.from_deit_state_dict(deit, 128, 100, 10, 10)(np.zeros((1, 100, 128), np.float32)),
                             rtol=1e-6)


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("unpickled!",))

  torch.save({"x": Evil()}, tmp_path / "evil.pth")
  with pytest.raises(ast.WeightError, match="weights_only"):
    ast.read_state_dict(str(tmp_path / "evil.pth"))


def test_unknown_file_format(tmp_path):
  (tmp_path / "w.h5").write_bytes(b"x")
  with pytest.raises(ast.WeightError, match=r"unknown weights format '\.h5'"):
    ast.load(str(tmp_path / "w.h5"))


def test_wrong_keys_and_shapes_are_named():
  model, cfg = hf_model()
  sd = dict(model.state_dict())
  missing = dict(sd)
  del missing["layers.1.mlp.fc1.bias"]
  with pytest.raises(ast.WeightError, match=r"missing key 'layers\.1\.mlp\.fc1\.bias'"):
    ast.from_hf_state_dict(missing, cfg)
  wrong = dict(sd)
  wrong["layers.0.attention.o_proj.weight"] = torch.zeros(64, 32)
  with pytest.raises(ast.WeightError, match=r"'layers\.0\.attention\.o_proj\.weight' has shape \(64, 32\)"):
    ast.from_hf_state_dict(wrong, cfg)
  extra = dict(sd)
  extra["layers.0.attention.rotary.weight"] = torch.zeros(3)
  with pytest.raises(ast.WeightError, match=r"unexpected key.*rotary"):
    ast.from_hf_state_dict(extra, cfg)
  with pytest.raises(ast.WeightError, match="position_embeddings"):
    ast.from_hf_state_dict(sd, cfg.to_dict() | {"max_length": 200})  # config does not fit weights
  deit = deit_state_dict()
  deit["blocks.1.attn.qkv.weight"] = deit["blocks.1.attn.qkv.weight"][:10]
  with pytest.raises(ast.WeightError, match=r"'blocks\.1\.attn\.qkv\.weight' has shape"):
    ast.from_deit_state_dict(deit, 128, 100, 10, 10)
  with pytest.raises(ast.WeightError, match="hidden_act"):
    ast.from_hf_state_dict(sd, cfg.to_dict() | {"hidden_act": "gelu_new"})


def test_bad_fbank_shape_is_named():
  cfg = ast.config_for("tiny", depth=1, input_fdim=32, input_tdim=48, fstride=8, tstride=8)
  m = ast.init(cfg)
  with pytest.raises(ValueError, match=r"got shape \(48, 32\) \(wrong rank\)"):
    m(np.zeros((48, 32), np.float32))
  with pytest.raises(ValueError, match=r"wrong mel bins"):
    m(np.zeros((1, 48, 40), np.float32))
  with pytest.raises(ValueError, match=r"wrong frames"):
    m(np.zeros((1, 50, 32), np.float32))


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="input_tdim"):
    ast.config_for("tiny", input_tdim=8)
  with pytest.raises(ValueError, match="heads"):
    ast.config_for("tiny", heads=5)
  with pytest.raises(ValueError, match="unknown AST variant"):
    ast.config_for("huge")
  with pytest.raises(ValueError, match="dtype"):
    ast.config_for("tiny", dtype="int8")


def test_variants_sizes():
  for name, params in [("tiny", 5.5e6), ("small", 21.7e6), ("base", 86.0e6)]:
    cfg = ast.config_for(name, input_tdim=1024, fstride=10, tstride=10)
    abstract = nnx.eval_shape(lambda: ast.AST(cfg, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert abs(n - params) / params < 0.03, (name, n)


@pytest.mark.parametrize("attention", ATTENTION)
def test_gradients_match_torch(attention):
  model, cfg = hf_model(frequency_stride=10, time_stride=10, max_length=100)
  ours = ast.from_hf_state_dict(model.state_dict(), cfg, attention=attention)
  x = np.random.RandomState(11).randn(2, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
  target = np.random.RandomState(12).randn(2, cfg.hidden_size).astype(np.float32)
  model.zero_grad()
  out = model(torch.from_numpy(x)).pooler_output
  ((out - torch.from_numpy(target)) ** 2).sum().backward()
  tg = {k: p.grad.numpy() for k, p in model.named_parameters()}
  g = nnx.jit(nnx.grad(lambda m: jnp.sum((m(x) - target) ** 2)))(ours)
  d = cfg.hidden_size
  pairs = [
      (g.blocks[1].attn.qkv.kernel[...][:, :d], tg["layers.1.attention.q_proj.weight"].T),
      (g.blocks[1].attn.qkv.kernel[...][:, d:2 * d], tg["layers.1.attention.k_proj.weight"].T),
      (g.blocks[0].attn.qkv.kernel[...][:, 2 * d:], tg["layers.0.attention.v_proj.weight"].T),
      (g.blocks[0].attn.proj.kernel[...], tg["layers.0.attention.o_proj.weight"].T),
      (g.blocks[0].mlp.fc1.kernel[...], tg["layers.0.mlp.fc1.weight"].T),
      (g.blocks[1].norm1.scale[...], tg["layers.1.layernorm_before.weight"]),
      (g.blocks[0].norm2.bias[...], tg["layers.0.layernorm_after.bias"]),
      (g.norm.scale[...], tg["layernorm.weight"]),
      (g.pos_embed[...], tg["embeddings.position_embeddings"]),
      (g.patch_embed.kernel[...], tg["embeddings.patch_embeddings.projection.weight"][:, 0].transpose(1, 2, 0)),
  ]
  for i, (a, b) in enumerate(pairs):
    assert rel_err(a, b) <= 1e-4, i


def test_init_from_weights_file_into_scanned_and_unscanned_mp2(tmp_path):
  """checkpoint.init_from converts the encoder blocks to the model's layout (scan or not)."""
  from mpjax import checkpoint
  from mpjax.models import mp2
  deit = deit_state_dict(d=64, depth=2, seed=5)
  torch.save(deit, tmp_path / "deit.pth")
  x = np.random.RandomState(16).randn(2, 100, 128).astype(np.float32)
  outs = []
  for scan in (False, True):
    cfg = ast.config_for("tiny", hidden=64, heads=1, mlp_dim=256, depth=2, input_fdim=128,
                         input_tdim=100, fstride=10, tstride=10, scan=scan)
    m = mp2.MP2(cfg, 2, "none", rngs=nnx.Rngs(0))
    report = checkpoint.init_from(m, str(tmp_path / "deit.pth"), input_fdim=128,
                                  input_tdim=100, fstride=10, tstride=10)
    assert not report["reinit"]
    assert ("encoder/blocks/attn/qkv/kernel" in report["loaded"]) == scan
    outs.append(np.asarray(m.encoder(x)))
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
  ref = ast.from_deit_state_dict(deit, 128, 100, 10, 10)(x)
  np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-6)
