"""Sweeps through the real local Slurm cluster (launchers/slurm_cluster.sh), run as a user runs
them: `python -m sweep_sft -m ... hydra/launcher=slurm_local` from a folder holding the SQLite
MLflow store. A job Slurm kills (here: `scancel`, deterministic and quick) becomes a failed
trial in MLflow and in sweep_summary.json, and the sweep goes on; with retries it runs again."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, by_job, run_cli, start_cli, sweep_runs, sweep_summary, wait_for

pytestmark = pytest.mark.slurm
TIMEOUT_S = 240


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    launch = ["-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={tmp_path / 's'}"]
    return start_cli(*launch, *args, cwd=tmp_path, log=tmp_path / "sweep.log")


def finish(tmp_path: Path, proc: subprocess.Popen) -> tuple[int, str]:
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _cancel_all(tmp_path)
        pytest.fail(f"the sweep did not end within {TIMEOUT_S} s:\n{(tmp_path / 'sweep.log').read_text()[-3000:]}")
    return proc.returncode, (tmp_path / "sweep.log").read_text()


def _cancel_all(tmp_path: Path) -> None:
    ids = {p.name.split("_")[0] for p in (tmp_path / "s" / ".submitit").glob("[0-9]*") if p.is_dir()}
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def array_task(tmp_path: Path, task: int) -> str | None:
    """The Slurm id of a job of the sweep's first batch, once submitted: <array>_<task>, or a
    plain id for a batch of one (submitit submits no array then)."""
    folder = tmp_path / "s" / ".submitit"
    found = [p.name for p in folder.glob(f"[0-9]*_{task}") if p.is_dir()]
    if not found and task == 0:
        found = [p.name for p in folder.glob("[0-9]*") if p.is_dir() and p.name.isdigit()]
    return found[0] if found else None


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-nP", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


def test_four_trial_sweep_records_four_finished_child_runs(tmp_path, tracked_overrides):
    proc = start(tmp_path, "lr=1e-4,3e-4,1e-3,3e-3", *tracked_overrides)
    rc, log = finish(tmp_path, proc)
    assert rc == 0, log[-3000:]
    parent, children = sweep_runs(tmp_path)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.0001", "0.0003", "0.001", "0.003"]
    assert parent.info.status == "FINISHED"
    assert [j["state"] for j in sweep_summary(tmp_path)["jobs"]] == ["COMPLETE"] * 4
    # dispatched one by one (sweep_sft.sweep.dispatch): four Slurm jobs, no array
    jobs = [p.name for p in (tmp_path / "s" / ".submitit").glob("[0-9]*") if p.is_dir()]
    assert len(jobs) == 4 and all(name.isdigit() for name in jobs), jobs


def test_a_job_killed_by_slurm_is_a_failed_trial_and_the_sweep_goes_on(tmp_path, tracked_overrides):
    # Trial 1 trains long enough (5000 steps; epochs would stop it first) to be cancelled once
    # it has opened its MLflow run. In batches (one Slurm array), as through Hydra's launch().
    args = [o for o in tracked_overrides if not o.startswith("trainer.max_steps=")]
    proc = start(tmp_path, "trainer.max_steps=4,5000,5", "epochs=1000", "hydra.sweeper.dispatch=batch", *args)
    try:
        job_id = wait_for("trial 1's Slurm job", lambda: array_task(tmp_path, 1))
        wait_for("trial 1's MLflow run (its config.yaml)", lambda: (tmp_path / "s" / "1" / "config.yaml").exists())
        subprocess.run(["scancel", job_id], check=True)
    finally:
        rc, log = finish(tmp_path, proc)
    assert rc == 0, log[-3000:]
    assert slurm_state(job_id).startswith("CANCELLED")
    jobs = sweep_summary(tmp_path)["jobs"]
    assert [j["state"] for j in jobs] == ["COMPLETE", "FAILED", "COMPLETE"]
    assert f"slurm job {job_id} ended CANCELLED" in jobs[1]["error"]
    assert "trainer.max_steps=5000" in jobs[1]["overrides"]
    assert f"failed #1: JobDied: slurm job {job_id}" in log  # the printed summary lists it
    parent, children = sweep_runs(tmp_path)
    runs_of = by_job(children)
    assert sorted(runs_of) == ["0", "1", "2"] and all(len(r) == 1 for r in runs_of.values())
    killed = runs_of["1"][0]
    assert killed.info.status == "FAILED"
    assert job_id in killed.data.tags["sweep_sft.error"] and killed.data.tags["sweep_sft.slurm_job_id"] == job_id
    assert runs_of["0"][0].info.status == runs_of["2"][0].info.status == "FINISHED"
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/failed"] == 1


def submitted_ids(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "s" / ".submitit").glob("[0-9]*") if p.is_dir()}


def test_ctrl_c_on_a_slurm_sweep_cancels_its_jobs_and_ends_their_runs(tmp_path, tracked_overrides):
    # SIGINT to the sweep's controller while both trials train: nothing may run on in Slurm
    # without it (the trials would write into the sweep folder and MLflow behind the user's back).
    args = [o for o in tracked_overrides if not o.startswith("trainer.max_steps=")]
    proc = start(tmp_path, "trainer.max_steps=5000", "epochs=1000", "lr=1e-4,1e-3", *args)
    try:
        for num in ("0", "1"):
            wait_for(f"trial {num}'s MLflow run", lambda n=num: (tmp_path / "s" / n / "mlflow_run.json").exists())
        ids = submitted_ids(tmp_path)
        assert len(ids) == 2 and all(slurm_state(i) == "RUNNING" for i in ids)
        os.kill(proc.pid, signal.SIGINT)
    finally:
        rc, log = finish(tmp_path, proc)
    assert rc != 0
    assert "stopped 2 slurm job(s) still running" in log, log[-3000:]
    assert all(slurm_state(i).startswith("CANCELLED") for i in ids), {i: slurm_state(i) for i in ids}
    live = subprocess.run(["squeue", "-h", "-j", ",".join(sorted(ids))], capture_output=True, text=True).stdout
    assert live.strip() == ""  # gone before the sweep exited, not only marked
    parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "FAILED"
    assert len(children) == 2 and all(c.info.status in ("KILLED", "FAILED") for c in children), [
        c.info.status for c in children
    ]


def test_a_killed_job_with_retries_succeeds_on_its_retry(tmp_path, tracked_overrides):
    proc = start(tmp_path, "hydra.launcher.retries=1", "lr=1e-3", *tracked_overrides)
    try:
        job_id = wait_for("the trial's Slurm job", lambda: array_task(tmp_path, 0))
        wait_for("it to run", lambda: slurm_state(job_id) == "RUNNING", timeout=60)
        subprocess.run(["scancel", job_id], check=True)
    finally:
        rc, log = finish(tmp_path, proc)
    assert rc == 0, log[-3000:]
    assert slurm_state(job_id).startswith("CANCELLED")
    assert f"slurm job {job_id} ended CANCELLED" in log and "submitted again as job" in log
    assert [j["state"] for j in sweep_summary(tmp_path)["jobs"]] == ["COMPLETE"]
    parent, children = sweep_runs(tmp_path)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.tags["sweep_sft.trial_state"] == "COMPLETE"
    # an attempt that had opened a run before it was killed is KILLED, marked as retried
    for other in children:
        if other is not finished[0]:
            assert other.info.status == "KILLED" and "sweep_sft.retried" in other.data.tags
    assert parent.info.status == "FINISHED"


def test_a_job_killed_for_memory_is_a_failed_trial(tmp_path):
    # a tiny app, no torch: the job over --mem=1G is killed by Slurm, the other completes
    proc = run_cli(
        "-m",
        "+mb=0,3000",
        "hydra/sweeper=grid",
        "hydra.searchpath=[pkg://sweep_sft.conf]",  # our profiles serve any Hydra app
        "hydra/launcher=slurm_local",
        "hydra.launcher.mem_gb=1",
        f"hydra.sweep.dir={tmp_path / 's'}",
        app="memory_hog.py",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sweep_summary(tmp_path)["jobs"]
    assert [j["state"] for j in jobs] == ["COMPLETE", "FAILED"]
    assert "ended FAILED without a result" in jobs[1]["error"] and "exceeded memory limit" in jobs[1]["error"]


CLUSTER_DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "mariadbd", "munged")


def listening(daemons=CLUSTER_DAEMONS) -> dict[str, set[str]]:
    """Local addresses of the TCP sockets each cluster daemon listens on (`ss -ltnp`)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found: dict[str, set[str]] = {}
    for line in out.splitlines():
        fields = line.split()
        for name in daemons:
            if f'(("{name}",' in line:
                found.setdefault(name, set()).add(fields[3].rsplit(":", 1)[0])
    return found


def test_the_cluster_listens_on_localhost_only_and_its_script_holds_no_password():
    found = listening()
    # the three Slurm daemons listen (on TCP); munged has a Unix socket only
    assert {"slurmctld", "slurmd", "slurmdbd"} <= set(found), found
    assert all(addr == "127.0.0.1" for addrs in found.values() for addr in addrs), found
    script = (ROOT / "launchers" / "slurm_cluster.sh").read_text()
    conf = dict(line.split("=", 1) for line in Path("/etc/slurm/slurmdbd.conf").read_text().splitlines() if "=" in line)
    password = conf["StoragePass"].strip()
    assert len(password) >= 16 and password not in script
    stored = Path(os.environ.get("SLURM_LOCAL_STATE", "/var/lib/sweep-sft-slurm")) / "db_password"
    assert stored.read_text().strip() == password and stored.stat().st_mode & 0o777 == 0o600
    assert stored.stat().st_uid == 0
    # a later start reuses it: the config stays as it is and no daemon restarts
    again = subprocess.run([ROOT / "launchers" / "slurm_cluster.sh", "start"], capture_output=True, text=True)
    assert again.returncode == 0 and "(unchanged)" in again.stdout, again.stdout + again.stderr
    assert stored.read_text().strip() == password
