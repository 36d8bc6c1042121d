"""Our grid sweeper (hydra/sweeper=grid, the default): a failed trial is recorded in
sweep_summary.json and listed, and the sweep finishes unless more than max_failure_rate of
its jobs failed. Also our local launcher: a job whose process dies becomes a failed trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from sweep_sft.sweep.summary import job_entry, summarize, table, too_many_failed

# -- the summary logic, on JobReturns built as Hydra builds them ------------------------------


def job(status: JobStatus, value, overrides: list[str], out: Path | None = None) -> JobReturn:
    ret = JobReturn(overrides=overrides, status=status, _return_value=value)
    if out is not None:
        ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})
        ret.cfg = OmegaConf.create({})
    return ret


def test_job_entries_carry_state_value_and_error(tmp_path):
    pruned_dir = tmp_path / "2"
    pruned_dir.mkdir()
    (pruned_dir / "metrics.json").write_text(json.dumps({"state": "PRUNED", "objective": "val/loss", "metrics": {}}))
    entries = [
        job_entry(0, job(JobStatus.COMPLETED, 0.5, ["lr=1"], tmp_path / "0")),
        job_entry(1, job(JobStatus.FAILED, RuntimeError("slurm job 7_1 ended CANCELLED"), ["lr=2"])),
        job_entry(2, job(JobStatus.COMPLETED, 0.7, ["lr=3"], pruned_dir)),
        job_entry(3, job(JobStatus.COMPLETED, float("nan"), ["lr=4"], tmp_path / "3")),
    ]
    assert [e["state"] for e in entries] == ["COMPLETE", "FAILED", "PRUNED", "FAILED"]
    assert entries[0]["value"] == 0.5 and entries[0]["overrides"] == ["lr=1"]
    assert entries[1]["value"] is None and entries[1]["error"] == "RuntimeError: slurm job 7_1 ended CANCELLED"
    assert entries[2]["objective"] == "val/loss"
    assert "non-finite" in entries[3]["error"]
    summary = summarize(entries, n_jobs=6, max_failure_rate=0.5)
    assert summary["states"] == {"COMPLETE": 1, "PRUNED": 1, "FAILED": 2}
    assert summary["launched"] == 4 and not summary["too_many_failed"]  # 2 of 6 is not more than half
    text = table(summary)
    assert "failed #1: RuntimeError: slurm job 7_1 ended CANCELLED" in text
    assert "failed #3: non-finite" in text and "failed #0" not in text
    assert "4 of 6 jobs: 1 complete, 1 pruned, 2 failed" in text


@pytest.mark.parametrize(
    ("failed", "n_jobs", "rate", "verdict"),
    [
        (0, 4, 0.0, False),
        (1, 4, 0.0, True),
        (2, 4, 0.5, False),
        (3, 4, 0.5, True),
        (4, 4, 1.0, False),
        (1, 3, 0.25, True),
    ],
)
def test_failure_rate_is_a_share_of_all_jobs(failed, n_jobs, rate, verdict):
    assert too_many_failed(failed, n_jobs, rate) is verdict


# -- the sweeper and our local launcher, as a user runs them (synthetic app, no torch) -------


@pytest.fixture
def sweep(run_app, tmp_path):
    def run(*overrides: str, env: dict | None = None):
        return run_app(
            "synthetic_trial.py",
            tmp_path,
            "hydra/sweeper=grid",
            f"hydra.sweep.dir={tmp_path / 's'}",
            *overrides,
            env=env,
        )

    return run


def summary_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "s" / "sweep_summary.json").read_text())


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


def test_optuna5_records_a_dead_job_as_a_failed_trial(tmp_path, run_app):
    # the optuna5 sweeper reads our FAILED JobReturn through sweep_jobs.job_error, as a task error
    proc = run_app(
        "synthetic_trial.py",
        tmp_path,
        "hydra/sweeper=optuna5",
        "hydra/sweeper/sampler=grid",
        "hydra/launcher=sweep_sft_local",
        "hydra.launcher.result_grace_s=0",
        "lr=choice(1e-4,2e-3)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.max_failure_rate=0.5",
        f"hydra.sweep.dir={tmp_path / 's'}",
        env={"KILL_ONCE": str(tmp_path / "killed")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "s" / "optuna_result.json").read_text())
    assert result["states"] == {"COMPLETE": 1, "FAIL": 1}
    errors = [t.get("error") for t in result["trials"] if t.get("error")]
    assert len(errors) == 1 and errors[0].startswith("JobDied: local job ")


# -- every combination checked before any job, and before the sweep's MLflow parent run ------


def run_sweep_sft(tmp_path: Path, *overrides: str):
    """`python -m sweep_sft -m ...` with training forbidden (tests/apps/guarded.py) and MLflow in tmp_path."""
    import subprocess
    import sys

    guarded = Path(__file__).parent / "apps" / "guarded.py"
    args = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"hydra.sweep.dir={tmp_path / 's'}", *overrides]
    args += ["trainer.num_threads=1", "trainer.progress=false", "data.max_train_examples=32", "trainer.max_steps=1"]
    return subprocess.run(
        [sys.executable, str(guarded), "sweep_sft", "-m", *args], cwd=tmp_path, capture_output=True, text=True
    )


def mlflow_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    if not (tmp_path / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_bad_combination_stops_the_sweep_before_any_job_and_parent_run(tmp_path):
    proc = run_sweep_sft(tmp_path, "lr=1e-3,-1", "epochs=1,2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "error: sweep job #2 of 4 (lr=-1 epochs=1): optimizer.lr must be >= 0, got -1.0; no job was launched" in out
    assert "guarded: training started" not in out and "Traceback" not in out
    assert not (tmp_path / "s").exists()  # no job folder, no report of an empty sweep
    assert mlflow_runs(tmp_path) == []  # no parent run left FAILED


def test_a_good_grid_passes_the_check_and_launches(tmp_path):
    # the check composes every job as the launcher will: a valid grid reaches training
    proc = run_sweep_sft(tmp_path, "lr=1e-4,1e-3")
    assert "guarded: training started" in proc.stderr, (proc.stdout + proc.stderr)[-3000:]
