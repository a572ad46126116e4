"""When and how to call jax.distributed.initialize (mpjax.main's --distributed flags).

Explicit settings (flags, else the env vars MPJAX_COORDINATOR_ADDRESS, MPJAX_NUM_PROCESSES,
MPJAX_PROCESS_ID that launch/local.sh sets) win; otherwise a scheduler that started several
processes is detected (SLURM step with several tasks, Open MPI, multi-host Cloud TPU) and JAX's
own cluster detection fills in the values. A TPU VM created with gcloud describes its slice only
through the metadata server, which is not checked here: pass --distributed=on there
(launch/tpu_vm.sh does).
"""
from __future__ import annotations

import os


def _env_int(name, env=os.environ):
  value = env.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name}={value!r} is not an integer") from None


def settings(mode, coordinator, num_processes, process_id, env=os.environ):
  """What to pass to jax.distributed.initialize, or None for a single process.

  Explicit settings (flags, else MPJAX_* env vars) win; otherwise a scheduler that started
  several processes is detected (JAX's cluster detection then fills in the values)."""
  if mode == "off":
    return None
  coordinator = coordinator or env.get("MPJAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int("MPJAX_NUM_PROCESSES", env)
  if process_id is None:
    process_id = _env_int("MPJAX_PROCESS_ID", env)
  explicit = {"coordinator_address": coordinator, "num_processes": num_processes,
              "process_id": process_id}
  if any(v is not None for v in explicit.values()):
    missing = [k for k, v in explicit.items() if v is None]
    if missing:
      raise ValueError(f"jax.distributed: {', '.join(missing)} missing; give all three of "
                       "--coordinator_address, --num_processes, --process_id (or the "
                       "MPJAX_* env vars), or none for auto-detection")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"jax.distributed: process_id={process_id} not in [0, {num_processes})")
    return explicit
  several = lambda name: (_env_int(name, env) or 1) > 1
  slurm = "SLURM_JOB_ID" in env and (several("SLURM_STEP_NUM_TASKS") or several("SLURM_NTASKS"))
  detected = (slurm or several("OMPI_COMM_WORLD_SIZE")
              or "," in env.get("TPU_WORKER_HOSTNAMES", "")
              or "MEGASCALE_COORDINATOR_ADDRESS" in env)
  return {} if (detected or mode == "on") else None
