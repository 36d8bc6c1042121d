"""A trial whose job died (killed by Slurm) is ended in MLflow from the launcher: its own run,
found by its output folder or its mlflow_run.json, ends FAILED (KILLED when retried) with the
error; a job that died before opening a run gets a FAILED child run under the sweep's parent."""

from __future__ import annotations

import json

from sweep_sft.config.schema import TrackingConfig
from sweep_sft.names import PARENT_FILE
from sweep_sft.tracking.dead_runs import end_dead_trial, is_tracked
from sweep_sft.tracking.runs import Run


def test_dead_trials_end_in_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    assert not is_tracked(sweep, sweep / "0")
    parent = Run(tracking, "sweep", tags={"sweep_sft.kind": "sweep"})
    (sweep / PARENT_FILE).write_text(json.dumps({"run_id": parent.run_id, "tracking_uri": parent.uri, "swept": ["lr"]}))
    assert is_tracked(sweep, sweep / "0")
    client = MlflowClient(tracking_uri=parent.uri)

    # 1. died before opening a run: a FAILED child is created, named as trials name theirs
    (created,) = end_dead_trial(sweep, sweep / "0", "slurm job 5_0 ended TIMEOUT", job_num=0, overrides=["lr=0.1"])
    run = client.get_run(created)
    assert run.info.status == "FAILED" and run.info.run_name == "0: lr=0.1"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["sweep_sft.error"] == "slurm job 5_0 ended TIMEOUT"
    assert run.data.tags["sweep_sft.output_dir"] == str((sweep / "0").resolve())

    # 2. its run is still RUNNING (found by the output_dir tag the trial sets): that one ends,
    # KILLED for an attempt that runs again; a second call finds nothing left running
    own = Run(tracking, "1: lr=1", parent.run_id, tags={"sweep_sft.output_dir": str((sweep / "1").resolve())})
    other = Run(tracking, "2: lr=2", parent.run_id, tags={"sweep_sft.output_dir": str((sweep / "2").resolve())})
    touched = end_dead_trial(
        sweep,
        sweep / "1",
        "killed",
        job_num=1,
        overrides=["lr=1"],
        status="KILLED",
        tags={"sweep_sft.retried": "attempt 1 of 2"},
    )
    assert touched == [own.run_id]
    assert client.get_run(own.run_id).info.status == "KILLED"
    assert client.get_run(own.run_id).data.tags["sweep_sft.retried"] == "attempt 1 of 2"
    assert client.get_run(other.run_id).info.status == "RUNNING"
    assert end_dead_trial(sweep, sweep / "1", "killed", job_num=1, overrides=["lr=1"], status="KILLED") == []

    # 3. the job folder names its run (mlflow_run.json): that run ends FAILED, none is created
    (sweep / "2").mkdir()
    (sweep / "2" / "mlflow_run.json").write_text(json.dumps({"run_id": other.run_id, "tracking_uri": other.uri}))
    assert end_dead_trial(sweep, sweep / "2", "oom", job_num=2, overrides=["lr=2"]) == [other.run_id]
    assert client.get_run(other.run_id).info.status == "FAILED"
    # 4. a run the trial ended FINISHED before its job was killed (while exiting) ends FAILED:
    # the job returned nothing, so the sweep counts the trial failed; runs of earlier attempts
    # (started before this one was submitted) are left alone
    done = Run(tracking, "3: lr=3", parent.run_id, tags={"sweep_sft.output_dir": str((sweep / "3").resolve())})
    done.finish("FINISHED")
    start = client.get_run(done.run_id).info.start_time
    assert end_dead_trial(sweep, sweep / "3", "x", job_num=3, overrides=["lr=3"], since_ms=start + 1) != [done.run_id]
    assert client.get_run(done.run_id).info.status == "FINISHED"
    assert end_dead_trial(sweep, sweep / "3", "x", job_num=3, overrides=["lr=3"], since_ms=start) == [done.run_id]
    assert client.get_run(done.run_id).info.status == "FAILED"
    children = client.search_runs(
        [client.get_run(parent.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'"
    )
    assert len(children) == 5  # 3 trial runs, the one created in 1., the one created for 3 in 4.
