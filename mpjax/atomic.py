"""Atomic file writes: a temp file in the same directory, then `os.replace`.

Readers (and a run killed half way) see either the old file or the new one, never half of
either. Every writer of reports, tables, caches and manifests in mpjax, data_prep and launch
goes through here.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def replacing(path: str, mode: str = "w", **open_kwargs):
  """`with replacing(path) as f: f.write(...)`: `path` appears complete when the block ends.

  The temp file is removed if the block raises, and `path` is left as it was. Parent
  directories are created.
  """
  path = os.fspath(path)
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-")
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are ordinary outputs
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_bytes(path: str, data: bytes):
  with replacing(path, "wb") as f:
    f.write(data)


def write_text(path: str, text: str):
  with replacing(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path: str, obj, **dump_kwargs):
  """JSON with a trailing newline; `dump_kwargs` go to json.dumps (default indent=1)."""
  dump_kwargs.setdefault("indent", 1)
  write_text(path, json.dumps(obj, **dump_kwargs) + "\n")
