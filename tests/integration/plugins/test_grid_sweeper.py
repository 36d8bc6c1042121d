"""Our grid sweeper (hydra/sweeper=grid, the default): a failed trial is recorded in
sweep_summary.json and listed, and the sweep finishes unless more than max_failure_rate of
its jobs failed. Also our local launcher: a job whose process dies becomes a failed trial.
(The summary itself: tests/unit/sweep/test_summary.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import guarded_sweep, mlflow_runs

pytestmark = pytest.mark.sweep_app("synthetic_trial.py", "grid")

# -- the sweeper and our local launcher, as a user runs them (synthetic app, no torch) -------


def summary_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())


def test_a_failed_trial_is_recorded_and_the_sweep_finishes(tmp_path, sweep):
    # the app raises "diverged" above lr 9e-4: one of three trials fails
    proc = sweep("lr=1e-4,2e-4,5e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert [e["state"] for e in summary["jobs"]] == ["COMPLETE", "COMPLETE", "FAILED"]
    assert summary["jobs"][2]["error"] == "RuntimeError: diverged" and summary["jobs"][2]["overrides"] == ["lr=0.005"]
    assert summary["jobs"][0]["value"] == pytest.approx(0.02 * (1e-4 / 3.7e-4) ** 1.5)
    assert "failed #2: RuntimeError: diverged" in proc.stdout + proc.stderr


def test_too_many_failures_exit_1_after_writing_the_summary(tmp_path, sweep):
    proc = sweep("lr=1e-4,2e-3,5e-3")
    assert proc.returncode == 1
    assert "max_failure_rate" in proc.stderr and "diverged" in proc.stderr
    summary = summary_of(tmp_path)
    assert summary["too_many_failed"] and summary["states"]["FAILED"] == 2 and summary["states"]["COMPLETE"] == 1


def test_max_failure_rate_is_checked(tmp_path, sweep):
    proc = sweep("lr=1e-4", "hydra.sweeper.max_failure_rate=1.5")
    assert proc.returncode == 1 and "hydra.sweeper.max_failure_rate" in proc.stderr


def test_local_launcher_turns_a_dead_job_into_a_failed_trial(tmp_path, sweep):
    # KILL_ONCE: the job at lr >= 1e-3 exits by os._exit(9) (no result), as a killed job does
    proc = sweep(
        "lr=1e-4,1e-3",
        "hydra/launcher=sweep_sft_local",
        "hydra.launcher.result_grace_s=0",
        env={"KILL_ONCE": str(tmp_path / "killed")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = summary_of(tmp_path)["jobs"]
    assert [e["state"] for e in jobs] == ["COMPLETE", "FAILED"]
    assert jobs[1]["error"].startswith("JobDied: local job ") and "without a result" in jobs[1]["error"]


def test_local_launcher_retries_a_dead_job(tmp_path, sweep):
    # attempt 1 dies (KILL_ONCE); attempt 2 runs the task, which raises: the task's own error
    # is the trial's outcome, and it is not retried again
    proc = sweep(
        "lr=1e-4,1e-3",
        "hydra/launcher=sweep_sft_local",
        "hydra.launcher.result_grace_s=0",
        "hydra.launcher.retries=1",
        env={"KILL_ONCE": str(tmp_path / "killed")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = summary_of(tmp_path)["jobs"]
    assert [e["state"] for e in jobs] == ["COMPLETE", "FAILED"]
    assert jobs[1]["error"] == "RuntimeError: diverged"
    assert "submitted again as job" in proc.stderr + proc.stdout


@pytest.mark.sweep_app("synthetic_trial.py", "optuna5")
def test_optuna5_records_a_dead_job_as_a_failed_trial(tmp_path, sweep):
    # the optuna5 sweeper reads our FAILED JobReturn through sweep_jobs.job_error, as a task error
    proc = sweep(
        "hydra/sweeper/sampler=grid",
        "hydra/launcher=sweep_sft_local",
        "hydra.launcher.result_grace_s=0",
        "lr=choice(1e-4,2e-3)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.max_failure_rate=0.5",
        env={"KILL_ONCE": str(tmp_path / "killed")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())
    assert result["states"] == {"COMPLETE": 1, "FAIL": 1}
    errors = [t.get("error") for t in result["trials"] if t.get("error")]
    assert len(errors) == 1 and errors[0].startswith("JobDied: local job ")


# -- every combination checked before any job, and before the sweep's MLflow parent run ------


def test_a_bad_combination_stops_the_sweep_before_any_job_and_parent_run(tmp_path):
    proc = guarded_sweep(tmp_path, "lr=1e-3,-1", "epochs=1,2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "error: sweep job #2 of 4 (lr=-1 epochs=1): optimizer.lr must be >= 0, got -1.0; no job was launched" in out
    assert "guarded: training started" not in out and "Traceback" not in out
    assert not (tmp_path / "s").exists()  # no job folder, no report of an empty sweep
    assert mlflow_runs(tmp_path) == []  # no parent run left FAILED


@pytest.mark.slow
def test_a_good_grid_passes_the_check_and_launches(tmp_path):
    # the check composes every job as the launcher will: a valid grid reaches training
    proc = guarded_sweep(tmp_path, "lr=1e-4,1e-3")
    assert "guarded: training started" in proc.stderr, (proc.stdout + proc.stderr)[-3000:]
