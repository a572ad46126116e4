"""Forecast report: JSON, markdown tables and fan-chart PNG."""
import json
import os

import numpy as np

from mpjax import baselines, metrics
from mpjax import forecast as report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["us", "gb"]


def make(h_len=4, k=3, n=8, seed=0):
  rng = np.random.default_rng(seed)
  t = k + h_len
  series = 8.0 - 0.3 * np.arange(t) + rng.normal(0, 0.2, size=(n, t))
  mask = rng.random((n, t)) > 0.1
  ids = np.arange(n) % 2
  q = (0.1, 0.5, 0.9)
  med = series[:, k:] + rng.normal(0, 0.05, size=(n, h_len))  # a near-perfect "model"
  qp = np.stack([med - 0.5, med, med + 0.5], axis=-1)
  fc = {"last_value": baselines.last_value(series, mask, k),
        "exp_decay": baselines.exp_decay(series, mask, k)}
  naive = baselines.seasonal_naive(series, mask, k, 1)
  args = (series[:, k:], mask[:, k:], ids, NAMES)
  results = {"mp3": metrics.forecast(qp, *args, quantiles=q, naive=naive, k=k)}
  for name, p in fc.items():
    results[name] = metrics.forecast(p, *args, naive=naive, k=k)
  return series, mask, k, q, qp, fc, results


def test_write_forecast_report(tmp_path):
  series, mask, k, q, qp, fc, results = make()
  md = report.write_forecast_report(str(tmp_path), results, title="Test run", k=k,
                                    period="week", quantiles=q)
  data = json.load(open(tmp_path / "forecast_metrics.json"))
  assert set(data["results"]) == set(results) and data["k"] == k
  assert data["results"]["mp3"]["overall"]["n"] == results["mp3"]["overall"]["n"]
  assert open(tmp_path / "forecast_table.md").read() == md
  for name in results:
    assert name in md
  best = min(results, key=lambda n: results[n]["overall"]["mae"])
  assert best == "mp3"
  assert f"| mp3 | **{results['mp3']['overall']['mae']:.4f}** |" in md
  assert "pinball" in md and "coverage" in md
  # Overall table sorted by MAE.
  rows = [line.split("|")[1].strip() for line in md.splitlines()
          if line.startswith("| ") and line.split("|")[1].strip() in results]
  order = sorted(results, key=lambda n: results[n]["overall"]["mae"])
  assert rows[:3] == order
  # Per-horizon rows are 1-based steps k+1..k+H.
  for step in range(k + 1, k + 5):
    assert f"\n| {step} |" in md
  assert "| us |" in md and "| gb |" in md


def test_report_horizon_selection(tmp_path):
  *_, results = make(h_len=30, k=2)
  md = report.write_forecast_report(str(tmp_path), {"a": results["last_value"]}, title="t", k=2,
                                    period="day")
  section = md.split("## MAE per horizon")[1].split("##")[0]
  steps = [int(line.split("|")[1]) for line in section.splitlines()
           if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
  assert steps[0] == 3 and steps[-1] == 32 and 6 <= len(steps) <= 10
  assert "pinball" not in md


def test_fan_charts_png(tmp_path):
  series, mask, k, q, qp, fc, _ = make()
  path = report.fan_charts(str(tmp_path / "sub" / "fan.png"), series, mask, k, fc, quantiles=q,
                           quantile_pred=qp, titles=[f"song {i}" for i in range(len(series))],
                           n=4)
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  # Points only, no quantiles.
  path2 = report.fan_charts(str(tmp_path / "b.png"), series, mask, k, fc, n=20)
  with open(path2, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE


def test_report_band_table(tmp_path):
  series, mask, k, q, qp, fc, _ = make(h_len=6)
  args = (series[:, k:], mask[:, k:], np.arange(len(series)) % 2, NAMES)
  bands = {"4..5": (3, 5), "6..9": (5, 9)}
  results = {"mp3": metrics.forecast(qp, *args, quantiles=q, k=k, bands=bands),
             "last_value": metrics.forecast(fc["last_value"], *args, k=k, bands=bands)}
  md = report.write_forecast_report(str(tmp_path), results, title="t", k=k, period="week",
                                    quantiles=q)
  assert "## MAE by horizon band" in md
  row = next(l for l in md.splitlines() if l.startswith("| 6..9 "))
  assert f"{results['mp3']['per_band']['6..9']['mae']:.4f}" in row
