"""Imports run only downward (DESIGN.md 2): every import statement of every module of mpjax/ and
data_prep/, those inside functions included, read with `ast` (nothing is imported).

A module may import from its own layer or a lower one. data_prep writes records through the
bottom layer and never imports the training side; nothing but the entry point (mpjax.main and
the demo workflow, mpjax.demo) imports data_prep or configs; nothing imports the orchestration
scripts (launch/, benchmarks/).
"""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom to top. "pkg.*" is the package and everything in it; the longest matching name wins.
LAYERS = {
    0: ("mpjax", "mpjax.records", "mpjax.audio.*", "mpjax.atomic", "mpjax.provenance",
        "mpjax.cpu", "mpjax.distributed",
        # The TFRecord framing and tf.train.Example codec under mpjax.records (numpy + crc32c
        # only): the wire format that data_prep writes and mpjax.records reads.
        "mpjax.input.tfrecord"),
    1: ("mpjax.input.*", "mpjax.ops.*", "mpjax.metrics", "mpjax.baselines", "mpjax.peers"),
    2: ("mpjax.models.*",),
    3: ("mpjax.tasks", "mpjax.sharding", "mpjax.checkpoint", "mpjax.summary"),
    4: ("mpjax.train", "mpjax.forecast"),
    5: ("mpjax.export", "mpjax.evaluate", "mpjax.predict", "mpjax.personalize",
        "mpjax.analysis.*", "mpjax.backtest"),
    6: ("mpjax.main", "mpjax.demo"),
    7: ("launch.*", "benchmarks.*"),
}
PROJECT = ("mpjax", "data_prep", "configs", "launch", "benchmarks")
CHECKED = ("mpjax", "data_prep")  # the packages whose modules are read


def _matches(name: str, pattern: str) -> int:
  """Length of `pattern` when it covers `name`, else -1."""
  if pattern.endswith(".*"):
    base = pattern[:-2]
    return len(base) if name == base or name.startswith(base + ".") else -1
  return len(pattern) if name == pattern else -1


def rank_of(module: str) -> int | None:
  best, rank = -1, None
  for r, patterns in LAYERS.items():
    for p in patterns:
      if _matches(module, p) > best:
        best, rank = _matches(module, p), r
  return rank


