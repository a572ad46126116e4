"""Test setup: 8 fake CPU devices (must be set before jax is imported), glibc malloc tuned as
`python -m mpjax.main` tunes it (before any thread starts), and exact matmuls."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from mpjax import cpu  # noqa: E402

cpu.prepare_process()

import jax  # noqa: E402

# Parity tests compare float32 results with PyTorch; keep XLA from using reduced precision.
jax.config.update("jax_default_matmul_precision", "highest")
