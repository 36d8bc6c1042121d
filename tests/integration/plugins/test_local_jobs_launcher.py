"""Sweeps through our local launcher (hydra/launcher=local_jobs), run as a user runs them, with
trials that outlast the launcher's poll interval: the README's sweep finishes; a trial killed by
a signal is reported as such, tagged with its local job id; a sweep that is stopped (SIGINT to its
process alone, or SIGKILL) leaves no job of it running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from helpers import by_job, run_cli, start_cli, sweep_runs, sweep_summary, wait_for

TIMEOUT_S = 300
# quick polls, and no 15 s wait for the result file of a job that died (a local disk shows it at once)
FAST = ["hydra.launcher.sacct_interval_s=1", "hydra.launcher.poll_s=0.2", "hydra.launcher.result_grace_s=0"]


@pytest.fixture(autouse=True)
def _no_job_left(tmp_path):
    """A failing test must not leave its jobs running either."""
    yield
    for pid in job_processes(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start(
    tmp_path: Path, *args: str, app: str | None = None, sigint_ignored: bool = False, new_session: bool = False
) -> subprocess.Popen:
    """`python -m sweep_sft -m ... hydra/launcher=local_jobs` (or a test app) in tmp_path."""
    launcher = "hydra/launcher=local_jobs" if app is None else "hydra/launcher=sweep_sft_local"
    # a shell starts a background job with SIGINT ignored, and its children inherit that
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return start_cli(
        "-m",
        launcher,
        f"hydra.sweep.dir={tmp_path / 's'}",
        *args,
        app=app,
        cwd=tmp_path,
        log=tmp_path / "sweep.log",
        preexec_fn=ignore,
        start_new_session=new_session,  # a process group of its own, to Ctrl-C without hitting the test
    )


def finish(tmp_path: Path, proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the sweep did not end within {timeout} s:\n{(tmp_path / 'sweep.log').read_text()[-3000:]}")
    return proc.returncode, (tmp_path / "sweep.log").read_text()


def job_processes(tmp_path: Path, role: str = "") -> list[int]:
    """Live processes of the sweep's local jobs: controllers and trials both name its submitit
    folder on their command lines (role: "submitit.core._submit" for the trials alone)."""
    folder = str(tmp_path / "s" / ".submitit")
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if state != "Z" and any(a.startswith(folder) for a in args) and (not role or role in args):
            found.append(int(entry.name))
    return found


def lone_trial(tmp_path: Path) -> int | None:
    found = job_processes(tmp_path, "submitit.core._submit")
    return found[0] if len(found) == 1 else None


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running, not a zombie (a reparented process may wait unreaped in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_the_readme_sweep_finishes_with_trials_longer_than_the_poll_interval(tmp_path, tracked_overrides):
    # the README's `python -m sweep_sft -m lr=1e-4,1e-3 hydra/launcher=local_jobs`; each trial
    # lasts several poll intervals (loading, training, evaluating: 10 s and more)
    interval_s = 0.25
    proc = start(tmp_path, "lr=1e-4,1e-3", f"hydra.launcher.sacct_interval_s={interval_s}", *tracked_overrides)
    rc, log = finish(tmp_path, proc)
    assert rc == 0, log[-3000:]
    parent, children = sweep_runs(tmp_path)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    # each trial's run alone spans several poll intervals (its job, with the model load, more)
    assert all(c.info.end_time - c.info.start_time > 3 * interval_s * 1000 for c in children), [
        c.info.end_time - c.info.start_time for c in children
    ]
    assert parent.info.status == "FINISHED"
    assert [j["state"] for j in sweep_summary(tmp_path)["jobs"]] == ["COMPLETE", "COMPLETE"]
    assert job_processes(tmp_path) == []


@pytest.mark.slow
def test_a_trial_killed_by_a_signal_is_reported_so_with_its_local_job_id(tmp_path, tracked_overrides):
    # trial 1 trains long (5000 steps); once trial 0 is done its process is the only one left
    args = [o for o in tracked_overrides if not o.startswith("trainer.max_steps=")]
    proc = start(tmp_path, "trainer.max_steps=4,5000", "epochs=1000", *FAST, *args)
    try:
        wait_for("trial 0's metrics", lambda: (tmp_path / "s" / "0" / "metrics.json").exists(), timeout=TIMEOUT_S)
        wait_for("trial 1's MLflow run", lambda: (tmp_path / "s" / "1" / "mlflow_run.json").exists())
        trial = wait_for("trial 1's process alone", lambda: lone_trial(tmp_path))
        job_id = str(parent_pid(trial))  # the job's controller: submitit's local job id is its pid
        os.kill(trial, signal.SIGKILL)
    finally:
        rc, log = finish(tmp_path, proc)
    assert rc == 0, log[-3000:]
    jobs = sweep_summary(tmp_path)["jobs"]
    assert [j["state"] for j in jobs] == ["COMPLETE", "FAILED"]
    assert f"JobDied: local job {job_id} ended KILLED by SIGKILL (signal 9) without a result" in jobs[1]["error"]
    parent, children = sweep_runs(tmp_path)
    killed = by_job(children)["1"]
    assert len(killed) == 1 and killed[0].info.status == "FAILED"
    tags = killed[0].data.tags
    assert tags["sweep_sft.local_job_id"] == job_id and "sweep_sft.slurm_job_id" not in tags
    assert tags["sweep_sft.job_state"] == "KILLED by SIGKILL (signal 9)"
    assert "KILLED by SIGKILL" in tags["sweep_sft.error"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/failed"] == 1


@pytest.mark.slow
def test_a_sweep_interrupted_in_its_launcher_stops_its_trials_and_ends_their_runs(tmp_path, tracked_overrides):
    # SIGINT to the sweep's process alone (not its process group, as Ctrl-C would): the
    # launcher raises KeyboardInterrupt while waiting; the trials must not run on orphaned
    args = [o for o in tracked_overrides if not o.startswith("trainer.max_steps=")]
    proc = start(tmp_path, "trainer.max_steps=5000", "epochs=1000", "lr=1e-4,1e-3", *FAST, *args)
    try:
        for num in ("0", "1"):
            wait_for(f"trial {num}'s MLflow run", lambda n=num: (tmp_path / "s" / n / "mlflow_run.json").exists())
        assert len(job_processes(tmp_path, "submitit.core._submit")) == 2
        os.kill(proc.pid, signal.SIGINT)
    finally:
        rc, log = finish(tmp_path, proc)
    assert rc != 0
    assert job_processes(tmp_path) == [], log[-3000:]  # gone when the sweep has exited
    assert "stopped 2 local job(s) still running" in log
    time.sleep(2)  # nothing of the trials is left to record a FINISHED run later
    parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "FAILED"
    assert len(children) == 2 and all(c.info.status in ("KILLED", "FAILED") for c in children), [
        c.info.status for c in children
    ]


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background"])
def test_a_killed_sweep_leaves_no_local_job_running(tmp_path, sigint_ignored):
    # SIGKILL: no code of the sweep runs; each controller sees its launcher gone and stops its trial
    args = ["+n=0,1", "+sleep_s=300", "hydra/sweeper=grid", *FAST]
    proc = start(tmp_path, *args, app="sleepy_trial.py", sigint_ignored=sigint_ignored)
    try:
        for num in ("0", "1"):
            wait_for(f"trial {num}", lambda n=num: (tmp_path / "s" / n / "pid").exists(), timeout=120)
        assert len(job_processes(tmp_path)) == 4  # two controllers, two trials
    finally:
        proc.kill()
        proc.wait()
    wait_for("the jobs to stop", lambda: job_processes(tmp_path) == [], timeout=20)
    exits = sorted((tmp_path / "s" / ".submitit").glob("*/*_exit.json"))
    assert len(exits) == 2 and all('"stopped": "launcher gone"' in p.read_text() for p in exits)


def test_a_trial_that_exits_without_a_result_is_reported_with_its_exit_code(tmp_path):
    # KILL_ONCE: the job at lr >= 1e-3 leaves by os._exit(9), before it returns a result
    args = ["-m", "lr=1e-4,1e-3", "hydra/sweeper=grid", "hydra/launcher=sweep_sft_local"]
    args += [f"hydra.sweep.dir={tmp_path / 's'}", "hydra.launcher.result_grace_s=0"]
    env = {"KILL_ONCE": str(tmp_path / "killed")}
    proc = run_cli(*args, app="synthetic_trial.py", cwd=tmp_path, env=env, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = sweep_summary(tmp_path)["jobs"][1]["error"]
    assert error.startswith("JobDied: local job ") and "ended FAILED (exit code 9) without a result" in error


@pytest.mark.parametrize(
    ("grace", "ended_by"), [("10", "the trial"), ("1", "its controller")], ids=["in-grace", "past-grace"]
)
@pytest.mark.slow
def test_a_killed_sweep_ends_the_run_of_a_trial_slow_to_stop(tmp_path, tracked_overrides, grace, ended_by):
    # SIGKILL while the MLflow store is busy (a write lock held 4 s): the trial needs that long to
    # end its run. No launcher is left to end it: within stop_grace_s the trial does; past it
    # (SIGKILLed while it waits on the store) its controller does, once the store answers.
    args = [o for o in tracked_overrides if not o.startswith("trainer.max_steps=")]
    proc = start(
        tmp_path, "trainer.max_steps=100000", "epochs=1000", f"hydra.launcher.stop_grace_s={grace}", *FAST, *args
    )
    store = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    try:
        wait_for("trial 0's MLflow run", lambda: (tmp_path / "s" / "0" / "mlflow_run.json").exists(), timeout=TIMEOUT_S)
        wait_for("training", lambda: "train/loss" in sweep_runs(tmp_path)[1][0].data.metrics, timeout=TIMEOUT_S)
        store.execute("BEGIN EXCLUSIVE")
        proc.kill()
        proc.wait()
        time.sleep(4)
    finally:
        store.close()
        proc.kill()
        proc.wait()
    wait_for("the jobs to stop", lambda: job_processes(tmp_path) == [], timeout=60)
    wait_for("no run RUNNING", lambda: all(r.info.status != "RUNNING" for r in sweep_runs(tmp_path)[1]), timeout=30)
    child = sweep_runs(tmp_path)[1][0]
    assert child.info.end_time and child.info.status in ("KILLED", "FAILED"), child.info
    assert "sweep_sft.error" in child.data.tags
    exit_code = json.loads(next((tmp_path / "s" / ".submitit").glob("*/*_exit.json")).read_text())["exit_codes"][0]
    assert exit_code == (-signal.SIGKILL if ended_by == "its controller" else -signal.SIGINT), ended_by
    if ended_by == "its controller":
        assert child.data.tags["sweep_sft.job_state"] == "CANCELLED (its launcher was gone)"


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_stops_a_trial_that_ignores_sigint(tmp_path):
    # a terminal's Ctrl-C: SIGINT to the sweep's whole process group; the trial ignores SIGINT
    args = ["+n=0,1", "+sleep_s=300", "+ignore_sigint=true", "hydra/sweeper=grid", *FAST]
    proc = start(tmp_path, *args, app="sleepy_trial.py", new_session=True)
    try:
        for num in ("0", "1"):
            wait_for(f"trial {num}", lambda n=num: (tmp_path / "s" / n / "pid").exists(), timeout=120)
        trials = [int((tmp_path / "s" / n / "pid").read_text()) for n in ("0", "1")]
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        rc, log = finish(tmp_path, proc, timeout=60)
    assert rc != 0
    assert job_processes(tmp_path) == [] and not any(alive(t) for t in trials), log[-3000:]
    exits = sorted((tmp_path / "s" / ".submitit").glob("*/*_exit.json"))
    assert len(exits) == 2 and all('"stopped": "cancelled"' in p.read_text() for p in exits), log[-3000:]


def test_a_job_whose_controller_was_killed_leaves_no_trial_running_into_its_retry(tmp_path):
    args = ["+n=0", "+sleep_s=300", "hydra/sweeper=grid", "hydra.launcher.retries=1", *FAST]
    proc = start(tmp_path, *args, app="sleepy_trial.py")
    pid_file = tmp_path / "s" / "0" / "pid"
    try:
        first = int(wait_for("the trial", lambda: pid_file.exists() and pid_file.read_text(), timeout=120))
        os.kill(parent_pid(first), signal.SIGKILL)  # its controller
        wait_for("the retry", lambda: pid_file.read_text() != str(first), timeout=120)
        assert not alive(first)  # gone before the retry started in the same folder
    finally:
        proc.kill()
        proc.wait()
    wait_for("the jobs to stop", lambda: job_processes(tmp_path) == [], timeout=30)
