"""Reopening a trial's MLflow run after a requeue (sweep_sft.tracking.requeue): points the interrupted
attempt could not deliver are sent from the checkpoint's series, once each."""

from __future__ import annotations

import json

import pytest

from sweep_sft.config.schema import TrackingConfig
from sweep_sft.names import RUN_FILE
from sweep_sft.tracking.requeue import open_run


def test_reopened_run_backfills_what_the_interrupted_attempt_lacked(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first, reopened = open_run(cfg, tmp_path, "trial", None, {}, resuming=False)
    assert not reopened and json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == first.run_id
    first.log_params({"lr": "0.001"})
    for step in (1, 2, 3):  # delivered before the requeue; steps 4-6 were not (server down)
        first.log_metrics({"train/loss": 10.0 - step}, step)
    first.set_tag("sweep_sft.error", "JobDied: left by a launcher")
    first.flush()
    first.delivery.stop()  # the process exits for the requeue; the run stays RUNNING

    second, reopened = open_run(cfg, tmp_path, "trial", None, {}, resuming=True)
    assert reopened and second.run_id == first.run_id  # params were delivered: not logged again
    series = {"train/loss": [[step, 10.0 - step] for step in range(1, 7)]}
    second.backfill(series)
    second.log_metrics({"train/loss": 3.0}, 7)
    second.log_metrics({"train/loss": 99.0}, 2)  # a replayed step the run already holds
    second.finish("FINISHED")

    client = MlflowClient(tracking_uri=cfg.uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss"))
    assert history == [(step, 10.0 - step) for step in range(1, 8)]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["sweep_sft.resumes"] == "1"
    assert "sweep_sft.error" not in run.data.tags


def test_an_attempt_that_died_before_delivering_params_gets_them_logged(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first, _ = open_run(cfg, tmp_path, "trial", None, {}, resuming=False)
    first.flush()
    first.delivery.stop()
    second, reopened = open_run(cfg, tmp_path, "trial", None, {}, resuming=True)
    assert second.run_id == first.run_id and not reopened  # the same run, and the trial logs its params
    second.finish("FINISHED")


OPENER = """
import sys, time
from pathlib import Path
from sweep_sft.config.schema import TrackingConfig
from sweep_sft.tracking.requeue import open_run

run, _ = open_run(TrackingConfig(uri=sys.argv[1]), Path(sys.argv[2]), "trial", None, {}, resuming=False)
run.log_params({"lr": "0.001"})
run.log_metrics({"train/loss": 9.0}, 1)
run.flush()
print(run.run_id, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_run_whose_process_was_killed_is_continued_by_the_rerun(tmp_path):
    """SIGKILL: the guardian ends the run KILLED; rerunning the trial into the same folder (resume
    from its last checkpoint) reopens that run, RUNNING again and without the error, to finish it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.Popen([sys.executable, "-c", OPENER, cfg.uri, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    client = MlflowClient(tracking_uri=cfg.uri)
    deadline = time.monotonic() + 120
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and "died" in killed.data.tags["sweep_sft.error"]

    second, reopened = open_run(cfg, tmp_path, "trial", None, {}, resuming=True)
    assert reopened and second.run_id == run_id
    running = client.get_run(run_id)
    assert running.info.status == "RUNNING" and "sweep_sft.error" not in running.data.tags
    second.log_metrics({"train/loss": 8.0}, 2)
    second.finish("FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweep_sft.resumes"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
