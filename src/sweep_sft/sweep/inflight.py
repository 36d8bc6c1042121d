"""The jobs a sweep's controller has in flight, recorded in its sweep folder (INFLIGHT_FILE):
our launchers add each job as it is submitted and remove it once it is collected, so when the
controller is killed outright (SIGKILL, out of memory) the record names the jobs it left.

The same command run again in the folder stops them before it launches anything (`stop_left`,
from the sweep callback's on_multirun_start): a Slurm job is cancelled and awaited until squeue
drops it, a local job's process group (its controller's, started in a session of its own) is
killed; neither may race the rerun, which redoes the job in the same folder. Only the jobs
the record names are touched, and a local job only while its pid still runs our job controller
for the recorded folder (a pid is reused). The record is data (JSON), never executed."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sweep_sft.errors import UserInputError
from sweep_sft.names import INFLIGHT_FILE

log = logging.getLogger(__name__)
# squeue states in which a job's processes may still run; clusters' KillWait is 30-120 s.
LIVE_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PENDING"}
GONE_TIMEOUT_S = 180.0
LOCAL_CONTROLLER = "hydra_plugins.sweep_sft_submitit._local_jobs"
JOB_ID = re.compile(r"\d+(_\d+)?")  # a Slurm job id (array task: <array>_<task>) or a local job's pid


def read(sweep_dir: str | Path) -> dict[str, Any]:
    """The record: {"controller": {pid, host, argv}, "jobs": {job id: {executor, num, folder}}}."""
    try:
        record = json.loads((Path(sweep_dir) / INFLIGHT_FILE).read_text())
    except (OSError, ValueError):
        return {"jobs": {}}
    ok = isinstance(record, dict) and isinstance(record.get("jobs"), dict)
    return record if ok else {"jobs": {}}


def add(sweep_dir: str | Path, job_id: str, executor: str, num: int, folder: str) -> None:
    """The job was submitted by this process."""
    record = read(sweep_dir)
    record["controller"] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "started": _start_time(os.getpid()),
    }
    record["jobs"][str(job_id)] = {"executor": executor, "num": int(num), "folder": str(folder)}
    _write(Path(sweep_dir), record)


def remove(sweep_dir: str | Path, job_id: str) -> None:
    """The job was collected (its result read, or its death recorded)."""
    record = read(sweep_dir)
    if record["jobs"].pop(str(job_id), None) is not None:
        _write(Path(sweep_dir), record)


def _write(sweep_dir: Path, record: dict[str, Any]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / f".{INFLIGHT_FILE}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(sweep_dir / INFLIGHT_FILE)  # never seen half written


def stop_left(sweep_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Stop the jobs a dead controller of this sweep folder left in flight and clear the record;
    those jobs by job number ({executor, job_id, folder}). A controller of the folder still
    running on this machine is refused: two sweeps in one folder would redo each other's jobs."""
    sweep_dir = Path(sweep_dir)
    record = read(sweep_dir)
    _refuse_live_controller(sweep_dir, record.get("controller"))
    left: dict[int, dict[str, Any]] = {}
    for job_id, job in record["jobs"].items():
        if not isinstance(job, dict) or not isinstance(job.get("num"), int):
            continue
        if not JOB_ID.fullmatch(str(job_id)):  # data from the folder: never an option to scancel
            log.warning(f"{sweep_dir / INFLIGHT_FILE}: {job_id!r} is not a job id; left alone")
            continue
        if job.get("executor") == "slurm":
            _cancel_slurm(job_id)
        elif job.get("executor") == "local":
            _kill_local(job_id, str(job.get("folder", "")))
        left[job["num"]] = {**job, "job_id": job_id}
    if left:
        log.warning(
            f"{sweep_dir}: the previous sweep left {len(left)} job(s) in flight (stopped where still running): "
            + ", ".join(f"#{n} ({j['executor']} job {j['job_id']})" for n, j in sorted(left.items()))
        )
    if record["jobs"] or (sweep_dir / INFLIGHT_FILE).exists():
        _write(sweep_dir, {"jobs": {}})
    return left


def _refuse_live_controller(sweep_dir: Path, controller: Any) -> None:
    if not isinstance(controller, dict) or controller.get("host") != socket.gethostname():
        return
    pid, argv, started = controller.get("pid"), controller.get("argv"), controller.get("started")
    if not isinstance(pid, int) or pid == os.getpid():
        return
    if started is not None:  # the same process (whatever its command line), not a reused pid
        alive = _start_time(pid) == started
    else:
        running = _cmdline(pid)
        alive = (
            isinstance(argv, list)
            and len(argv) >= 2
            and len(running) >= len(argv) - 1
            and running[len(running) - len(argv) + 1 :] == argv[1:]
        )
    if alive:
        raise UserInputError(
            f"hydra.sweep.dir={sweep_dir}: another sweep (pid {pid}) is still running in this folder; "
            f"wait for it or stop it (its jobs are named in {sweep_dir / INFLIGHT_FILE})"
        )


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    pid it names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> list[str]:
    """The process's argv; [] when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _cancel_slurm(job_id: str, timeout_s: float = GONE_TIMEOUT_S) -> None:
    """scancel the job, then wait until squeue no longer lists it as live (Slurm's KillWait)."""
    try:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning(f"could not scancel slurm job {job_id} left by the previous sweep: {exc}")
        return
    if not slurm_job_gone(job_id, timeout_s):
        log.warning(f"slurm job {job_id} still listed by squeue {timeout_s:.0f} s after scancel; going on")


def slurm_job_gone(job_id: str, timeout_s: float = GONE_TIMEOUT_S) -> bool:
    """Wait until squeue no longer lists the job as live (its processes live on through Slurm's
    KillWait after sacct says CANCELLED); False if it still does after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return True  # no squeue to ask: nothing to wait on
        if not set(out.split()) & LIVE_STATES:
            return True
        time.sleep(0.5)
    return False


def _kill_local(job_id: str, folder: str) -> None:
    """Kill the local job's process group if it still holds our job controller or its trial for
    `folder` (the job's submitit folder, which both name as `.../%j`): a pid is reused."""
    if not job_id.isdigit() or not folder:
        return
    for pid in _group_members(int(job_id)):
        argv = " ".join(_cmdline(pid)).replace("%j", job_id)
        if folder in argv and (LOCAL_CONTROLLER in argv or "submitit" in argv):
            kill_group(job_id)
            return


def kill_group(job_id: str, timeout_s: float = 10.0) -> None:
    """SIGKILL the job's process group (its controller started one: the group's id is the job
    id) and wait until none of it runs: a trial left by a controller that was killed must not
    run on beside a retry in its folder. (A group's id is not given to another process while a
    member lives.)"""
    pgid = int(job_id)
    if not _group_members(pgid):
        return  # empty: its id may be free for another process to take
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        return
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and fields[2] == str(pgid):
            found.append(int(stat.parent.name))
    return found
