#!/usr/bin/env python
"""AST train-step benchmark on any JAX platform (CPU, CUDA GPU, TPU), a grid of settings, and
on CPU a comparison with HF `ASTForAudioClassification` (PyTorch).

One train step = forward, MSE loss, backward, AdamW update:

  flax   `mpjax.models.ast` encoder + LayerNorm + Linear(hidden, 1) on the pooled output (HF's
         ASTMLPHead with num_labels=1), as the train loop writes it: `nnx.split` into
         (graphdef, params), `optax.adamw` state, one `jax.jit` step over (params, opt_state,
         step counter, x, y) with params, optimizer state and counter donated; the batch is put
         on the device once. With patchout the step draws its key as
         `jax.random.fold_in(jax.random.key(0), step counter)`, so every step drops other patches.
  torch  HF `ASTForAudioClassification(attn_implementation="sdpa", num_labels=1,
         problem_type="regression")` (its own MSE loss), `torch.optim.AdamW` (`--torch-fused`:
         the fused kernel), train mode, float32, no patchout.

Both: lr=1e-4, betas (0.9, 0.999), eps=1e-8, weight_decay=0.01 on every parameter, LayerNorm
eps 1e-12 (HF's default). With `--impl both` the Flax model gets the torch model's initial
weights (`ast.from_hf_state_dict`), so `loss_first` agrees in float32.

Configurations (`--depth`, `--frames` shrink them for quick checks):
  tiny  AST-tiny (192 wide, 12 layers, 3 heads), stride 16, 1024 frames x 128 mel (514 tokens)
  base  AST-Base (768 wide, 12 layers, 12 heads), stride 10, 1024 frames x 128 mel (1214 tokens)
Defaults: `--config` base on GPU/TPU and with `--grid`, tiny on CPU; `--dtype` bfloat16 on
GPU/TPU and in the grid, float32 on CPU (compute dtype; parameters stay float32); `--batch` 32 on
GPU/TPU, 8 (tiny) / 2 (base) on CPU. `--attention`, `--scan/--no-scan`, `--remat`,
`--patchout-time`, `--patchout-freq` set the `ASTConfig` fields of the same names.

Measured per run (one JSON line): `compile_s` = lowering + XLA compilation of the step
(`jit(...).lower(...).compile()`, timed apart from any execution; `first_step_s` is the first
execution); then `--warmup` untimed steps (the first execution included) and `--steps` timed
steps, each synchronised with `jax.block_until_ready`: median / p10 / p90 / min seconds,
`examples_per_s` (batch / median). `attention_kernel` is the attention found in the compiled
step (cudnn, cpu, splash or xla); asking for cudnn, splash or cpu where the compiled step has
none is an error, never a silent XLA fallback. `peak_memory_bytes`: the device's
`memory_stats()['peak_bytes_in_use']` (null where the backend has none, e.g. CPU).

FLOPs are analytic, not measured: the forward pass's matmul FLOPs (patch projection over the
full patch grid, as the model computes it before patchout; qkv, proj and MLP dense layers; QK^T
and AV) with the kept token count under patchout, times 3 for forward + backward: the standard
6*N*D-style model-FLOPs count. Remat recompute, softmax, LayerNorm and the optimizer are not
counted, so `mfu` is model FLOPs utilisation: `model_tflops_per_s` / (peak per device x devices
used; the step runs on one device). Peak dense TFLOP/s by `device_kind` and dtype (PEAK_TFLOPS):
bf16/fp16 H100/H200 989, A100 312, L4 121, TPU v4 275, v5e 197, v5p 459, v6e 918; float32 on
H100/H200 and A100 uses the TF32 figure (494, 156), which is what XLA's default matmul precision
runs on those GPUs. Unknown devices (CPU) give `mfu: null` unless `--peak-tflops` is given.

`--grid` runs AST-Base stride 10 bf16 x batch {32, 64, 128} x attention {xla, cudnn} x scan
{off, on} x remat {none, dots_with_no_batch_dims_saveable, full} x patchout {off, time 0.4 /
freq 0.2}, each point in its own process (clean peak-memory statistics; a failing point, e.g.
out of memory or no cuDNN, records its error and the grid goes on). Order: every batch's
baseline (scan off, remat none, patchout off) with each attention, then the same with patchout,
then the scan/remat variants (scan on; dots_with_no_batch_dims_saveable off/on; full off/on), each
with patchout off then on. After a non-memory failure of a non-xla attention its later points
are skipped; after an out-of-memory the same setting at larger batches is skipped. No point
starts once `--grid-budget-s` is spent; `--point-timeout-s` bounds one point. Each result is
printed and appended to `--out` as it arrives; a markdown table follows at the end (also on
SIGTERM/Ctrl-C). `--grid-batches 32,64`, `--grid-attention`, `--grid-scan`, `--grid-remat`,
`--grid-patchout` shrink it; other flags (`--steps`, `--depth`, ...) pass to every point.

CPU settings, as `python -m mpjax.main` makes them (`mpjax.cpu`): glibc malloc tuned before
numpy, jax or torch start a thread (`--malloc off`: glibc untouched), for both implementations;
the XLA:CPU compiler options `mpjax.cpu.CPU_COMPILER_OPTIONS` on the jitted step (`--xla-ynn on`
keeps XLA's YNNPACK fusions or names one LIBRARY_FUSION_TYPE_*; `--xla-option KEY=VALUE` adds
one, `KEY=` removes one). Attention on CPU is XLA's. torch uses
`torch.set_num_threads(os.cpu_count())`. Every JSON line names the host CPU (`cpu_model`, and
`cpu_isa`: which of avx2, fma, avx512f, avx512_bf16, amx_tile, ... /proc/cpuinfo lists), so a
figure always says which CPU it came from.
With `--impl both` the timed steps alternate flax/torch (`--no-interleave`: all of one, then the
other), so a shared machine's changing load affects both alike; a last line gives
ratio = torch / flax median step time (> 1: Flax faster).

  python benchmarks/ast_step.py --config tiny                # CPU: flax vs torch, batch 8
  python benchmarks/ast_step.py --config tiny --impl flax --xla-ynn on
  python benchmarks/ast_step.py --impl flax --depth 2 --frames 256 --steps 10 --warmup 1
  python benchmarks/ast_step.py --config base --impl flax    # GPU/TPU: the target, bf16, batch 32
  python benchmarks/ast_step.py --grid --out grid.jsonl      # GPU/TPU grid (budget 480 s)
  python benchmarks/ast_step.py --table grid.jsonl           # the table of a (partial) grid file
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpjax import cpu as mpjax_cpu  # noqa: E402

# Before numpy, jax or torch start a thread (mpjax.cpu); `--malloc off` leaves glibc as it is.
MALLOC = None if re.search(r"--malloc[= ]off\b", " ".join(sys.argv)) else mpjax_cpu.prepare_process()

import numpy as np  # noqa: E402

CONFIGS = {
    "tiny": dict(variant="tiny", fstride=16, tstride=16, frames=1024, mel=128, batch_cpu=8),
    "base": dict(variant="base", fstride=10, tstride=10, frames=1024, mel=128, batch_cpu=2),
}
BATCH_ACCELERATOR = 32
PATCH = 16
LN_EPS = 1e-12  # HF's default; both implementations use it
LR, B1, B2, EPS, WD = 1e-4, 0.9, 0.999, 1e-8, 0.01
PASST_PATCHOUT = (0.4, 0.2)  # (time, freq) for the grid's patchout=on
REMATS = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTIONS = ("auto", "xla", "cudnn", "splash")
CPU_ISA = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
           "amx_tile", "amx_bf16", "asimd", "sve")

# (device_kind regex, {dtype: dense peak TFLOP/s per device}); first match wins. float32 on the
# GPUs: the TF32 tensor-core figure (XLA's default precision for float32 matmuls there).
PEAK_TFLOPS = (
    (r"h100|h200", {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0}),
    (r"a100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    (r"\bl4\b", {"bfloat16": 121.0, "float16": 121.0}),
    (r"v5 ?lite|v5e", {"bfloat16": 197.0}),
    (r"v5p|tpu v5$", {"bfloat16": 459.0}),
    (r"v6 ?lite|v6e", {"bfloat16": 918.0}),
    (r"tpu v4", {"bfloat16": 275.0}),
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  kind = (device_kind or "").lower()
  for pattern, table in PEAK_TFLOPS:
    if re.search(pattern, kind):
      return table.get(dtype)
  return None


def model_flops(cfg, batch: int, patchout: bool = True) -> int:
  """Analytic train-step FLOPs: 3 x forward matmul FLOPs (see the module docstring)."""
  fp, tp = cfg.grid
  kf, kt = cfg.patchout_grid if patchout else (fp, tp)
  n = kf * kt + 2
  d, m = cfg.hidden, cfg.mlp_dim
  patch = 2 * fp * tp * cfg.patch * cfg.patch * d  # computed on every patch, before patchout
  layer = 2 * n * (4 * d * d + 2 * d * m) + 2 * 2 * n * n * d  # dense layers; QK^T and AV
  head = 2 * d
  return 3 * batch * (patch + cfg.depth * layer + head)


def tokens(cfg, patchout: bool = True) -> int:
  kf, kt = cfg.patchout_grid if patchout else cfg.grid
  return kf * kt + 2


def data(cfg, batch, seed=0):
  rs = np.random.RandomState(seed)
  x = rs.randn(batch, cfg.input_tdim, cfg.input_fdim).astype(np.float32)
  y = rs.randn(batch).astype(np.float32)
  return x, y


def summarize(times):
  t = np.asarray(times)
  return dict(median_step_s=float(np.median(t)), p10_step_s=float(np.percentile(t, 10)),
              p90_step_s=float(np.percentile(t, 90)), min_step_s=float(t.min()))


def hf_model(cfg):
  import torch
  from transformers import ASTConfig, ASTForAudioClassification
  hc = ASTConfig(hidden_size=cfg.hidden, num_hidden_layers=cfg.depth,
                 num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim,
                 patch_size=cfg.patch, frequency_stride=cfg.fstride, time_stride=cfg.tstride,
                 max_length=cfg.input_tdim, num_mel_bins=cfg.input_fdim, layer_norm_eps=LN_EPS,
                 num_labels=1, problem_type="regression", hidden_act="gelu")
  torch.manual_seed(0)
  return ASTForAudioClassification._from_config(hc, attn_implementation="sdpa")


def attention_kernel(text: str) -> str:
  """Which attention the compiled step runs, from its HLO text."""
  if "__cudnn$fmha" in text:
    return "cudnn"
  if "tpu_custom_call" in text and "splash" in text.lower():
    return "splash"
  return "xla"


# ----------------------------------------------------------------------------------------------
# Flax
# ----------------------------------------------------------------------------------------------


def setup_flax(cfg, batch, torch_model=None, jit_options=None):
  """Builds, lowers and compiles the step. Returns (run() -> loss, info dict)."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from mpjax.models import ast

  class Regressor(nnx.Module):
    """AST encoder + LayerNorm + Linear(hidden, 1) on the pooled output (HF ASTMLPHead)."""

    def __init__(self, encoder, *, rngs):
      d = encoder.cfg.hidden
      self.encoder = encoder
      self.head_norm = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs)
      self.head = nnx.Linear(d, 1, rngs=rngs)

    def __call__(self, x, patchout_key=None):
      return self.head(self.head_norm(self.encoder(x, patchout_key=patchout_key)))[:, 0]

  if torch_model is not None:
    sd = torch_model.state_dict()
    over = {f: getattr(cfg, f) for f in ("dtype", "attention", "scan", "remat_policy",
                                         "patchout_time", "patchout_freq")}
    encoder = ast.from_hf_state_dict(sd, torch_model.config, **over)
    model = Regressor(encoder, rngs=nnx.Rngs(1))
    head = ast.hf_classifier_params(sd)
    model.head_norm.scale[...] = jnp.asarray(head["layernorm.weight"])
    model.head_norm.bias[...] = jnp.asarray(head["layernorm.bias"])
    model.head.kernel[...] = jnp.asarray(head["dense.weight"].T)
    model.head.bias[...] = jnp.asarray(head["dense.bias"])
  else:
    model = Regressor(ast.init(cfg), rngs=nnx.Rngs(1))
  if model.encoder.cfg != cfg:
    raise RuntimeError(f"model config {model.encoder.cfg} != requested {cfg}")

  graphdef, params = nnx.split(model)
  tx = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)
  opt_state = tx.init(params)
  patchout = bool(cfg.patchout_time or cfg.patchout_freq)

  def loss_fn(params, x, y, key):
    pred = nnx.merge(graphdef, params)(x, patchout_key=key)
    return jnp.mean(jnp.square(pred - y))

  def train_step(params, opt_state, step, x, y):
    key = jax.random.fold_in(jax.random.key(0), step) if patchout else None
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, step + 1, loss

  x, y = data(cfg, batch)
  dev = jax.devices()[0]
  x, y = jax.device_put(x, dev), jax.device_put(y, dev)
  step0 = jax.device_put(jnp.zeros((), jnp.int32), dev)
  jitted = jax.jit(train_step, donate_argnums=(0, 1, 2), compiler_options=jit_options)
  t0 = time.perf_counter()
  lowered = jitted.lower(params, opt_state, step0, x, y)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  try:
    kernel = attention_kernel(compiled.as_text())
  except Exception:  # noqa: BLE001 - some backends cannot print the compiled program
    kernel = attention_kernel(lowered.as_text())
  if cfg.attention in ("cudnn", "splash") and kernel != cfg.attention:
    raise RuntimeError(f"attention={cfg.attention!r} requested, but the step compiled for "
                       f"{dev.platform} has {kernel} attention")
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  state = {"params": params, "opt": opt_state, "step": step0}

  def run():
    state["params"], state["opt"], state["step"], loss = jax.block_until_ready(
        compiled(state["params"], state["opt"], state["step"], x, y))
    return loss

  t3 = time.perf_counter()
  loss_first = float(run())
  first_step_s = time.perf_counter() - t3
  info = dict(impl="flax", params=n_params, lower_s=round(t1 - t0, 3),
              compile_s=round(t2 - t0, 3), first_step_s=round(first_step_s, 3),
              attention_kernel=kernel, loss_first=loss_first)
  return run, info


