"""Hand-written kernels (see cpu_kernels.py)."""
