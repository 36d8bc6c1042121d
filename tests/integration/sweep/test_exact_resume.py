"""Running a sweep's command again in the same sweep folder (after a SIGKILLed controller, or
to extend it) goes on exactly: no point proposed twice, finished jobs never redone, one MLflow
parent run per sweep folder, the dead controller's cut-off runs ended KILLED."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPACE = "x=tag(log,interval(1e-6,1e-1))"


def optuna_trials(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())["trials"]


@pytest.mark.sweep_app("synthetic_curve.py", "optuna5")
def test_an_extended_study_proposes_new_points_and_a_fresh_one_is_unchanged(tmp_path, sweep):
    first = sweep(SPACE, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = [t["params"]["x"] for t in optuna_trials(tmp_path)]
    extended = sweep(SPACE, "hydra.sweeper.n_trials=4")
    assert extended.returncode == 0, extended.stderr[-3000:]
    xs = [t["params"]["x"] for t in optuna_trials(tmp_path)]
    assert xs[:2] == before and len(set(xs)) == 4  # trials 2 and 3 are new points
    # a fresh study in another folder proposes what it always did (the seed as configured)
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    assert sweep(SPACE, "hydra.sweeper.n_trials=2", cwd=fresh_dir).returncode == 0
    assert [t["params"]["x"] for t in optuna_trials(fresh_dir)] == before


def grid_summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())


def job_times(tmp_path: Path, numbers) -> dict[int, int]:
    return {n: (tmp_path / "sweep" / str(n) / "metrics.json").stat().st_mtime_ns for n in numbers}


@pytest.mark.sweep_app("synthetic_trial.py", "grid", "hydra.sweeper.max_failure_rate=0.5")
@pytest.mark.parametrize("batch", ["null", "1"], ids=["one-batch", "batches-of-1"])
def test_a_rerun_grid_redoes_only_the_jobs_that_did_not_finish(tmp_path, sweep, batch):
    # KILL_ONCE: job 2 (lr 1e-3) kills the sweep process itself (the basic launcher runs jobs in it),
    # before any summary was written in one batch; its rerun raises (lr > 9e-4): FAILED.
    args = ("lr=0.0001,0.0002,0.001,0.0003", f"hydra.sweeper.max_batch_size={batch}")
    killed = sweep(*args, env={"KILL_ONCE": str(tmp_path / "killed")})
    assert killed.returncode != 0 and (tmp_path / "killed").exists()
    first = job_times(tmp_path, [0, 1])
    rerun = sweep(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert job_times(tmp_path, [0, 1]) == first  # finished jobs carried over, not redone
    s = grid_summary(tmp_path)
    assert [(e["number"], e["overrides"], e["state"]) for e in s["jobs"]] == [
        (0, ["lr=0.0001"], "COMPLETE"),
        (1, ["lr=0.0002"], "COMPLETE"),
        (2, ["lr=0.001"], "FAILED"),
        (3, ["lr=0.0003"], "COMPLETE"),
    ]
    done = job_times(tmp_path, [0, 1, 3])
    again = sweep(*args)  # only the failed job runs again, under its own number
    assert again.returncode == 0, again.stderr[-3000:]
    assert job_times(tmp_path, [0, 1, 3]) == done
    assert "#2 : lr=0.001" in again.stdout and "#0 :" not in again.stdout and "#3 :" not in again.stdout
    assert [e["state"] for e in grid_summary(tmp_path)["jobs"]] == ["COMPLETE", "COMPLETE", "FAILED", "COMPLETE"]


@pytest.mark.sweep_app("synthetic_trial.py", "grid")
def test_a_changed_grid_reruns_a_job_whose_overrides_differ_at_its_number(tmp_path, sweep):
    assert sweep("lr=0.0001,0.0002").returncode == 0
    first = job_times(tmp_path, [0])
    changed = sweep("lr=0.0001,0.0003")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert job_times(tmp_path, [0]) == first and "#1 : lr=0.0003" in changed.stdout
    assert [e["overrides"] for e in grid_summary(tmp_path)["jobs"]] == [["lr=0.0001"], ["lr=0.0003"]]
