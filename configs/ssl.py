"""SSL: SSAST masked spectrogram patch pretraining of the AST encoder on unlabelled clips.

The encoder learns from audio alone (`mpjax.models.ssl`: masked patches, an InfoNCE and a
reconstruction head), on any set of clips: every preview the fetcher downloaded, charting or
not. MP2 / MP3 then start from it with `--config.init_from=SSL_RUN/checkpoints` (the encoder's
parameters load, the SSL heads stay behind).

Demo (CPU; builds an audio-only synthetic set into WORKDIR/data: songs of another synthetic
world (seed 1) than the MP2/MP3 demo's, so no demo test song is seen):
  python -m mpjax.main --config=configs/ssl.py:demo --workdir=/tmp/ssl_demo
  python -m mpjax.main --config=configs/mp2.py:demo --workdir=/tmp/mp2_from_ssl \
      --config.init_from=/tmp/ssl_demo/checkpoints
  Expected: linear probes of the pretrained encoder (`python -m mpjax.analysis.probes`) recover
  the planted brightness and loudness nearly as well as fbank statistics, and tempo and
  percussiveness partly, with a large spread between seeds; MP2 keeps this only when fine-tuned
  gently (lower LR, layer-wise decay, as configs/mp3.py:demo_long). Figures: docs/results.md.

Real data (accelerators; the encoder's shape must match the MP2 / MP3 config that loads it):
  python -m data_prep.build --raw RAW --out /data/audio --audio-only
  python -m mpjax.main --config=configs/ssl.py --workdir=/ckpt/ssl --config.data_dir=/data/audio
"""
import ml_collections

from configs import mp2 as mp2_config
from mpjax.input import augment


def get_config(arg: str | None = None):
  arg = arg or ""
  if arg not in ("", "demo"):
    raise ValueError(f"configs/ssl.py: unknown argument {arg!r}; use '' or 'demo'")
  demo = arg == "demo"
  c = mp2_config.get_config("demo" if demo else None)
  c.task = "ssl"
  c.ssl = ml_collections.ConfigDict(dict(
      mask_ratio=0.5,      # share of each clip's patches masked (SSAST: 400 of 512)
      cluster=3,           # > 1: masks in blocks of about cluster x cluster patches (SSAST)
      recon_weight=10.0))  # loss = InfoNCE + recon_weight * reconstruction MSE (SSAST: 10)
  # Masking is the task: no SpecAugment/mixup on top (random crops stay).
  c.augment = augment.default_config()
  c.input.regions_per_example = 1  # unused (audio-only records have no regions)
  c.sharding_rules = [(r".*(bias|scale|cls_token|dist_token|table|mask_token)$", "replicated"),
                      (r".*", "fsdp")]
  c.checkpoint.best_metric = "val/loss"
  c.checkpoint.best_mode = "min"
  if demo:
    c.demo_seed = 1          # another synthetic world than the MP2/MP3 demo's (seed 0)
    c.demo_songs = 960
    c.demo_audio_only = True
    c.input.batch_size = 32
    c.total_steps = 500
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 50
    c.eval_every = 250
    c.checkpoint.every = 250
  else:
    c.total_steps = 100_000
  return c
