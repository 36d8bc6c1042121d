"""The sandwich sweeper as a Hydra plugin (hydra/sweeper=sandwich), on a synthetic trial."""

from __future__ import annotations

import json
import math

import pytest

from helpers import guarded_sweep, mlflow_runs

pytestmark = pytest.mark.sweep_app(
    "synthetic_trial.py", "sandwich", "hydra.sweeper.passing=1e-6", "hydra.sweeper.failing=1e-2",
    "hydra.sweeper.precision=1.25",
)


def test_sweeper_brackets_the_known_threshold(tmp_path, sweep):
    proc = sweep()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    bracket = result["bracket"]
    assert bracket["passing"] <= 3.7e-4 < bracket["failing"] <= bracket["passing"] * 1.25
    assert result["rounds"] <= math.ceil(math.log2(math.log(1e4) / math.log(1.25))) + 1
    assert len([d for d in (tmp_path / "sweep").iterdir() if d.is_dir()]) == result["trials"]
    # a diverged (failed) trial counted as a violation, and the sweep went on
    assert any(p["results"] == [None] and not p["passed"] for p in result["probes"])


def test_seeds_and_parallel_probes(tmp_path, sweep):
    proc = sweep("hydra.sweeper.seeds=2", "hydra.sweeper.probes_per_round=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    assert all(len(p["results"]) == 2 for p in result["probes"])
    assert result["trials"] == 2 * 3 * result["rounds"]
    # rule "all": seed 1 adds 0.001 to the drop, so the bracket sits just below the seed-0 threshold
    assert result["bracket"]["passing"] <= 3.7e-4


def test_resume_after_the_sweep_process_dies(tmp_path, sweep):
    killed = sweep(env={"KILL_ONCE": str(tmp_path / "killed")})
    assert killed.returncode != 0 and (tmp_path / "killed").exists()
    state = json.loads((tmp_path / "sweep" / "sandwich_state.json").read_text())
    done_before = state["trials"]
    assert done_before >= 1 and not state["done"]
    resumed = sweep()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    full = json.loads((sweep(cwd=fresh).returncode == 0 and (fresh / "sweep" / "sandwich_result.json")).read_text())
    assert result["bracket"] == full["bracket"]
    # finished probes were not redone: every probe value appears once
    values = [p["value"] for p in result["probes"]]
    assert len(values) == len(set(values)) == len(full["probes"])


def test_verify_passing_runs_the_passing_side_first(tmp_path, sweep):
    proc = sweep("hydra.sweeper.verify_passing=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    assert result["passing_verified"] is True and result["probes"][0]["value"] == 1e-6


def test_a_failing_passing_side_stops_with_a_clear_error(tmp_path, sweep):
    proc = sweep("hydra.sweeper.verify_passing=true", "hydra.sweeper.passing=5e-4")
    assert proc.returncode != 0
    assert "the passing side lr=0.0005 fails the constraint general_drop <= 0.02" in proc.stderr
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    assert result["passing_verified"] is False and result["trials"] == 1


def test_resuming_with_other_settings_is_refused(tmp_path, sweep):
    assert sweep().returncode == 0
    proc = sweep("hydra.sweeper.precision=1.5")
    assert proc.returncode != 0 and "different search" in proc.stderr and "hydra.sweep.dir" in proc.stderr


def test_both_sides_are_checked_before_any_trial(tmp_path):
    proc = guarded_sweep(tmp_path, "sweep=sandwich_lr", "hydra.sweeper.scale=linear", "hydra.sweeper.passing=0",
                         "hydra.sweeper.failing=-1e-3", "hydra.sweeper.precision=1e-4")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "error: hydra.sweeper.failing=-0.001 (lr=-0.001): optimizer.lr must be >= 0" in out
    assert "guarded: training started" not in out and "Traceback" not in out
    assert not (tmp_path / "s").exists() and mlflow_runs(tmp_path) == []


def test_a_sweep_of_the_searched_parameter_is_refused_before_the_parent_run(tmp_path):
    proc = guarded_sweep(tmp_path, "sweep=sandwich_lr", "lr=1e-4,1e-3")
    assert proc.returncode == 1 and "searches lr itself; remove the sweep lr=1e-4,1e-3" in proc.stderr
    assert "Traceback" not in proc.stderr and mlflow_runs(tmp_path) == []
