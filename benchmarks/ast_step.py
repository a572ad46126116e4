#!/usr/bin/env python
"""Train-step benchmark: Flax NNX AST + regression head vs HF `ASTForAudioClassification`.

One train step = forward, MSE loss, backward, AdamW update, on the same configuration and batch:

  flax   `mpjax.models.ast` encoder + LayerNorm + Linear(hidden, 1) on the pooled output (the
         equivalent of HF's ASTMLPHead with num_labels=1). The step is written as the real train
         loop writes it: `nnx.split` the model into (graphdef, params), `optax.adamw` state, one
         `jax.jit` step over (params, opt_state, x, y) with `donate_argnums=(0, 1)` returning the
         new params, new optimizer state and the loss.
  torch  HF `ASTForAudioClassification(attn_implementation="sdpa", num_labels=1,
         problem_type="regression")` (its own MSE loss), `torch.optim.AdamW` (defaults: on CPU
         the per-tensor loop; `--torch-fused` for the fused kernel), train mode.

Both use lr=1e-4, betas (0.9, 0.999), eps=1e-8, weight_decay=0.01 on every parameter, and
LayerNorm eps 1e-12 (HF's default). With `--impl both` the Flax model gets the torch model's
initial weights (converted with `ast.from_hf_state_dict`), so `loss_first` agrees.

CPU settings this benchmark makes itself (the train loop makes the same ones):

  * mpjax's C++ CPU kernels (`mpjax.kernels.cpu_kernels`: fused attention forward/backward and
    the dense layers' weight/bias gradients), compiled on first use; `--kernels off` runs the
    XLA implementations instead (the JSON says which ran: `cpu_kernels`).
  * XLA:CPU compiler options `mpjax.cpu.CPU_COMPILER_OPTIONS` on the jitted step
    (`jax.jit(..., compiler_options=...)`, CPU backend only): no YNNPACK fusions
    (`--xla-ynn on` keeps XLA's default, or name one LIBRARY_FUSION_TYPE_*) and no
    tree_reduction_rewriter; `--xla-option KEY=VALUE` adds or (empty VALUE) removes one.
  * glibc malloc: `mallopt(M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)` (`tune_malloc(
    no_trim=True)`), for both implementations (process-wide; `--malloc tuned`: trim threshold
    2**31-1 as `tune_malloc()`, `--malloc default` leaves glibc alone). With 2**31-1 the heap
    top still exceeded 2 GiB free after each flax step and glibc gave ~2.2 GB back: 110-220k
    page faults and ~0.6 s of kernel time per step again; -1 never trims (0 faults). XLA:CPU allocates
    the step's temporaries (1.1 GB for tiny, batch 8) afresh at every call; glibc serves that
    with fresh mmap()s, so every step page-faulted ~440k pages (1.4 s of kernel time per step
    on 2 cores). torch's many smaller tensors fault less (~0.1-0.35 s). With the settings the
    memory is reused and neither faults.

Timing: warm-up steps are excluded (for Flax the first includes tracing + XLA compilation,
reported as `compile_s`); then `--steps` (>= 10) steps of each implementation, each timed
alone and synchronised (`jax.block_until_ready` on all outputs / `torch.cuda.synchronize`).
With `--impl both` the timed steps alternate flax/torch (`--no-interleave`: all of one, then
all of the other), so that a shared machine's changing load affects both alike. Reported:
median, p10, p90, min. CPU: torch uses `torch.set_num_threads(os.cpu_count())`; XLA:CPU uses
all cores by default. GPU: torch uses cuda when available; jax uses its default backend.

`tflops_estimate` counts matmul FLOPs only (patch projection, qkv/proj/MLP dense layers, QK^T and
AV), times 3 for forward + backward.

Output: one JSON line per implementation, then one line with ratio = torch / flax median step
time (> 1: Flax faster).

  python benchmarks/ast_step.py --config tiny              # batch 8
  python benchmarks/ast_step.py --config tiny --kernels off --impl flax   # before the kernels
  python benchmarks/ast_step.py --config base --steps 10   # batch 2 on CPU, 8 on GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpjax.cpu import CPU_COMPILER_OPTIONS as XLA_CPU_OPTIONS, tune_malloc  # noqa: E402

CONFIGS = {
    "tiny": dict(hidden=192, depth=12, heads=3, mlp=768, fstride=16, tstride=16, frames=1024,
                 mel=128, batch_cpu=8, batch_gpu=32),
    "base": dict(hidden=768, depth=12, heads=12, mlp=3072, fstride=10, tstride=10, frames=1024,
                 mel=128, batch_cpu=2, batch_gpu=8),
}
PATCH = 16
LN_EPS = 1e-12  # HF's default; both implementations use it
LR, B1, B2, EPS, WD = 1e-4, 0.9, 0.999, 1e-8, 0.01


def cpu_kernels_available():
  from mpjax.kernels import cpu_kernels
  return cpu_kernels.available()


def step_options(cpu_options):
  import jax
  return dict(cpu_options) if cpu_options and jax.default_backend() == "cpu" else None


def grid(c):
  return ((c["mel"] - PATCH) // c["fstride"] + 1, (c["frames"] - PATCH) // c["tstride"] + 1)


def train_flops(c, batch):
  """Matmul FLOPs of one train step (forward x 3)."""
  fp, tp = grid(c)
  n = fp * tp + 2
  d, m = c["hidden"], c["mlp"]
  per_layer = 2 * n * (4 * d * d + 2 * d * m) + 2 * 2 * n * n * d
  fwd = c["depth"] * per_layer + 2 * fp * tp * PATCH * PATCH * d + 2 * d
  return 3 * fwd * batch


def data(c, batch, seed=0):
  rs = np.random.RandomState(seed)
  x = rs.randn(batch, c["frames"], c["mel"]).astype(np.float32)
  y = rs.randn(batch).astype(np.float32)
  return x, y


def summarize(times):
  t = np.asarray(times)
  return dict(median_step_s=float(np.median(t)), p10_step_s=float(np.percentile(t, 10)),
              p90_step_s=float(np.percentile(t, 90)), min_step_s=float(t.min()))


def hf_model(c, batch):
  import torch
  from transformers import ASTConfig, ASTForAudioClassification
  hc = ASTConfig(hidden_size=c["hidden"], num_hidden_layers=c["depth"],
                 num_attention_heads=c["heads"], intermediate_size=c["mlp"], patch_size=PATCH,
                 frequency_stride=c["fstride"], time_stride=c["tstride"],
                 max_length=c["frames"], num_mel_bins=c["mel"], layer_norm_eps=LN_EPS,
                 num_labels=1, problem_type="regression", hidden_act="gelu")
  torch.manual_seed(0)
  model = ASTForAudioClassification._from_config(hc, attn_implementation="sdpa")
  return model, hc


# ----------------------------------------------------------------------------------------------
# Flax
# ----------------------------------------------------------------------------------------------


def make_flax(c, torch_model=None, cpu_options=None):
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

    def __call__(self, x):
      return self.head(self.head_norm(self.encoder(x)))[:, 0]

  if torch_model is not None:
    sd = torch_model.state_dict()
    encoder = ast.from_hf_state_dict(sd, torch_model.config)
    model = Regressor(encoder, rngs=nnx.Rngs(1))
    head = ast.hf_classifier_params(sd)
    model.head_norm.scale[...] = jnp.asarray(head["layernorm.weight"])
    model.head_norm.bias[...] = jnp.asarray(head["layernorm.bias"])
    model.head.kernel[...] = jnp.asarray(head["dense.weight"].T)
    model.head.bias[...] = jnp.asarray(head["dense.bias"])
  else:
    cfg = ast.config_for("tiny", hidden=c["hidden"], depth=c["depth"], heads=c["heads"],
                         mlp_dim=c["mlp"], patch=PATCH, fstride=c["fstride"],
                         tstride=c["tstride"], input_fdim=c["mel"], input_tdim=c["frames"],
                         ln_eps=LN_EPS)
    model = Regressor(ast.init(cfg), rngs=nnx.Rngs(1))

  graphdef, params = nnx.split(model)
  tx = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    pred = nnx.merge(graphdef, params)(x)
    return jnp.mean(jnp.square(pred - y))

  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(train_step, donate_argnums=(0, 1), compiler_options=step_options(cpu_options))
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  return step, params, opt_state, n_params


def setup_flax(c, batch, torch_model=None, cpu_options=None):
  """Returns (step() -> loss, info dict); `step` runs one synchronised train step."""
  import jax
  step, params, opt_state, n_params = make_flax(c, torch_model, cpu_options)
  x, y = data(c, batch)
  x, y = jax.device_put(x), jax.device_put(y)
  state = {"params": params, "opt": opt_state}

  def run():
    state["params"], state["opt"], loss = jax.block_until_ready(
        step(state["params"], state["opt"], x, y))
    return loss

  t0 = time.perf_counter()
  loss_first = float(run())
  compile_s = time.perf_counter() - t0
  dev = jax.devices()[0]
  info = dict(impl="flax", device=f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
              params=n_params, compile_s=round(compile_s, 2), loss_first=loss_first,
              jax=jax.__version__, xla_compiler_options=step_options(cpu_options),
              cpu_kernels=(jax.default_backend() == "cpu" and cpu_kernels_available()))
  return run, info


def setup_torch(c, batch, model, fused=False):
  import torch
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  model = model.to(dev).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD,
                          **({"fused": True} if fused else {}))
  xn, yn = data(c, batch)
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
              params=sum(p.numel() for p in model.parameters()),
              torch_threads=torch.get_num_threads(), loss_first=loss_first,
              torch=torch.__version__)
  return run, info


def time_steps(runs, steps, warmup, interleave):
  """runs: {name: step fn}. Warm-up steps (untimed) for each, then `steps` timed steps each,
  either one after the other per implementation, or round-robin (one step of each in turn, so
  that a machine whose load changes over time affects every implementation alike)."""
  times = {name: [] for name in runs}
  last = {}
  for name, run in runs.items():
    for _ in range(warmup - 1):  # the first step (compilation) already ran in setup
      run()
  order = ([list(runs)] * steps) if interleave else [[n] * steps for n in runs]
  for group in order:
    for name in group:
      t0 = time.perf_counter()
      last[name] = runs[name]()
      times[name].append(time.perf_counter() - t0)
  return times, {name: float(v) for name, v in last.items()}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=3, help="untimed steps, compilation included")
  ap.add_argument("--impl", choices=("both", "flax", "torch"), default="both")
  ap.add_argument("--no-interleave", dest="interleave", action="store_false")
  ap.add_argument("--xla-ynn", default="off",
                  help="XLA:CPU YNNPACK fusions: off (default: Eigen dots), on (XLA's default), "
                       "or one LIBRARY_FUSION_TYPE_* value")
  ap.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                  help="extra XLA:CPU compiler option for the flax step (repeatable); "
                       "KEY= (empty value) removes one of mpjax.cpu's")
  ap.add_argument("--kernels", choices=("on", "off"), default="on",
                  help="mpjax's C++ CPU kernels (attention, dense-layer grads); off: the XLA "
                       "implementations (MPJAX_CPU_KERNELS=0)")
  ap.add_argument("--malloc", choices=("no-trim", "tuned", "default"), default="no-trim",
                  help="no-trim: tune_malloc(no_trim=True); tuned: tune_malloc(); default: glibc's")
  ap.add_argument("--torch-fused", action="store_true", help="torch.optim.AdamW(fused=True)")
  ap.add_argument("--times", action="store_true", help="include every step time in the JSON")
  a = ap.parse_args(argv)
  if a.steps < 10:
    ap.error("--steps must be >= 10")
  if a.warmup < 1:
    ap.error("--warmup must be >= 1")
  malloc = None if a.malloc == "default" else tune_malloc(no_trim=a.malloc == "no-trim")
  c = CONFIGS[a.config]
  cpu_options = dict(XLA_CPU_OPTIONS)  # mpjax.cpu's, as the train loop uses them
  if a.xla_ynn == "on":
    cpu_options.pop("xla_cpu_experimental_ynn_fusion_type")
  elif a.xla_ynn != "off":
    cpu_options["xla_cpu_experimental_ynn_fusion_type"] = a.xla_ynn
  for kv in a.xla_option:
    key, sep, value = kv.partition("=")
    if not sep or not key:
      ap.error(f"--xla-option {kv!r}: expected KEY=VALUE")
    if value:
      cpu_options[key] = value
    else:
      cpu_options.pop(key, None)
  os.environ["MPJAX_CPU_KERNELS"] = "1" if a.kernels == "on" else "0"

  torch_model = None
  if a.impl in ("both", "torch"):
    import torch
    torch.set_num_threads(os.cpu_count())
    torch_model, _ = hf_model(c, a.batch)
    on_gpu = torch.cuda.is_available()
  else:
    import jax
    on_gpu = jax.default_backend() != "cpu"
  batch = a.batch or (c["batch_gpu"] if on_gpu else c["batch_cpu"])
  fp, tp = grid(c)
  common = dict(config=a.config, batch=batch, frames=c["frames"], mel=c["mel"],
                tokens=fp * tp + 2, hidden=c["hidden"], depth=c["depth"], heads=c["heads"],
                steps=a.steps, warmup=a.warmup, cpu_count=os.cpu_count(),
                interleaved=a.interleave and a.impl == "both", malloc=malloc)
  flops = train_flops(c, batch)

  runs, infos = {}, {}
  if a.impl in ("both", "flax"):
    # Flax first: it takes the torch model's initial weights before torch trains them.
    runs["flax"], infos["flax"] = setup_flax(c, batch, torch_model, cpu_options)
  if a.impl in ("both", "torch"):
    runs["torch"], infos["torch"] = setup_torch(c, batch, torch_model, a.torch_fused)
  times, last = time_steps(runs, a.steps, a.warmup, a.interleave)

  results = {}
  for name in runs:
    s = summarize(times[name])
    line = dict(impl=infos[name].pop("impl"), **common, **infos[name], loss_last=last[name],
                **s, examples_per_s=batch / s["median_step_s"],
                tflops_estimate=flops / s["median_step_s"] / 1e12)
    if a.times:
      line["step_times_s"] = times[name]
    results[name] = line
    print(json.dumps(line), flush=True)
  if len(results) == 2:
    print(json.dumps(dict(
        ratio="torch/flax median step time (>1: flax faster)", config=a.config, batch=batch,
        value=results["torch"]["median_step_s"] / results["flax"]["median_step_s"],
        flax_device=results["flax"]["device"], torch_device=results["torch"]["device"])),
          flush=True)
  return results


if __name__ == "__main__":
  main()
