"""Entry point: python -m mpjax.main --config=configs/mp2.py[:demo] --workdir=DIR [--config.x=y]

Runs what the config asks (config.task: mp2, mp3 or ssl).

Several processes (hosts) run this same command; `jax.distributed` is initialised when the
environment asks for it (README "Multi-host training", launch/):
  explicit   --coordinator_address=HOST:PORT --num_processes=N --process_id=I
             (or the env vars MPJAX_COORDINATOR_ADDRESS, MPJAX_NUM_PROCESSES, MPJAX_PROCESS_ID,
             which launch/local.sh sets)
  detected   a SLURM step with several tasks, Open MPI with several ranks, a multi-host Cloud
             TPU slice: JAX's own cluster detection fills everything in
--distributed=on forces initialisation (auto-detection), off disables it.

For demo configs without a dataset, the synthetic demo dataset is built into WORKDIR/data first
(through data_prep, the one place mpjax calls it). The MP3 demo also trains the MP2 demo first,
into WORKDIR/mp2 (resumed, not repeated, when already there), and starts MP3 from its encoder.
With `ssl_first` (configs/mp3.py:demo_long) the SSL demo pretrains that encoder before, into
WORKDIR/ssl on its own unlabelled clips.
"""
from mpjax import cpu

cpu.prepare_process()  # before numpy/jax start any thread (CPU only: glibc malloc, mpjax.cpu)

import os  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "jax.distributed: auto = when the environment asks for it.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 (default: $MPJAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (default: $MPJAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index (default: $MPJAX_PROCESS_ID).")


def init_distributed():
  """Initialises jax.distributed when asked (see the module docstring); logs the topology."""
  import jax
  from mpjax import distributed
  settings = distributed.settings(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
  if settings is not None:
    jax.distributed.initialize(**settings)
  print(f"[process {jax.process_index()}/{jax.process_count()}] "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices "
        f"({jax.devices()[0].platform}); jax.distributed "
        f"{'initialised' if settings is not None else 'not used'}", flush=True)


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
  (from `init_from`, e.g. the SSL demo's checkpoints, when given)."""
  from configs import mp2 as mp2_config
  from mpjax import train

  mp2 = mp2_config.get_config("demo")
  mp2.data_dir = config.data_dir
  mp2.init_from = init_from
  if init_from and config.get("mp2_finetune"):  # e.g. a gentler LR for a pretrained encoder
    mp2.optim.update(dict(config.mp2_finetune))
  mp2_dir = os.path.join(workdir, "mp2")
  ckpt = os.path.join(mp2_dir, "checkpoints")
  print(f"[demo] training the MP2 demo into {mp2_dir} (MP3 starts from its encoder) ...",
        flush=True)
  train.train_and_evaluate(mp2, mp2_dir)
  return ckpt


def main(argv):
  del argv
  # Orbax/absl log every checkpoint operation at INFO; keep stdout for the training log.
  logging.set_verbosity(logging.WARNING)
  init_distributed()
  import jax
  config = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  prepare_data(config, workdir)
  from mpjax import tasks, train
  tasks.get(config)  # an unknown task fails here, before any demo step
  if config.task == "mp3" and config.get("train_mp2_first") and not config.init_from:
    ssl_ckpt = train_ssl_demo(workdir) if config.get("ssl_first") else None
    with config.unlocked():
      config.init_from = train_mp2_demo(config, workdir, init_from=ssl_ckpt)
  result = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print({k: round(v, 4) for k, v in result.items() if "/" not in k[4:]}, flush=True)
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
      research.run(workdir, log=lambda s: print(s, flush=True))
    elif jax.process_index() == 0:
      print(f"[analysis] several processes: write the report from one, after the run: "
            f"python -m mpjax.analysis --workdir={workdir}", flush=True)


if __name__ == "__main__":
  app.run(main)
