"""A trial whose job died without ending its own MLflow run (killed by Slurm: memory, time
limit, scancel, node failure) ends it here, from the launcher: FAILED with the error, or
KILLED when the launcher runs it again. A job that died before it opened a run gets a FAILED
child run under the sweep's parent, so every trial of the sweep is in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from sweep_sft.names import (
    ENDED_BY_TAG,
    ERROR_TAG,
    JOB_STATE_TAG,
    OUTPUT_DIR_TAG,
    PARENT_FILE,
    RUN_FILE,
    child_run_name,
    job_id_tag,
    run_number,
)
from sweep_sft.tracking.client import read_parent

# On a trial's run the sweep's rerun found RUNNING under its parent (end_cut_off).
RERUN = "sweep rerun"
CUT_OFF = (
    "cut off: the sweep controller running this trial died (killed) before it ended; "
    "ended when the same sweep was run again in its folder"
)


def is_tracked(sweep_dir: str | Path, output_dir: str | Path) -> bool:
    """Whether there is an MLflow record to end (checked before importing mlflow)."""
    return (Path(sweep_dir) / PARENT_FILE).exists() or (Path(output_dir) / RUN_FILE).exists()


def end_dead_trial(
    sweep_dir: str | Path,
    output_dir: str | Path,
    error: str,
    *,
    job_num: int,
    overrides: list[str],
    status: str = "FAILED",
    tags: dict[str, str] | None = None,
    since_ms: int = 0,
) -> list[str]:
    """End the job's runs started since `since_ms` (the attempt's submission) with `status` and
    the error; with none and status FAILED, create a FAILED child of the sweep's parent.
    Returns the run ids it touched. A run the trial itself ended FINISHED is ended too: its
    job was killed before it returned (e.g. while exiting), so the sweep counts it failed."""
    from mlflow.tracking import MlflowClient

    output_dir = str(Path(output_dir).resolve())
    parent = read_parent(sweep_dir)
    all_tags = {ERROR_TAG: error[:5000], **(tags or {})}
    touched = []
    for uri, run_id in _attempt_runs(parent, output_dir, since_ms):
        _end(MlflowClient(tracking_uri=uri), run_id, status, all_tags)
        touched.append(run_id)
    if touched or status != "FAILED" or not parent:
        return touched
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    experiment = client.get_run(parent["run_id"]).info.experiment_id
    run = client.create_run(
        experiment,
        run_name=child_run_name(job_num, overrides, parent.get("swept", [])),
        tags={"mlflow.parentRunId": parent["run_id"], OUTPUT_DIR_TAG: output_dir, **all_tags},
    )
    client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id]


def end_running_trial(output_dir: str | Path, error: str, tags: dict[str, str]) -> str | None:
    """End KILLED, with the error, the run the trial's mlflow_run.json names if it is still
    RUNNING (its job was stopped and nobody else is left to end it). Returns its id if ended."""
    named = _named_run(output_dir)
    if named is None:
        return None
    from mlflow.tracking import MlflowClient

    uri, run_id = named
    client = MlflowClient(tracking_uri=uri)
    if client.get_run(run_id).info.status != "RUNNING":
        return None  # the trial ended it itself
    _end(client, run_id, "KILLED", {ERROR_TAG: error[:5000], **tags})
    return run_id


def end_cut_off(client, parent_run_id: str, stopped: dict[int, dict], only_stopped: bool = False) -> list[str]:
    """End KILLED the children of the sweep's parent still RUNNING when the sweep is run again
    in its folder: the controller that ran them died, and the jobs it left in flight are stopped
    by now (`stopped`, by job number: executor and job id, named on the run). Returns their ids.
    `only_stopped`: those of the stopped jobs alone (other controllers' children are live)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    ended = []
    for run in children:
        job = stopped.get(run_number(run.info.run_name or ""))
        if only_stopped and job is None:
            continue
        tags = {ERROR_TAG: CUT_OFF, ENDED_BY_TAG: RERUN}
        if job is not None:
            tags[job_id_tag(str(job["executor"]))] = str(job["job_id"])
            tags[JOB_STATE_TAG] = "CANCELLED (its sweep was gone; stopped by the rerun)"
        _end(client, run.info.run_id, "KILLED", tags)
        ended.append(run.info.run_id)
    return ended


def _end(client, run_id: str, status: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


def _named_run(output_dir: str | Path) -> tuple[str, str] | None:
    """(tracking uri, run id) of the run the trial's mlflow_run.json names, if it wrote one."""
    run_file = Path(output_dir) / RUN_FILE
    if not run_file.exists():
        return None
    named = json.loads(run_file.read_text())
    return named["tracking_uri"], named["run_id"]


def _attempt_runs(parent: dict, output_dir: str, since_ms: int) -> list[tuple[str, str]]:
    """(tracking uri, run id) of the attempt's runs not yet ended as dead: the one its
    mlflow_run.json names, else those under the parent tagged with its output folder."""
    from mlflow.tracking import MlflowClient

    def live(run) -> bool:
        return (
            run.info.status in ("RUNNING", "FINISHED")
            and ERROR_TAG not in run.data.tags
            and run.info.start_time >= since_ms
        )

    named = _named_run(output_dir)
    if named is not None:
        # The trial's own record of its current run, which a resumed attempt may have reopened
        # (so it can be older than this attempt, and carry an earlier attempt's error tag).
        run = MlflowClient(tracking_uri=named[0]).get_run(named[1])
        current = run.info.status == "RUNNING" or (run.info.status == "FINISHED" and ERROR_TAG not in run.data.tags)
        return [named] if current else []
    if not parent:
        return []
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    experiment = client.get_run(parent["run_id"]).info.experiment_id
    runs = client.search_runs(
        [experiment],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent['run_id']}' and tags.`{OUTPUT_DIR_TAG}` = '{_quote(output_dir)}'"
        ),
    )
    return [(parent["tracking_uri"], r.info.run_id) for r in runs if live(r)]


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