def device_info():
  import jax
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", "") or ""
  return dev, dict(platform=dev.platform, device_kind=kind, device=f"{dev.platform}:{kind}",
                   device_count=jax.device_count(), devices_used=1, jax=jax.__version__)


def peak_memory(dev):
  try:
    stats = dev.memory_stats()
  except Exception:  # noqa: BLE001 - unsupported on some backends
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


# ----------------------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------------------


def setup_torch(cfg, batch, model, fused=False):
  import torch
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  model = model.to(dev).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD,
                          **({"fused": True} if fused else {}))
  xn, yn = data(cfg, batch)
  x, y = torch.from_numpy(xn).to(dev), torch.from_numpy(yn).to(dev)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = model(input_values=x, labels=y).loss
    loss.backward()
    opt.step()
    sync()
    return loss.detach()

  loss_first = float(run())
  name = torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or "cpu"
  info = dict(impl="torch" + ("-fused-adamw" if fused else ""), device=f"{dev.type}:{name}",
              platform=dev.type, device_kind=name,
              params=sum(p.numel() for p in model.parameters()), dtype="float32",
              attention="sdpa", patchout_time=0.0, patchout_freq=0.0,
              torch_threads=torch.get_num_threads(), loss_first=loss_first,
              torch=torch.__version__)
  return run, info


