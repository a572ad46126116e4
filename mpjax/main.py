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

Demo configs add steps around the run (the synthetic dataset, the MP2/SSL encoder first, the
bundle and the research report): `mpjax.demo`.
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


def main(argv):
  del argv
  # Orbax/absl log every checkpoint operation at INFO; keep stdout for the training log.
  logging.set_verbosity(logging.WARNING)
  init_distributed()
  import jax
  from mpjax import demo, tasks, train
  config = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  demo.prepare_data(config, workdir)
  tasks.get(config)  # an unknown task fails here, before any demo step
  demo.encoder_first(config, workdir)
  result = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print({k: round(v, 4) for k, v in result.items() if "/" not in k[4:]}, flush=True)
  demo.after(config, workdir)


if __name__ == "__main__":
  app.run(main)
