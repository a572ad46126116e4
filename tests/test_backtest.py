"""launch/backtest.py: test windows, the averaging over cutoffs and seeds, and a tiny run end to
end."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from data_prep import tables

from fakes import daily_charts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKTEST_PY = os.path.join(REPO, "launch", "backtest.py")

_spec = importlib.util.spec_from_file_location("launch_backtest", BACKTEST_PY)
backtest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(backtest)


def test_test_windows_run_to_the_next_cutoff():
  assert backtest.test_windows(["2025-09-01", "2025-10-01"]) == [
      ("2025-09-01", "2025-09-30"), ("2025-10-01", "2025-10-30")]
  assert backtest.test_windows(["2025-09-01"], test_days=7) == [("2025-09-01", "2025-09-07")]
  with pytest.raises(ValueError, match="increase"):
    backtest.test_windows(["2025-10-01", "2025-09-01"])


def test_summary_averages_cutoffs_per_seed_then_seeds():
  m = lambda a, b: {"mae_series": a, "mae": b, "coverage": None}  # noqa: E731
  results = {"c1": {"0": {"mp3": m(1.0, 2.0), "last_value": m(2.0, 2.0)},
                    "1": {"mp3": m(3.0, 2.0), "last_value": m(2.0, 2.0)}},
             "c2": {"0": {"mp3": m(5.0, 4.0), "last_value": m(4.0, 4.0)},
                    "1": {"mp3": m(7.0, 4.0), "last_value": m(4.0, 4.0)}}}
  s = backtest.summarise(results)
  assert s["per_cutoff"]["c1"]["mp3"]["mae_series"][:2] == (2.0, pytest.approx(2 ** 0.5))
  # seed 0: (1 + 5) / 2 = 3, seed 1: (3 + 7) / 2 = 5 -> mean 4, sample std sqrt(2)
  mean, std, n = s["average"]["mp3"]["mae_series"]
  assert (mean, n) == (4.0, 2) and std == pytest.approx(2 ** 0.5)
  assert s["average"]["last_value"]["mae_series"] == (3.0, 0.0, 2)
  assert "coverage" not in s["average"]["mp3"]  # no value: not averaged as 0
  md = backtest.markdown(s, {"c1": ("c1", "e1"), "c2": ("c2", "e2")}, {"c1": 5}, "cmd")
  assert "| last_value | **3.0000** |" in md and "+33.3 %" in md  # mp3 4.0 vs 3.0


def test_backtest_end_to_end(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  tables.write(daily_charts(days=90, n_tracks=60), str(raw / "charts.csv"), "charts")
  work = tmp_path / "bt"
  cmd = [sys.executable, BACKTEST_PY, f"--raw={raw}", f"--workdir={work}",
         "--cutoffs=2025-03-25,2025-04-05", "--horizon=14", "--window=10", "--val_days=10", "--seeds=0",
         "--set=total_steps=6", "--set=optim.warmup_steps=1", "--set=eval_every=6", "--set=checkpoint.every=6",
         "--set=log_every=3", "--set=mp3.prefix_steps=3", "--set=mp3.window=10",
         "--set=mp3.origins=4", "--set=mp3.eval_origins=(0,2,4)", "--samples=50"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  out = json.loads((work / "backtest.json").read_text())
  assert set(out["results"]) == {"2025-03-25", "2025-04-05"}
  for c, runs in out["results"].items():
    r = runs["0"]
    assert {"mp3", "last_value", "prefix_ridge", "prefix_boosted"} <= set(r)
    assert r["mp3"]["n_series"] > 0
    man = json.loads((work / c / "data" / "manifest.json").read_text())
    assert man["split"]["cutoff"] == c
    cal = json.loads((work / c / "seed0" / "forecast" / "calibration.json").read_text())
    assert cal["chosen_on"] == "val" and cal["scale"] > 0
  md = (work / "backtest.md").read_text()
  assert "Averaged over cutoffs" in md and "| mp3 |" in md and "| mp3 (val) |" in md
  assert out["command"].startswith("python launch/backtest.py --raw=")
  assert out["results"]["2025-03-25"]["0"]["mp3 (val)"]["mae_series"] > 0
  # Every method on the same rolling-origin windows, pooled over the cutoffs.
  win = json.loads((work / "windows.json").read_text())
  assert set(win["counts"]["cutoffs"]) == {"2025-03-25", "2025-04-05"}
  assert {"mp3", "lightgbm", "mp3_ensemble", "sf_autoets", "ridge_all_origins",
          "boosted_all_origins", "last_value"} <= set(win["methods"])
  assert set(win["per_origin"]) <= {"0", "2", "4"} and "0" in win["per_origin"]
  assert "vs_mp3" in win["methods"]["lightgbm"]
  assert (work / "mae_vs_horizon.png").stat().st_size > 0
  assert "| **mp3** |" in (work / "windows.md").read_text()
  # Rerunning skips everything finished (no training log grows).
  log = work / "2025-03-25" / "seed0.log"
  size = log.stat().st_size
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0 and log.stat().st_size == size
