"""The output the research analyses share (H, T, regions, probes): numbers and p-values as text
(None, NaN and infinity print as a dash), markdown tables, figures written atomically, and
results as strict JSON (NaN -> null). Imports nothing from mpjax.analysis, so every analysis
module may import it.
"""
from __future__ import annotations

import math

import numpy as np

from mpjax import atomic

MISSING = "–"


def _missing(v) -> bool:
  return v is None or not math.isfinite(float(v))


def num(v, digits: int = 3, missing: str = MISSING, sign: bool = False) -> str:
  """v with `digits` decimals (a leading + on non-negative values when `sign`); `missing` for
  None, NaN or infinity."""
  return missing if _missing(v) else f"{float(v):{'+' if sign else ''}.{digits}f}"


def pvalue(p, digits: int = 3, permutations: int | None = None) -> str:
  """p with `digits` significant digits, `MISSING` when missing. With `permutations`, a p at the
  floor of a permutation test, 1 / (1 + permutations), reads '≤ p': the test cannot say less."""
  if _missing(p):
    return MISSING
  p = float(p)
  floor = permutations and p <= 1.0 / (1 + permutations) + 1e-12
  return f"{'≤ ' if floor else ''}{p:.{digits}g}"


def table(header: list, rows: list[list]) -> list[str]:
  """Markdown table lines: the header, the |---| rule, one line per row (cells printed with str;
  an empty cell as '| |')."""
  def line(cells):
    return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)
  return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def save_figure(fig, path: str, dpi: int = 110):
  """Writes the matplotlib figure as PNG to `path` atomically (folders created), then closes it."""
  import matplotlib.pyplot as plt

  with atomic.replacing(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  plt.close(fig)


def jsonable(obj):
  """numpy to lists and Python numbers, dict keys to str; NaN and infinity to None (strict JSON
  has no NaN)."""
  if isinstance(obj, dict):
    return {str(k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return jsonable(obj.tolist())
  if isinstance(obj, (np.integer, np.bool_)):
    return obj.item()
  if isinstance(obj, (float, np.floating)):
    return None if not math.isfinite(float(obj)) else float(obj)
  return obj
