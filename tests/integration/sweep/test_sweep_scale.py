"""bench/sweep_scale.py, small: a 20-trial optuna5 sweep of the synthetic app through the local
Slurm cluster completes with every trial recorded, and prints the controller's figures (CPU per
trial, scheduler calls counted by its PATH wrappers, memory). No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_small_scale_sweep_records_every_trial_and_its_controller_figures(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sweep_scale.py"), "--trials", "20", "--slots", "4", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["trials"] == r["recorded"] == 20 and r["states"] == {"COMPLETE": 20}
    calls = r["scheduler_calls"]
    # at least one submission and one state query, counted by the wrappers; 20 trials in <= 20 submissions
    assert 1 <= calls["sbatch"] <= 20 and calls["sacct"] >= 1
    assert r["scheduler_calls_per_min"] > 0
    assert 0 < r["controller_cpu_s"] and r["cpu_s_per_trial"] == pytest.approx(r["controller_cpu_s"] / 20)
    assert 0 < r["rss_start_mb"] <= r["rss_peak_mb"] and 0 < r["rss_end_mb"] <= r["rss_peak_mb"]
    assert "| trials recorded / asked | 20 / 20 |" in proc.stdout
    assert "| controller CPU s per trial |" in proc.stdout and "| scheduler calls per minute |" in proc.stdout
