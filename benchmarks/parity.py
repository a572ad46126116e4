"""Numerical parity of the Flax AST with HF's PyTorch ASTModel (pooler output), random weights.

Prints one JSON line per configuration: max abs error, and max relative error defined as
max|ours - HF| / max|HF|, in float32 at matmul precision 'highest', plus the bf16 deviation.

  python benchmarks/parity.py            # small configs + the real AST-Base shape (1024 frames)
  python benchmarks/parity.py --quick    # small configs only
"""
import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from mpjax.models import ast  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

CONFIGS = {
    "small-stride8": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=160, num_mel_bins=32, max_length=96,
                          frequency_stride=8, time_stride=8),
    "tiny-stride16": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                          intermediate_size=768, max_length=1024, frequency_stride=16,
                          time_stride=16, layer_norm_eps=1e-6),
    "overlap-6x12-len77": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                               intermediate_size=384, max_length=77, frequency_stride=6,
                               time_stride=12),
    "base-stride10": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, max_length=1024, frequency_stride=10,
                          time_stride=10),
}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="skip the AST-Base shape")
  ap.add_argument("--batch", type=int, default=2)
  args = ap.parse_args()
  torch.set_num_threads(os.cpu_count())
  for name, kw in CONFIGS.items():
    if args.quick and name.startswith("base"):
      continue
    cfg = transformers.ASTConfig(**kw)
    torch.manual_seed(0)
    model = transformers.ASTModel(cfg).eval()
    with torch.no_grad():
      for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.05)
    x = np.random.RandomState(0).randn(args.batch, cfg.max_length, cfg.num_mel_bins).astype(np.float32)
    with torch.no_grad():
      ref = model(torch.from_numpy(x)).pooler_output.numpy().astype(np.float64)
    sd = model.state_dict()
    ours = np.asarray(ast.from_hf_state_dict(sd, cfg)(x), np.float64)
    bf16 = np.asarray(ast.from_hf_state_dict(sd, cfg, dtype="bfloat16")(x), np.float64)
    scale = np.abs(ref).max()
    print(json.dumps({
        "config": name, "frames": cfg.max_length, "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers, "strides": [cfg.frequency_stride, cfg.time_stride],
        "max_abs_err": float(np.abs(ours - ref).max()),
        "max_rel_err": float(np.abs(ours - ref).max() / scale),
        "bf16_max_rel_err": float(np.abs(bf16 - ref).max() / scale),
        "target_rel_err": 1e-5,
    }), flush=True)


if __name__ == "__main__":
  main()
