"""MP2: log1p(streams over the first N chart weeks) from audio, one model for all regions.

Real run (accelerators; AST-Base initialised from DeiT-B/384 distilled, stride 10, 1024 frames):
  python -m mpjax.main --config=configs/mp2.py --workdir=/ckpt/mp2 \
      --config.data_dir=/data/mpjax --config.init_from=/weights/deit_base_distilled_patch16_384.pth

Demo (CPU, a few minutes; builds the synthetic dataset into WORKDIR/data when missing):
  python -m mpjax.main --config=configs/mp2.py:demo --workdir=/tmp/mp2_demo
  Expected: eval R² on the synthetic test split clearly above 0 (around 0.4 pooled over
  regions). The planted truth limits it: MP2 is mostly set by extrinsic factors (artist fame,
  promotion), which audio cannot see; `truth.json` gives the oracle R² of an audio-only
  predictor (small within a region, much larger pooled over regions, since regions differ in
  level and the model sees the region). Measured figures: docs/results.md.

Any field can be overridden: --config.optim.lr=1e-4 --config.region_mode=embedding ...
"""
import ml_collections


def get_config(arg: str | None = None):
  arg = arg or ""
  if arg not in ("", "demo"):
    raise ValueError(f"configs/mp2.py: unknown argument {arg!r}; use '' or 'demo'")
  demo = arg == "demo"
  c = ml_collections.ConfigDict()
  c.task = "mp2"
  c.seed = 0
  c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None + demo: build synthetic
  c.demo_data = demo  # build the synthetic dataset into WORKDIR/data if data_dir is missing
  c.demo_songs = 240  # songs in that synthetic dataset
  c.demo_null = False  # True: the synthetic world where the audio has no effect (a control)
  c.demo_audio_effect = 1.0  # the dose of the planted audio effect (0: none; launch/dose.py)
  c.demo_audio_on = "longevity"  # 'debut': the control world of H (audio sets the debut level)

  # Model -----------------------------------------------------------------------------------
  # Speed is configuration (README "Model speed settings"; mpjax/models/ast.py):
  #   attention: auto | xla | cudnn | splash (auto: per platform, chosen at lowering)
  #   scan: blocks as one lax.scan; remat_policy: none | full | dots_saveable |
  #   dots_with_no_batch_dims_saveable; dtype: compute dtype (params and loss float32);
  #   patchout_time / patchout_freq: PaSST patchout fractions while training (PaSST: 0.4 / 0.2).
  c.model = ml_collections.ConfigDict(dict(
      variant="tiny" if demo else "base", fstride=16 if demo else 10, tstride=16 if demo else 10,
      input_tdim=512 if demo else 1024, input_fdim=128, ln_eps=1e-6,
      dtype="float32" if demo else "bfloat16", attention="auto", scan=not demo,
      remat_policy="none", patchout_time=0.0, patchout_freq=0.0,
      depth=4 if demo else 12))
  c.region_mode = "cls_token"  # 'cls_token' | 'embedding' | 'none'
  # What the head predicts, the first being the headline target: 'mp2' (the seeds' log summed
  # streams over the first weeks) and/or 'longevity' (the censoring-aware decay slope after the
  # debut, data_prep.targets). The demo learns both: the audio drives longevity, not the debut.
  c.mp2 = ml_collections.ConfigDict(dict(targets=("mp2", "longevity") if demo else ("mp2",)))
  c.init_from = ml_collections.FieldReference(None, field_type=str)  # checkpoint dir or weights file

  # Input -----------------------------------------------------------------------------------
  c.input = ml_collections.ConfigDict(dict(
      batch_size=16 if demo else 128, eval_batch_size=32 if demo else 128,
      input_tdim=c.model.get_ref("input_tdim"), regions_per_example=1 if demo else 2,
      workers=0 if demo else 8, prefetch=2, skip_corrupt=False, eval_crops=1,
      require_full_mp2=False))
  # Demo gain jitter 1 dB: far below the 14 dB of planted loudness, which it must not erase.
  c.augment = ml_collections.ConfigDict(dict(
      specaug=dict(freq_masks=1, freq_width=24 if demo else 48, time_masks=1,
                   time_width=48 if demo else 192),
      roll=True, gain_db=1.0 if demo else 6.0, pitch_bins=0, tilt_db=0.0, mixup_alpha=0.0))

  # Optimisation ----------------------------------------------------------------------------
  c.total_steps = 300 if demo else 30_000
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3 if demo else 1e-4, weight_decay=0.05, b1=0.9, b2=0.999, warmup_steps=30 if demo else 1000,
      schedule="cosine",  # 'cosine' | 'step' | 'constant'
      min_lr_ratio=0.01, step_boundaries=(0.6, 0.85), step_factor=0.1,
      clip_norm=1.0, layer_decay=0.0,  # e.g. 0.75; 0 = off
      grad_accum=1))

  # Sharding --------------------------------------------------------------------------------
  c.mesh = [("data", -1), ("fsdp", 1)]
  c.num_devices = 0  # 0 = all devices; N = the first N (tests, debugging)
  c.sharding_rules = [(r".*(bias|scale|cls_token|dist_token|table)$", "replicated"), (r".*", "fsdp")]

  # Loop, eval, checkpoints, logs -----------------------------------------------------------
  c.log_every = 10 if demo else 50
  c.eval_every = 100 if demo else 1000
  c.checkpoint = ml_collections.ConfigDict(dict(
      every=100 if demo else 1000, keep_latest=2, keep_best=1,
      best_metric="val/within_region_r2",
      best_mode="max", use_async=True))
  c.tensorboard = True
  return c