def time_steps(runs, steps, warmup, interleave):
  """runs: {name: step fn}, each already run once. `warmup - 1` more untimed steps each, then
  `steps` timed steps each, one implementation after the other or round-robin (one step of
  each in turn, so that a machine whose load changes affects every implementation alike)."""
  times = {name: [] for name in runs}
  last = {}
  for run in runs.values():
    for _ in range(warmup - 1):
      run()
  order = ([list(runs)] * steps) if interleave else [[n] * steps for n in runs]
  for group in order:
    for name in group:
      t0 = time.perf_counter()
      last[name] = runs[name]()
      times[name].append(time.perf_counter() - t0)
  return times, {name: float(v) for name, v in last.items()}


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def cpu_info() -> dict:
  """The host CPU: model name, the ISA extensions of CPU_ISA it has, core count."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
          model = value.strip()
        elif key in ("flags", "Features"):
          flags = set(value.split())
        if model and flags:
          break
  except OSError:
    pass
  return dict(cpu_model=model, cpu_isa=[f for f in CPU_ISA if f in flags],
              cpu_count=os.cpu_count())


def cpu_setup(a):
  """The XLA:CPU options of the step, and the JSON fields that describe the CPU settings."""
  import jax
  if jax.default_backend() != "cpu":
    return mpjax_cpu.setup(), {}  # None: nothing to tune off CPU
  options = dict(mpjax_cpu.setup() or {})
  if a.xla_ynn == "on":
    options.pop("xla_cpu_experimental_ynn_fusion_type", None)
  elif a.xla_ynn != "off":
    options["xla_cpu_experimental_ynn_fusion_type"] = a.xla_ynn
  for kv in a.xla_option:
    key, _, value = kv.partition("=")
    if value:
      options[key] = value
    else:
      options.pop(key, None)
  return options, dict(malloc=MALLOC, xla_compiler_options=options)


def resolve(a, accelerator: bool):
  """(config name, ASTConfig, batch) from the flags."""
  from mpjax.models import ast
  name = a.config or ("base" if accelerator else "tiny")
  c = CONFIGS[name]
  over = dict(patch=PATCH, fstride=c["fstride"], tstride=c["tstride"], input_fdim=c["mel"],
              input_tdim=a.frames or c["frames"], ln_eps=LN_EPS,
              dtype=a.dtype or ("bfloat16" if accelerator else "float32"),
              attention=a.attention, scan=a.scan, remat_policy=a.remat,
              patchout_time=a.patchout_time, patchout_freq=a.patchout_freq)
  if a.depth:
    over["depth"] = a.depth
  cfg = ast.config_for(c["variant"], **over)
  batch = a.batch or (BATCH_ACCELERATOR if accelerator else c["batch_cpu"])
  return name, cfg, batch


def run_benchmark(a):
  import jax
  jit_options, cpu_fields = cpu_setup(a)
  dev, dinfo = device_info()
  accelerator = dev.platform != "cpu"
  name, cfg, batch = resolve(a, accelerator)
  fp, tp = cfg.grid
  common = dict(config=name, variant=CONFIGS[name]["variant"], batch=batch,
                frames=cfg.input_tdim, mel=cfg.input_fdim, fstride=cfg.fstride,
                tstride=cfg.tstride, hidden=cfg.hidden, depth=cfg.depth, heads=cfg.heads,
                grid=[fp, tp], dtype=cfg.dtype, attention=cfg.attention, scan=cfg.scan,
                remat_policy=cfg.remat_policy, patchout_time=cfg.patchout_time,
                patchout_freq=cfg.patchout_freq, patchout_grid=list(cfg.patchout_grid),
                tokens=tokens(cfg), steps=a.steps, warmup=a.warmup,
                interleaved=a.interleave and a.impl == "both", **cpu_info())

  torch_model = None
  if a.impl in ("both", "torch"):
    import torch
    torch.set_num_threads(os.cpu_count())
    torch_model = hf_model(cfg)

  runs, infos = {}, {}
  if a.impl in ("both", "flax"):
    # Flax first: it takes the torch model's initial weights before torch trains them.
    runs["flax"], infos["flax"] = setup_flax(cfg, batch, torch_model if a.impl == "both" else None,
                                             jit_options)
    infos["flax"].update(dinfo, **cpu_fields)
  if a.impl in ("both", "torch"):
    runs["torch"], infos["torch"] = setup_torch(cfg, batch, torch_model, a.torch_fused)
  times, last = time_steps(runs, a.steps, a.warmup, a.interleave)

  results = {}
  for impl in runs:
    s = summarize(times[impl])
    info = infos[impl]
    is_flax = impl == "flax"
    flops = model_flops(cfg, batch, patchout=is_flax)
    tflops = flops / s["median_step_s"] / 1e12
    peak = a.peak_tflops or peak_tflops(info.get("device_kind", ""), info.get("dtype", cfg.dtype))
    devices = info.get("devices_used", 1)
    mem = peak_memory(dev) if is_flax else None
    line = dict(impl=info.pop("impl"), **common)
    line.update(info)
    if not is_flax:  # HF torch: no patchout, scan or remat
      line.update(patchout_grid=[fp, tp], scan=False, remat_policy="none")
    line.update(tokens=tokens(cfg, patchout=is_flax), loss_last=last[impl], **s,
                examples_per_s=batch / s["median_step_s"], model_flops_per_step=flops,
                model_tflops_per_s=tflops, peak_tflops_per_device=peak,
                mfu=tflops / (peak * devices) if peak else None, peak_memory_bytes=mem,
                peak_memory_gib=mem / 2**30 if mem is not None else None)
    if a.times:
      line["step_times_s"] = times[impl]
    results[impl] = line
    print(json.dumps(line), flush=True)
  if len(results) == 2:
    print(json.dumps(dict(
        ratio="torch/flax median step time (>1: flax faster)", config=name, batch=batch,
        value=results["torch"]["median_step_s"] / results["flax"]["median_step_s"],
        flax_device=results["flax"]["device"], torch_device=results["torch"]["device"],
        **cpu_info())),
          flush=True)
  return results


# ----------------------------------------------------------------------------------------------
# Grid
# ----------------------------------------------------------------------------------------------


def grid_points(batches, attentions, scans, remats, patchouts):
  """Every combination, most informative first (see the module docstring)."""
  base = (scans[0], remats[0], patchouts[0])
  points = []
  for bi, b in enumerate(batches):
    for ai, att in enumerate(attentions):
      for si, sc in enumerate(scans):
        for ri, rm in enumerate(remats):
          for pi, po in enumerate(patchouts):
            if (sc, rm, po) == base:
              key = (0, bi, ai)
            elif (sc, rm) == base[:2]:
              key = (1, pi, bi, ai)
            else:
              key = (2, ri, si, pi, bi, ai)
            points.append((key, dict(batch=b, attention=att, scan=sc, remat=rm, patchout=po)))
  return [p for _, p in sorted(points, key=lambda kp: kp[0])]


def is_oom(err: str) -> bool:
  e = err.lower()
  return "resource_exhausted" in e or "out of memory" in e or "oom" in e.split()


def point_argv(a, p):
  argv = ["--config", a.config or "base", "--impl", "flax", "--json-errors",
          "--batch", str(p["batch"]), "--attention", p["attention"],
          "--scan" if p["scan"] == "on" else "--no-scan", "--remat", p["remat"],
          "--dtype", a.dtype or "bfloat16", "--steps", str(a.steps), "--warmup", str(a.warmup),
          "--malloc", a.malloc, "--xla-ynn", a.xla_ynn]
  t, f = PASST_PATCHOUT if p["patchout"] == "on" else (0.0, 0.0)
  argv += ["--patchout-time", str(t), "--patchout-freq", str(f)]
  for flag, value in (("--depth", a.depth), ("--frames", a.frames),
                      ("--peak-tflops", a.peak_tflops)):
    if value:
      argv += [flag, str(value)]
  for kv in a.xla_option:
    argv += ["--xla-option", kv]
  return argv


class _Stop(Exception):
  pass


def run_grid(a):
  split = lambda s: [v.strip() for v in s.split(",") if v.strip()]
  batches = [int(b) for b in split(a.grid_batches)]
  points = grid_points(batches, split(a.grid_attention), split(a.grid_scan),
                       split(a.grid_remat), split(a.grid_patchout))
  out = open(a.out, "w") if a.out else None
  records, skip, child = [], {}, [None]

  def on_term(signum, frame):
    raise _Stop(f"signal {signum}")

  old = signal.signal(signal.SIGTERM, on_term)
  start = time.monotonic()
  try:
    for i, p in enumerate(points):
      spent = time.monotonic() - start
      if spent >= a.grid_budget_s:
        print(f"# grid budget {a.grid_budget_s:.0f} s spent: {len(points) - i} of "
              f"{len(points)} points not run", file=sys.stderr, flush=True)
        break
      rec = dict(point=i, **{f"grid_{k}": v for k, v in p.items()})
      reason = next((why for match, why in skip.items() if match(p)), None)
      if reason:
        rec["error"] = f"skipped: {reason}"
      else:
        print(f"# point {i + 1}/{len(points)} {p} (at {spent:.0f} s)", file=sys.stderr,
              flush=True)
        cmd = [sys.executable, os.path.abspath(__file__)] + point_argv(a, p)
        t0 = time.monotonic()
        child[0] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        try:
          stdout, stderr = child[0].communicate(timeout=a.point_timeout_s)
        except subprocess.TimeoutExpired:
          child[0].kill()
          stdout, stderr = child[0].communicate()
          stderr += f"\ntimeout: point ran over --point-timeout-s={a.point_timeout_s}"
        rc, child[0] = child[0].returncode, None
        rec["wall_s"] = round(time.monotonic() - t0, 1)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        result = json.loads(lines[-1]) if lines else {}
        rec.update(result)
        if rc != 0 and "error" not in rec:
          tail = stderr.strip().splitlines()[-3:] or [f"exit status {rc}"]
          rec["error"] = " | ".join(tail)[-500:]
        if "error" in rec:
          err = rec["error"]
          if is_oom(err):
            same = lambda q, p=p: (q["batch"] > p["batch"] and all(
                q[k] == p[k] for k in ("attention", "scan", "remat", "patchout")))
            skip[same] = f"out of memory at batch {p['batch']}"
          elif p["attention"] != "xla" and "timeout" not in err:
            skip[lambda q, att=p["attention"]: q["attention"] == att] = (
                f"attention={p['attention']} failed at point {i}")
      records.append(rec)
      line = json.dumps(rec)
      print(line, flush=True)
      if out:
        out.write(line + "\n")
        out.flush()
  except (_Stop, KeyboardInterrupt) as e:
    if child[0] is not None:
      child[0].kill()
      child[0].wait()
    print(f"# grid stopped ({e or 'interrupted'})", file=sys.stderr, flush=True)
  finally:
    signal.signal(signal.SIGTERM, old)
    if out:
      out.close()
    print(markdown_table(records), flush=True)
  return records


def markdown_table(records) -> str:
  def num(v, fmt, scale=1.0):
    return format(v * scale, fmt) if isinstance(v, (int, float)) else "-"

  head = ("| batch | attention | scan | remat | patchout | tokens | step s | examples/s | TFLOP/s "
          "| MFU % | peak GiB | compile s | note |")
  rows = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in records:
    t, f = r.get("patchout_time"), r.get("patchout_freq")
    if r.get("grid_patchout") == "on" and t is None:
      t, f = PASST_PATCHOUT
    po = f"t{t:g}/f{f:g}" if t or f else "off"
    scan = r.get("grid_scan", {True: "on", False: "off"}.get(r.get("scan"), "-"))
    note = r.get("error", "")
    if not note and r.get("attention_kernel") and r.get("attention") == "auto":
      note = f"auto -> {r['attention_kernel']}"
    note = note.replace("|", "/").replace("\n", " ")[:120]
    rows.append("| " + " | ".join([
        str(r.get("grid_batch", r.get("batch", "-"))),
        str(r.get("grid_attention", r.get("attention", "-"))), str(scan),
        str(r.get("grid_remat", r.get("remat_policy", "-"))), po, str(r.get("tokens", "-")),
        num(r.get("median_step_s"), ".4f"), num(r.get("examples_per_s"), ".1f"),
        num(r.get("model_tflops_per_s"), ".3g"), num(r.get("mfu"), ".1f", 100.0),
        num(r.get("peak_memory_gib"), ".2f"), num(r.get("compile_s"), ".1f"), note]) + " |")
  return "\n".join(rows)


def print_table(path):
  with open(path) as f:
    records = [json.loads(ln) for ln in f if ln.startswith("{")]
  print(markdown_table([r for r in records if "ratio" not in r]))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  g = ap.add_argument_group("model and step")
  g.add_argument("--config", choices=sorted(CONFIGS), default=None,
                 help="default: base on GPU/TPU and with --grid, tiny on CPU")
  g.add_argument("--depth", type=int, default=None, help="override the number of layers")
  g.add_argument("--frames", type=int, default=None, help="override the input frames (1024)")
  g.add_argument("--batch", type=int, default=None,
                 help=f"default: {BATCH_ACCELERATOR} on GPU/TPU; 8 (tiny) / 2 (base) on CPU")
  g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                 help="compute dtype; default: bfloat16 on GPU/TPU and in the grid, else float32")
  g.add_argument("--attention", choices=ATTENTIONS, default="auto")
  g.add_argument("--scan", action=argparse.BooleanOptionalAction, default=False,
                 help="blocks as one lax.scan")
  g.add_argument("--remat", choices=REMATS, default="none", help="remat policy per block")
  g.add_argument("--patchout-time", type=float, default=0.0, help="fraction of time columns")
  g.add_argument("--patchout-freq", type=float, default=0.0, help="fraction of frequency rows")
  g = ap.add_argument_group("timing and output")
  g.add_argument("--steps", type=int, default=20, help="timed steps (>= 10)")
  g.add_argument("--warmup", type=int, default=3,
                 help="untimed steps after compilation, the first execution included (>= 1)")
  g.add_argument("--peak-tflops", type=float, default=None,
                 help="peak TFLOP/s per device for MFU (default: PEAK_TFLOPS by device kind)")
  g.add_argument("--times", action="store_true", help="include every step time in the JSON")
  g.add_argument("--json-errors", action="store_true",
                 help="on failure print one JSON line with 'error' and exit 1 (grid points)")
  g = ap.add_argument_group("CPU and torch comparison")
  g.add_argument("--impl", choices=("both", "flax", "torch"), default=None,
                 help="default: both on CPU, flax elsewhere")
  g.add_argument("--no-interleave", dest="interleave", action="store_false")
  g.add_argument("--torch-fused", action="store_true", help="torch.optim.AdamW(fused=True)")
  g.add_argument("--malloc", choices=("on", "off"), default="on",
                 help="glibc malloc tuned as mpjax.main tunes it (on) or left as it is (off)")
  g.add_argument("--xla-ynn", default="off",
                 help="XLA:CPU YNNPACK fusions: off (default: Eigen dots), on (XLA's default), "
                      "or one LIBRARY_FUSION_TYPE_* value")
  g.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                 help="extra XLA:CPU compiler option (repeatable); KEY= removes one of "
                      "mpjax.cpu's")
  g = ap.add_argument_group("grid")
  g.add_argument("--grid", action="store_true", help="run the grid, one process per point")
  g.add_argument("--grid-budget-s", type=float, default=480.0,
                 help="start no point after this many seconds")
  g.add_argument("--point-timeout-s", type=float, default=300.0, help="limit for one point")
  g.add_argument("--grid-batches", default="32,64,128")
  g.add_argument("--grid-attention", default="xla,cudnn")
  g.add_argument("--grid-scan", default="off,on")
  g.add_argument("--grid-remat", default="none,dots_with_no_batch_dims_saveable,full")
  g.add_argument("--grid-patchout", default="off,on",
                 help=f"on: time {PASST_PATCHOUT[0]}, freq {PASST_PATCHOUT[1]}")
  g.add_argument("--out", default=None, help="grid: write every JSON line to this file")
  g.add_argument("--table", metavar="JSONL", default=None,
                 help="print the markdown table of a grid's JSON lines and exit")
  a = ap.parse_args(argv)
  if a.steps < 10:
    ap.error("--steps must be >= 10")
  if a.warmup < 1:
    ap.error("--warmup must be >= 1")
  for kv in a.xla_option:
    if "=" not in kv or not kv.partition("=")[0]:
      ap.error(f"--xla-option {kv!r}: expected KEY=VALUE")
  for f in ("patchout_time", "patchout_freq"):
    if not 0.0 <= getattr(a, f) < 1.0:
      ap.error(f"--{f.replace('_', '-')} must be in [0, 1)")
  if a.grid:
    bad = lambda vals, ok: [v for v in vals.split(",") if v.strip() and v.strip() not in ok]
    for flag, vals, ok in (("--grid-attention", a.grid_attention, ATTENTIONS),
                           ("--grid-scan", a.grid_scan, ("off", "on")),
                           ("--grid-remat", a.grid_remat, REMATS),
                           ("--grid-patchout", a.grid_patchout, ("off", "on"))):
      if bad(vals, ok):
        ap.error(f"{flag}: unknown {bad(vals, ok)}; choose from {ok}")
    try:
      [int(b) for b in a.grid_batches.split(",") if b.strip()]
    except ValueError:
      ap.error(f"--grid-batches {a.grid_batches!r}: expected integers like 32,64")
  return a


def main(argv=None):
  a = parse_args(argv)
  if a.table:
    return print_table(a.table)
  if a.grid:  # this process never starts a JAX backend: the points get the whole device
    return run_grid(a)
  if a.impl is None:
    import jax
    a.impl = "both" if jax.default_backend() == "cpu" else "flax"
  try:
    return run_benchmark(a)
  except Exception as e:  # noqa: BLE001
    if not a.json_errors:
      raise
    import traceback
    traceback.print_exc()
    print(json.dumps(dict(error=f"{type(e).__name__}: {e}"[:2000])), flush=True)
    sys.exit(1)


if __name__ == "__main__":
  main()
