"""A process killed outright (SIGKILL: nothing in it runs) leaves none of its MLflow runs RUNNING:
its guardian (sweep_sft.run_guard) ends them KILLED, with an end time and the error, and leaves
alone the runs the process ended itself or another attempt took over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_sft.tracking import ERROR_TAG
from sweep_sft.trial_run import RESUMES_TAG, RUN_FILE

# A trial that trains far longer than the test waits: killed while it trains.
LONG = [
    "data.max_train_examples=32",
    "data.max_val_per_task=2",
    "trainer.epochs=100000",
    "trainer.max_steps=1000000",
    "trainer.batch_size=4",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.num_threads=1",
    "trainer.progress=false",
]
WAIT_S = 240  # for the trial to start training on a loaded 2-core machine
ENDED_S = 120  # for the guardian to end the runs once the process is dead


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    log = (tmp_path / "log.txt").open("w")
    return subprocess.Popen([sys.executable, *args], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)


def _until(check, timeout_s: float, proc: subprocess.Popen | None, what: str, tmp_path: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {what}:\n{(tmp_path / 'log.txt').read_text()[-3000:]}")
        time.sleep(0.5)
    if proc is not None:
        proc.kill()
    pytest.fail(f"not within {timeout_s} s: {what}\n{(tmp_path / 'log.txt').read_text()[-3000:]}")


def _training_run(client, run_file: Path):
    """The trial's run once it is RUNNING and has delivered a train/loss point."""
    if not run_file.exists():
        return None
    run = client.get_run(json.loads(run_file.read_text())["run_id"])
    return run if run.info.status == "RUNNING" and "train/loss" in run.data.metrics else None


def _assert_ended_by_guardian(client, run_ids: list[str], tmp_path: Path) -> None:
    def ended():
        runs = [client.get_run(r) for r in run_ids]
        return runs if all(r.info.status != "RUNNING" for r in runs) else None

    for run in _until(ended, ENDED_S, None, f"runs {run_ids} ended", tmp_path):
        assert run.info.status == "KILLED", run.info
        assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
        assert "died without ending it" in run.data.tags[ERROR_TAG], run.data.tags


@pytest.mark.slow
def test_a_killed_sweep_controller_leaves_no_run_running(tmp_path):
    """Basic launcher: the trial runs inside the controller, so SIGKILL takes both the sweep's
    parent run and the training trial's child run down."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "sweep"
    proc = _start(
        ["-m", "sweep_sft", "-m", "lr=1e-3,1e-2", *LONG, f"tracking.uri={uri}", f"hydra.sweep.dir={sweep}"], tmp_path
    )
    # The store exists once the child run does (opening it earlier would race the sweep creating it).
    _until(lambda: (sweep / "0" / RUN_FILE).exists(), WAIT_S, proc, "the child run", tmp_path)
    client = MlflowClient(tracking_uri=uri)
    child = _until(lambda: _training_run(client, sweep / "0" / RUN_FILE), WAIT_S, proc, "training", tmp_path)
    parent_id = json.loads((sweep / "mlflow_parent_run.json").read_text())["run_id"]
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).info.status == "RUNNING"

    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _assert_ended_by_guardian(client, [parent_id, child.info.run_id], tmp_path)


@pytest.mark.slow
def test_a_killed_single_trial_leaves_no_run_running(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = tmp_path / "trial"
    proc = _start(["-m", "sweep_sft", *LONG, f"tracking.uri={uri}", f"output_dir={trial}"], tmp_path)
    _until(lambda: (trial / RUN_FILE).exists(), WAIT_S, proc, "the trial's run", tmp_path)
    client = MlflowClient(tracking_uri=uri)
    run = _until(lambda: _training_run(client, trial / RUN_FILE), WAIT_S, proc, "training", tmp_path)

    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _assert_ended_by_guardian(client, [run.info.run_id], tmp_path)


OPENER = """
import sys, time
from sweep_sft.config import TrackingConfig
from sweep_sft.tracking import Run

cfg = TrackingConfig(uri=sys.argv[1])
done = Run(cfg, "done")
done.finish("FINISHED")
taken, left = Run(cfg, "taken"), Run(cfg, "left")
print(done.run_id, taken.run_id, left.run_id, flush=True)
time.sleep(600)
"""


def test_the_guardian_ends_only_the_dead_process_own_running_runs(tmp_path):
    """Of a killed process's runs, the one it finished stays FINISHED, the one a newer attempt
    reopened (its resumes tag moved on, as trial_run does) stays RUNNING for that attempt; the
    last one is ended."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-c", OPENER, uri], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    done, taken, left = proc.stdout.readline().split()
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(taken, RESUMES_TAG, "1")  # another process continues it

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp_path / "log.txt").write_text("")
    _assert_ended_by_guardian(client, [left], tmp_path)
    assert client.get_run(taken).info.status == "RUNNING"
    finished = client.get_run(done)
    assert finished.info.status == "FINISHED" and ERROR_TAG not in finished.data.tags
