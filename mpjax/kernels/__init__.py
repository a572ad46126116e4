"""Hand-written kernels (see cpu_attention.py)."""
