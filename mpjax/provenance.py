"""Where an artefact came from: the code's git commit and the library versions."""
from __future__ import annotations

import os
import subprocess


def git_commit() -> str:
  """HEAD of the checkout mpjax runs from ('' when unknown: provenance is best effort)."""
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except Exception:
    return ""


def versions(packages=("mpjax", "jax", "jaxlib", "flax", "orbax-checkpoint")) -> dict:
  """{package: installed version or None}."""
  from importlib import metadata
  out = {}
  for pkg in packages:
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out
