"""Running a sweep's command again in the same sweep folder (after a SIGKILLed controller, or
to extend it) goes on exactly: no point proposed twice, finished jobs never redone, one MLflow
parent run per sweep folder, the dead controller's cut-off runs ended KILLED."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import start_cli, wait_for

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


@pytest.mark.sweep_app("synthetic_trial.py", "grid")
def test_resume_false_runs_every_job_again(tmp_path, sweep):
    assert sweep("lr=0.0001,0.0002").returncode == 0
    first = job_times(tmp_path, [0, 1])
    again = sweep("lr=0.0001,0.0002", "hydra.sweeper.resume=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(job_times(tmp_path, [0, 1])[n] != first[n] for n in (0, 1))


def _store(tmp_path: Path, empty_store: Path) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _sleeper(*args: str) -> subprocess.Popen:
    """A process in a session (and process group) of its own, as a local job's controller."""
    code = "import time; time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True)


def test_a_rerun_reopens_the_parent_stops_the_jobs_left_and_ends_the_cut_off_runs(tmp_path, empty_store):
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from sweep_sft.errors import UserInputError
    from sweep_sft.sweep.callback import MlflowParentRun
    from sweep_sft.tracking.client import read_parent

    uri, sweep_dir = _store(tmp_path, empty_store), tmp_path / "sweep"
    config = OmegaConf.create(
        {
            "tracking": {"enabled": True, "uri": uri},
            "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": ["lr=1,2"]}},
        }
    )
    first = MlflowParentRun()
    first.on_multirun_start(config)
    parent_id = read_parent(sweep_dir)["run_id"]
    # What a controller killed outright leaves: its parent ended by its guardian, a trial's run
    # RUNNING, and in the record of jobs in flight that trial's local job, still running.
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(parent_id).info.experiment_id
    done = client.create_run(experiment, run_name="0: lr=1", tags={"mlflow.parentRunId": parent_id})
    client.set_terminated(done.info.run_id)
    cut = client.create_run(experiment, run_name="1: lr=2", tags={"mlflow.parentRunId": parent_id})
    first.run.finish("KILLED")
    client.set_tag(parent_id, "sweep_sft.error", "the process running it died; ended by its guardian")
    first.run = first.sweep_dir = None
    job_folder = sweep_dir / ".submitit" / "%j"
    job = _sleeper(str(job_folder), "submitit")
    stranger = _sleeper("not a job")  # the record names its pid too (reused): left alone
    record = {
        "controller": {"pid": stranger.pid + 10**6, "host": socket.gethostname(), "argv": ["x", "gone"]},
        "jobs": {
            str(job.pid): {"executor": "local", "num": 1, "folder": str(sweep_dir / ".submitit" / str(job.pid))},
            str(stranger.pid): {"executor": "local", "num": 2, "folder": str(sweep_dir / ".submitit" / "9")},
        },
    }
    (sweep_dir / "inflight_jobs.json").write_text(json.dumps(record))
    try:
        rerun = MlflowParentRun()
        rerun.on_multirun_start(config)
        assert job.wait(timeout=10) == -9 and stranger.poll() is None
        assert read_parent(sweep_dir)["run_id"] == parent_id  # the same parent, RUNNING again
        parent = client.get_run(parent_id)
        assert parent.info.status == "RUNNING" and parent.data.tags["sweep_sft.resumes"] == "1"
        assert "sweep_sft.error" not in parent.data.tags
        cut_off = client.get_run(cut.info.run_id)
        assert cut_off.info.status == "KILLED" and cut_off.data.tags["sweep_sft.local_job_id"] == str(job.pid)
        assert "cut off" in cut_off.data.tags["sweep_sft.error"]
        assert client.get_run(done.info.run_id).info.status == "FINISHED"
        assert json.loads((sweep_dir / "inflight_jobs.json").read_text())["jobs"] == {}
        rerun.on_multirun_end(config)
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials"] == 2
        assert len(client.search_runs([experiment], "tags.`sweep_sft.kind` = 'sweep'")) == 1
        # a controller of the folder still running is refused, before anything is stopped
        record["controller"] = {"pid": stranger.pid, "host": socket.gethostname(), "argv": ["x", "not a job"]}
        (sweep_dir / "inflight_jobs.json").write_text(json.dumps(record))
        with pytest.raises(UserInputError, match=f"another sweep \\(pid {stranger.pid}\\) is still running"):
            MlflowParentRun().on_multirun_start(config)
        assert stranger.poll() is None
    finally:
        for p in (job, stranger):
            p.kill()
            p.wait()


PARENT_CALLBACK = "+hydra.callbacks.parent._target_=sweep_sft.sweep.callback.MlflowParentRun"