def _in(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def module_sources(root: str = REPO) -> dict[str, tuple[str, str]]:
  """{module name: (path relative to the repository, source)} of every file of CHECKED."""
  out = {}
  for package in CHECKED:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
      dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
      for f in sorted(filenames):
        if not f.endswith(".py"):
          continue
        rel = os.path.relpath(os.path.join(dirpath, f), root)
        parts = rel[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        with open(os.path.join(root, rel), encoding="utf-8") as fh:
          out[".".join(parts)] = (rel, fh.read())
  return out


def imports_of(module: str, path: str, source: str, known: set[str]) -> list[tuple[int, str]]:
  """(line, imported module) of every project import in `source` (module `module`, file `path`).
  `from A import b` imports A.b when that is a module, else A."""
  is_package = os.path.basename(path) == "__init__.py"
  out = []
  for node in ast.walk(ast.parse(source, filename=path)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package, `level - 1` packages up
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    out += [(node.lineno, n) for n in dict.fromkeys(names) if n.split(".")[0] in PROJECT]
  return out


# The entry point and the demo workflow it runs (the synthetic data, the demo configs chained).
ENTRY = ("mpjax.main", "mpjax.demo")


def edge_error(importer: str, imported: str) -> str | None:
  """Why `importer` may not import `imported`, or None when it may."""
  if _in(imported, "configs"):
    return None if importer in ENTRY else "only mpjax.main and mpjax.demo may import configs"
  if _in(imported, "data_prep"):
    return (None if _in(importer, "data_prep") or importer in ENTRY
            else "only data_prep itself, mpjax.main and mpjax.demo may import data_prep")
  rank = rank_of(imported)
  if rank is None:
    return f"{imported} has no layer: add it to LAYERS in tests/test_imports.py"
  if _in(importer, "data_prep"):
    return (None if rank == 0 else f"data_prep may import only the bottom layer of mpjax "
            f"(rank 0: {', '.join(LAYERS[0])}); {imported} is rank {rank}")
  own = rank_of(importer)
  return None if own is None or rank <= own else (
      f"rank {own} imports rank {rank}: an upward import")


def violations(sources: dict[str, tuple[str, str]]) -> list[str]:
  """'path:line: importer -> imported: why' for every import that runs upward, and a line for
  every module of mpjax without a layer."""
  known = set(sources)
  out = []
  for module, (path, source) in sorted(sources.items()):
    if _in(module, "mpjax") and rank_of(module) is None:
      out.append(f"{path}: {module} has no layer: add it to LAYERS in tests/test_imports.py")
    for line, imported in imports_of(module, path, source, known):
      why = edge_error(module, imported)
      if why:
        out.append(f"{path}:{line}: {module} -> {imported}: {why}")
  return out


def test_imports_run_only_downward():
  sources = module_sources()
  assert "mpjax.records" in sources and "data_prep.build" in sources  # the walk found the tree
  found = violations(sources)
  assert not found, f"{len(found)} import(s) against the layers:\n" + "\n".join(found)


def test_the_checker_catches_upward_imports():
  fake = {
      "mpjax.records": ("mpjax/records.py", "import numpy\nfrom mpjax.input import tfrecord\n"),
      "mpjax.input": ("mpjax/input/__init__.py", ""),
      "mpjax.input.tfrecord": ("mpjax/input/tfrecord.py", ""),
      "mpjax.input.pipeline": ("mpjax/input/pipeline.py",
                               "from mpjax import records\n"
                               "def f():\n  from mpjax import sharding\n"),  # inside a function
      "mpjax.input.augment": ("mpjax/input/augment.py", "from . import pipeline\n"),  # same layer
      "mpjax.sharding": ("mpjax/sharding.py", "import jax\n"),
      "mpjax.train": ("mpjax/train.py", "from mpjax.input import pipeline\nimport configs.mp2\n"),
      "mpjax.main": ("mpjax/main.py", "import configs\nfrom data_prep import synthetic\n"),
      "mpjax.newthing": ("mpjax/newthing.py", ""),
      "mpjax.models.ast": ("mpjax/models/ast.py", ""),
      "mpjax.analysis.report": ("mpjax/analysis/report.py", "from mpjax import train\n"),  # down
      "data_prep.build": ("data_prep/build.py",
                          "from mpjax import records, atomic\nfrom data_prep import tables\n"
                          "from ..mpjax.input import pipeline\n"),
      "data_prep.tables": ("data_prep/tables.py", "from mpjax.models import ast\n"),
      "mpjax.forecast": ("mpjax/forecast.py", "from mpjax.analysis import report\n"
                         "from data_prep import build\n"),
  }
  found = violations(fake)
  expected = [
      "data_prep/build.py:3: data_prep.build -> mpjax.input.pipeline: data_prep may import only",
      "data_prep/tables.py:1: data_prep.tables -> mpjax.models.ast: data_prep may import only",
      "mpjax/forecast.py:1: mpjax.forecast -> mpjax.analysis.report: rank 4 imports rank 5",
      "mpjax/forecast.py:2: mpjax.forecast -> data_prep.build: only data_prep itself, "
      "mpjax.main",
      "mpjax/input/pipeline.py:3: mpjax.input.pipeline -> mpjax.sharding: rank 1 imports rank 3",
      "mpjax/newthing.py: mpjax.newthing has no layer",
      "mpjax/train.py:2: mpjax.train -> configs.mp2: only mpjax.main and mpjax.demo may import",
  ]
  assert len(found) == len(expected), "\n".join(found)
  for line, want in zip(found, expected):
    assert line.startswith(want), (line, want)
