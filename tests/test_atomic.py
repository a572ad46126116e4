"""mpjax.atomic: a write that fails half way leaves the old file and no temp file."""
import json
import os

import pytest

from mpjax import atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
  path = str(tmp_path / "sub" / "report.json")
  atomic.write_json(path, {"a": 1})
  assert json.load(open(path)) == {"a": 1} and oct(os.stat(path).st_mode)[-3:] == "644"
  with pytest.raises(RuntimeError):
    with atomic.replacing(path) as f:
      f.write('{"a": 2, "half')
      raise RuntimeError("killed half way")
  assert json.load(open(path)) == {"a": 1}
  assert os.listdir(tmp_path / "sub") == ["report.json"]
  with pytest.raises(TypeError):  # not JSON-serialisable: nothing replaced either
    atomic.write_json(path, {"a": object()})
  assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path / "sub") == ["report.json"]
  atomic.write_bytes(path, b"\x00\x01")
  assert open(path, "rb").read() == b"\x00\x01"
