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
from sweep_sft.redact import redact

log = logging.getLogger(__name__)
# squeue states in which a job's processes may still run; clusters' KillWait is 30-120 s.
LIVE_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PENDING"}
GONE_TIMEOUT_S = 180.0
LOCAL_CONTROLLER = "hydra_plugins.sweep_sft_submitit._local_jobs"
JOB_ID = re.compile(r"\d+(_\d+)?")  # a Slurm job id (array task: <array>_<task>) or a local job's pid


def shared_folder(config: Any) -> bool:
    """Whether the sweep's folder may have several controllers (the optuna5 sweeper with
    hydra.sweeper.heartbeat_s: Optuna's distributed pattern on one study)."""
    from omegaconf import OmegaConf

    return bool(OmegaConf.select(config, "hydra.sweeper.heartbeat_s", default=None))


def record_file(sweep_dir: str | Path, shared: bool = False) -> Path:
    """This controller's record: the folder's one, or with several controllers on one study
    (`shared`: hydra.sweeper.heartbeat_s) one per controller, named by host and pid."""
    name = f"inflight_jobs.{socket.gethostname()}.{os.getpid()}.json" if shared else INFLIGHT_FILE
    return Path(sweep_dir) / name


def read(sweep_dir: str | Path, file: Path | None = None) -> dict[str, Any]:
    """The record: {"controller": {pid, host, argv}, "jobs": {job id: {executor, num, folder}}}."""
    try:
        record = json.loads((file or Path(sweep_dir) / INFLIGHT_FILE).read_text())
    except (OSError, ValueError):
        return {"jobs": {}}
    ok = isinstance(record, dict) and isinstance(record.get("jobs"), dict)
    return record if ok else {"jobs": {}}


def add(sweep_dir: str | Path, job_id: str, executor: str, num: int, folder: str, shared: bool = False) -> None:
    """The job was submitted by this process."""
    file = record_file(sweep_dir, shared)
    record = read(sweep_dir, file)
    record["controller"] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "argv": [redact(a) for a in sys.argv],  # a storage password on the command line stays out
        "started": _start_time(os.getpid()),
    }
    record["jobs"][str(job_id)] = {"executor": executor, "num": int(num), "folder": str(folder)}
    _write(file, record)


def remove(sweep_dir: str | Path, job_id: str, shared: bool = False) -> None:
    """The job was collected (its result read, or its death recorded)."""
    file = record_file(sweep_dir, shared)
    record = read(sweep_dir, file)
    if record["jobs"].pop(str(job_id), None) is not None:
        _write(file, record)


def _write(file: Path, record: dict[str, Any]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.parent / f".{file.name}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(file)  # never seen half written


def stop_left(sweep_dir: str | Path, shared: bool = False) -> dict[int, dict[str, Any]]:
    """Stop the jobs a dead controller of this sweep folder left in flight and clear the record;
    those jobs by job number ({executor, job_id, folder}). A controller of the folder still
    running on this machine is refused: two sweeps in one folder would redo each other's jobs.
    With several controllers on one study (`shared`), each has its record: the live ones (any
    on another machine) are left alone, the dead ones' jobs stopped and their records removed."""
    sweep_dir = Path(sweep_dir)
    if not shared:
        record = read(sweep_dir)
        _refuse_live_controller(sweep_dir, record.get("controller"))
        return _stop_jobs(sweep_dir, sweep_dir / INFLIGHT_FILE, record)
    left: dict[int, dict[str, Any]] = {}
    for file in sorted(sweep_dir.glob("inflight_jobs.*.json")):
        record = read(sweep_dir, file)
        if file == record_file(sweep_dir, True) or not _alive(record.get("controller")):
            left.update(_stop_jobs(sweep_dir, file, record))
            file.unlink(missing_ok=True)
    return left


def others_alive(sweep_dir: str | Path) -> bool:
    """Whether another controller of the shared study still runs in this folder (its record is
    there and its process lives; one on another machine counts as alive)."""
    mine = record_file(sweep_dir, True)
    return any(
        _alive(read(sweep_dir, f).get("controller"))
        for f in Path(sweep_dir).glob("inflight_jobs.*.json")
        if f != mine
    )


def _stop_jobs(sweep_dir: Path, file: Path, record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    left: dict[int, dict[str, Any]] = {}
    for job_id, job in record["jobs"].items():
        if not isinstance(job, dict) or not isinstance(job.get("num"), int):
            continue
        if not JOB_ID.fullmatch(str(job_id)):  # data from the folder: never an option to scancel
            log.warning(f"{file}: {job_id!r} is not a job id; left alone")
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
    if record["jobs"] or file.exists():
        _write(file, {"jobs": {}})
    return left


def _alive(controller: Any) -> bool:
    """Whether the recorded controller (another process) still runs; one on another machine
    cannot be checked and counts as alive."""
    if not isinstance(controller, dict):
        return False
    if controller.get("host") != socket.gethostname():
        return True
    pid, argv, started = controller.get("pid"), controller.get("argv"), controller.get("started")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if started is not None:  # the same process (whatever its command line), not a reused pid
        return _start_time(pid) == started
    running = _cmdline(pid)
    return (
        isinstance(argv, list)
        and len(argv) >= 2
        and len(running) >= len(argv) - 1
        and running[len(running) - len(argv) + 1 :] == argv[1:]
    )


def _refuse_live_controller(sweep_dir: Path, controller: Any) -> None:
    if not isinstance(controller, dict) or controller.get("host") != socket.gethostname():
        return
    pid = controller.get("pid")
    if _alive(controller):
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