def runs_by_job(uri: str) -> tuple[list, dict[int, list]]:
    """(parent runs, the child runs by job number, oldest first) of the store."""
    from mlflow.tracking import MlflowClient

    from sweep_sft.names import run_number

    client = MlflowClient(tracking_uri=uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time ASC"])
    parents = [r for r in found if r.data.tags.get("sweep_sft.kind") == "sweep"]
    children: dict[int, list] = {}
    for r in found:
        if r not in parents:
            children.setdefault(run_number(r.info.run_name), []).append(r)
    return parents, children


@pytest.mark.slow
@pytest.mark.sweep_app("tracked_trial.py", "grid", PARENT_CALLBACK)
def test_one_parent_run_per_sweep_folder_across_reruns(tmp_path, sweep, empty_store):
    # KILL_ONCE: job 1 kills the sweep's process (the basic launcher runs jobs in it), its run open
    uri = _store(tmp_path, empty_store)
    args = ("lr=0.1,0.2,0.3", f"tracking.uri={uri}")
    killed = sweep(*args, env={"KILL_ONCE": str(tmp_path / "killed")})
    assert killed.returncode != 0 and (tmp_path / "killed").exists()
    rerun = sweep(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = sweep(*args)  # nothing left to do: no new run at all
    assert again.returncode == 0, again.stderr[-3000:]
    parents, children = runs_by_job(uri)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_sft.resumes"] == "2"
    assert {c.data.tags["mlflow.parentRunId"] for cs in children.values() for c in cs} == {parent.info.run_id}
    states = [[c.info.status for c in children[n]] for n in range(3)]
    assert states == [["FINISHED"], ["KILLED", "FINISHED"], ["FINISHED"]]
    assert parent.data.metrics["sweep/finished"] == 3


def _kill_mid_sweep(tmp_path: Path, args: tuple[str, ...]) -> tuple[str, int]:
    """Start the tracked grid, wait until job 0 finished and job 1 holds its run open, then
    SIGKILL the sweep's controller; (job 1's job id, as recorded in flight, its trial's pid)."""
    head = ("-m", "hydra/sweeper=grid", f"hydra.sweep.dir={tmp_path / 'sweep'}", PARENT_CALLBACK)
    hold, log = tmp_path / "hold", tmp_path / "first.log"
    env = {"HOLD_ONCE": str(hold), "HOLD_S": "300"}  # job 1 holds its run open, long
    proc = start_cli(*head, *args, app="tracked_trial.py", cwd=tmp_path, log=log, env=env)
    try:
        wait_for("job 1 holding", lambda: hold.exists() and hold.read_text(), timeout=180, proc=proc, log=log)
        wait_for("job 0's result", lambda: (tmp_path / "sweep" / "0" / "metrics.json").exists(), timeout=120)
        record = json.loads((tmp_path / "sweep" / "inflight_jobs.json").read_text())["jobs"]
        return next(j for j, job in record.items() if job["num"] == 1), int(hold.read_text())
    finally:
        proc.kill()  # the controller, SIGKILLed mid-sweep
        proc.wait()


@pytest.mark.slow
@pytest.mark.sweep_app("tracked_trial.py", "grid", PARENT_CALLBACK)
def test_a_rerun_right_after_a_killed_local_sweep_stops_its_trial_first(tmp_path, sweep, empty_store):
    uri = _store(tmp_path, empty_store)
    args = ("lr=0.1,0.2", f"tracking.uri={uri}", "hydra/launcher=sweep_sft_local", "hydra.launcher.stop_grace_s=60")
    job_id, trial = _kill_mid_sweep(tmp_path, args)
    try:
        rerun = sweep(*args)  # at once: the orphaned trial would still run for stop_grace_s
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"#1 (local job {job_id})" in rerun.stdout
        with pytest.raises(ProcessLookupError):
            os.kill(trial, 0)
    finally:
        with contextlib.suppress(OSError):  # the job's process group, if the test failed first
            os.killpg(int(job_id), signal.SIGKILL)
    parents, children = runs_by_job(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [c.info.status for c in children[0]] == ["FINISHED"]
    assert [c.info.status for c in children[1]] == ["KILLED", "FINISHED"]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.sweep_app("tracked_trial.py", "grid", PARENT_CALLBACK)
def test_a_rerun_cancels_the_slurm_job_its_killed_controller_left_and_ends_its_run(tmp_path, sweep, empty_store):
    uri = _store(tmp_path, empty_store)
    args = ("lr=0.1,0.2", f"tracking.uri={uri}", "hydra/launcher=slurm_local", "hydra.searchpath=[pkg://sweep_sft.conf]")
    job_id, _ = _kill_mid_sweep(tmp_path, args)  # job 1 runs on in Slurm
    try:
        rerun = sweep(*args)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        subprocess.run(["scancel", job_id], check=False)
    state = subprocess.run(["sacct", "-nPX", "-j", job_id, "-o", "State"], capture_output=True, text=True).stdout
    assert state.startswith("CANCELLED")  # stopped before the rerun redid job 1 in its folder
    parents, children = runs_by_job(uri)
    assert len(parents) == 1 and parents[0].data.tags["sweep_sft.resumes"] == "1"
    assert [c.info.status for c in children[0]] == ["FINISHED"]  # finished before the kill: not redone
    assert [c.info.status for c in children[1]] == ["KILLED", "FINISHED"]
    assert children[1][0].data.tags["sweep_sft.slurm_job_id"] == job_id
