"""Several controllers, one study (Optuna's distributed pattern): K = 3 `-m hydra/sweeper=optuna5`
processes with the same database storage, study name and sweep folder share the work. The study
ends with n_trials trials, job folders and numbers never collide, every trial is a child of one
MLflow parent run, and optuna_result.json and the report cover all of them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import start_cli
from sweep_sft.names import KIND_TAG

pytestmark = pytest.mark.slow
K, N_TRIALS = 3, 9
PARENT_CALLBACK = "+hydra.callbacks.parent._target_=sweep_sft.sweep.callback.MlflowParentRun"


def _controller_args(tmp_path: Path, storage: str, tracking: str) -> list[str]:
    return [
        "-m",
        "hydra/sweeper=optuna5",
        "hydra/launcher=sweep_sft_local",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        "hydra.sweeper.heartbeat_s=2",
        "hydra.sweeper.grace_s=60",
        "lr=tag(log,interval(1e-4,1e-1))",
        f"tracking.uri={tracking}",
        PARENT_CALLBACK,
    ]


def run_controllers(tmp_path: Path, storage: str, tracking: str) -> list[str]:
    """K controllers started together; their logs once all ended (each must succeed)."""
    procs = []
    for k in range(K):
        log = tmp_path / f"controller{k}.log"
        args = _controller_args(tmp_path, storage, tracking)
        procs.append((start_cli(*args, app="tracked_trial.py", cwd=tmp_path, log=log, env={"TRIAL_S": "3"}), log))
    logs = []
    for proc, log in procs:
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
        logs.append(log.read_text())
        assert proc.returncode == 0, logs[-1][-3000:]
    return logs


def check_shared_sweep(tmp_path: Path, storage: str, tracking: str, logs: list[str]) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * N_TRIALS  # no overshoot
    launched = [sorted(int(n) for n in re.findall(r"#(\d+) : ", text)) for text in logs]
    assert all(launched), launched  # every controller ran some
    assert sorted(n for nums in launched for n in nums) == list(range(N_TRIALS))  # none twice
    sweep = tmp_path / "sweep"
    assert all((sweep / str(n) / "metrics.json").exists() for n in range(N_TRIALS))
    result = json.loads((sweep / "optuna_result.json").read_text())
    assert result["states"] == {"COMPLETE": N_TRIALS} and len(result["trials"]) == N_TRIALS
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"]
    assert len(parents) == 1, [p.info.run_name for p in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == N_TRIALS and parents[0].info.status == "FINISHED"
    assert {c.info.status for c in children} == {"FINISHED"}
    html = (sweep / "report.html").read_text()
    assert f"{N_TRIALS} complete" in html


def test_three_controllers_share_one_sqlite_study(tmp_path, empty_store):
    """On one machine a SQLite study works too (PostgreSQL is the cluster's: tests/integration/postgres)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    storage, tracking = f"sqlite:///{tmp_path / 'study.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    import optuna

    optuna.create_study(study_name="shared", storage=storage)  # created once, as a team would
    logs = run_controllers(tmp_path, storage, tracking)
    check_shared_sweep(tmp_path, storage, tracking, logs)
