"""Ctrl-C on one trial: its MLflow run ends KILLED and the process ends as interrupted (killed by
SIGINT, what shells and schedulers read as such), not as failed with exit code 1, which Python
gives an uncaught KeyboardInterrupt once torch._dynamo is imported (transformers 5.24 does)."""

from __future__ import annotations

import signal

import pytest

from helpers import mlflow_runs, start_cli, wait_for


def _training(cwd) -> bool:
    runs = mlflow_runs(cwd)
    return bool(runs) and "train/loss" in runs[0].data.metrics


@pytest.mark.slow
def test_ctrl_c_on_a_trial_ends_its_run_killed_and_the_process_as_interrupted(tmp_path):
    log = tmp_path / "trial.log"
    overrides = ["trainer.max_steps=100000", "epochs=1000", "data.max_train_examples=64", "trainer.progress=false"]
    proc = start_cli(*overrides, "trainer.log_every=1", "eval.general_probe=false", cwd=tmp_path, log=log)
    try:
        # The mix table is printed once the run is open: the store is made, so reading it races nothing.
        wait_for("the mix table", lambda: "task_type" in log.read_text(), timeout=120, proc=proc, log=log)
        wait_for("training", lambda: _training(tmp_path), timeout=120, proc=proc, log=log, interval=1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == -signal.SIGINT, log.read_text()[-2000:]
    finally:
        proc.kill()
    assert "interrupted (SIGINT)" in log.read_text()
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED" and run.info.end_time
