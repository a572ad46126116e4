"""The demo's workflow around one training run (`python -m mpjax.main --config=configs/*.py:demo`).

before the run  `prepare_data`: the synthetic demo dataset into WORKDIR/data when the config has
                no dataset (config.demo_data; demo_seed, demo_songs, demo_audio_only, demo_null,
                demo_audio_on, demo_audio_effect shape it), through data_prep; process 0 builds
                it while the others wait.
                `encoder_first`: for the MP3 demo (config.train_mp2_first) the MP2 demo is
                trained (or resumed) into WORKDIR/mp2 and MP3 starts from its encoder; with
                config.ssl_first the SSL demo pretrains that encoder before, into WORKDIR/ssl
                (config.mp2_finetune: the MP2 optimizer settings for a pretrained encoder).
after the run   `after`: the inference bundle into WORKDIR/bundle (config.export_bundle) and
                the research report into WORKDIR/analysis (config.analysis_report), from one
                process.
"""
from __future__ import annotations

import os

from absl import logging


def ensure_data(config, workdir: str) -> None:
  """Fills config.data_dir; builds the synthetic demo dataset when the config allows it."""
  if config.data_dir and os.path.exists(os.path.join(config.data_dir, "manifest.json")):
    return
  if not config.get("demo_data"):
    raise FileNotFoundError(
        f"config.data_dir={config.data_dir!r} has no manifest.json; build a dataset with "
        "`python -m data_prep.build` (or `python -m data_prep.synthetic --out RAW --build DATA`)")
  from data_prep import synthetic  # only the demo reaches into data_prep

  data_dir = config.data_dir or os.path.join(workdir, "data")
  logging.info("building the synthetic demo dataset into %s", data_dir)
  print(f"[demo] building the synthetic dataset into {data_dir} ...", flush=True)
  synthetic.make_demo(os.path.join(workdir, "raw"), data_dir, progress=True,
                      seed=config.get("demo_seed", 0),
                      audio_only=config.get("demo_audio_only", False),
                      null=config.get("demo_null", False),
                      audio_on=config.get("demo_audio_on", "longevity"),
                      audio_effect=config.get("demo_audio_effect", 1.0),
                      **({"n_songs": config.demo_songs} if config.get("demo_songs") else {}))
  with config.unlocked():
    config.data_dir = data_dir


def prepare_data(config, workdir: str) -> None:
  """ensure_data on every process, process 0 building the demo dataset while the others wait
  (workdir on a filesystem all hosts share)."""
  import jax
  from jax.experimental import multihost_utils
  have_data = config.data_dir and os.path.exists(os.path.join(config.data_dir, "manifest.json"))
  if not have_data and config.get("demo_data"):
    if jax.process_index() == 0:
      ensure_data(config, workdir)
    multihost_utils.sync_global_devices(f"mpjax.main: demo dataset built in {workdir}")
    if not config.data_dir:
      with config.unlocked():
        config.data_dir = os.path.join(workdir, "data")
  ensure_data(config, workdir)  # every process: the manifest is there, or the same clear error


def train_ssl_demo(workdir: str) -> str:
  """The demo encoder's pretraining: the SSL demo (configs/ssl.py:demo) in WORKDIR/ssl."""
  from configs import ssl as ssl_config
  from mpjax import train

  ssl = ssl_config.get_config("demo")
  ssl_dir = os.path.join(workdir, "ssl")
  os.makedirs(ssl_dir, exist_ok=True)
  prepare_data(ssl, ssl_dir)
  print(f"[demo] SSL pretraining of the encoder into {ssl_dir} ...", flush=True)
  train.train_and_evaluate(ssl, ssl_dir)
  return os.path.join(ssl_dir, "checkpoints")


def train_mp2_demo(config, workdir: str, init_from: str | None = None) -> str:
  """The MP3 demo's encoder: trains (or resumes) the MP2 demo in WORKDIR/mp2 on the same data
  (from `init_from`, e.g. the SSL demo's checkpoints, when given), with the run's seed so that
  seeds of the demo vary its encoder too."""
  from configs import mp2 as mp2_config
  from mpjax import train

  mp2 = mp2_config.get_config("demo")
  mp2.data_dir = config.data_dir
  mp2.seed = config.seed
  mp2.init_from = init_from
  if init_from and config.get("mp2_finetune"):  # e.g. a gentler LR for a pretrained encoder
    mp2.optim.update(dict(config.mp2_finetune))
  mp2_dir = os.path.join(workdir, "mp2")
  ckpt = os.path.join(mp2_dir, "checkpoints")
  print(f"[demo] training the MP2 demo into {mp2_dir} (MP3 starts from its encoder) ...",
        flush=True)
  train.train_and_evaluate(mp2, mp2_dir)
  return ckpt


def encoder_first(config, workdir: str) -> None:
  """config.init_from <- the demo encoder's checkpoints (module docstring), when the config
  asks for it and names no encoder of its own."""
  if config.task == "mp3" and config.get("train_mp2_first") and not config.init_from:
    ssl_ckpt = train_ssl_demo(workdir) if config.get("ssl_first") else None
    with config.unlocked():
      config.init_from = train_mp2_demo(config, workdir, init_from=ssl_ckpt)


def after(config, workdir: str) -> None:
  """The bundle and the research report, when the config asks for them (module docstring)."""
  import jax
  if config.get("export_bundle"):
    bundle = os.path.join(workdir, "bundle")
    if jax.process_count() == 1:
      from mpjax import export
      export.export(workdir, bundle)
    elif jax.process_index() == 0:
      print(f"[export] several processes: export from one, after the run: python -m "
            f"mpjax.export --workdir={workdir} --out={bundle}", flush=True)
  if config.get("analysis_report"):
    if jax.process_count() == 1:
      from mpjax.analysis import research
      print(f"[demo] research report (H, T, regions) into {workdir}/analysis ...", flush=True)
      # 200 refit resamples (120 is the least that lets Holm reach 0.05 over six horizons): on
      # the demo's few test songs more would only cost minutes. The CLI default is 1000.
      research.run(workdir, bootstrap=200, log=lambda s: print(s, flush=True))
    elif jax.process_index() == 0:
      print(f"[analysis] several processes: write the report from one, after the run: "
            f"python -m mpjax.analysis --workdir={workdir}", flush=True)
