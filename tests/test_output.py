"""mpjax.analysis.output: number and p-value text, markdown tables, strict JSON."""
import json
import math

import numpy as np

from mpjax.analysis import output


def test_num_and_pvalue_print_missing_values_as_a_dash():
  assert output.num(0.12345) == "0.123" and output.num(np.float32(2), 2) == "2.00"
  assert output.num(0.5, 2, sign=True) == "+0.50" and output.num(-0.5, 1, sign=True) == "-0.5"
  for v in (None, math.nan, np.float32("nan"), math.inf):
    assert output.num(v) == "–" and output.pvalue(v) == "–"
  assert output.num(None, missing="not reached") == "not reached"
  assert output.pvalue(0.012345) == "0.0123" and output.pvalue(0.012345, 2) == "0.012"
  # At the floor of 99 permutations (1/100) a p reads "at most"; above it, plainly.
  assert output.pvalue(0.01, 2, permutations=99) == "≤ 0.01"
  assert output.pvalue(0.02, 2, permutations=99) == "0.02"


def test_table_lines():
  assert output.table(["", "a", "b"], [["**x**", 1, "–"], ["y", "", 2.5]]) == [
      "| | a | b |", "|---|---|---|", "| **x** | 1 | – |", "| y | | 2.5 |"]


def test_jsonable_is_strict_json():
  obj = {1: np.arange(2), "f": [np.float64(0.5), math.nan, (np.int64(3), np.bool_(True))],
         "inf": -math.inf, "s": "x", "b": False}
  out = output.jsonable(obj)
  assert out == {"1": [0, 1], "f": [0.5, None, [3, True]], "inf": None, "s": "x", "b": False}
  json.dumps(out, allow_nan=False)
  assert type(out["f"][2][0]) is int and type(out["f"][2][1]) is bool
