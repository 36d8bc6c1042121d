"""What a local job's controller (_local_jobs) and its launcher share, without submitit: the files in
the job's folder (`<job id>_exit.json`, how its tasks ended; `<job id>_trial.json`, where its trial
writes), how a job that left no result ended, and stopping what is left of one."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from sweep_sft.sweep.inflight import kill_group as kill_job  # noqa: F401 - the launcher's name for it

# Why a controller stopped its tasks, in its exit file.
TIMEOUT, CANCELLED, ORPHANED = "timeout", "cancelled", "launcher gone"


def exit_file(job_folder: str | Path, job_id: str) -> Path:
    """The controller's record of its tasks' exit codes, in the job's own folder (submitit's job.paths.folder)."""
    return Path(job_folder) / f"{job_id}_exit.json"


def trial_file(job_folder: str | Path, job_id: str) -> Path:
    """`{"output_dir"}` of the job's trial, written by the launcher once it has the job id: the
    controller of an orphaned job ends the trial's MLflow run from it."""
    return Path(job_folder) / f"{job_id}_trial.json"


def write_trial_file(job_folder: str | Path, job_id: str, output_dir: str) -> None:
    """Name the trial's output folder to the job's controller (trial_file)."""
    path = trial_file(job_folder, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, {"output_dir": output_dir})


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """`record` as JSON at `path`, never seen half written (the other process may read it at any time)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def ended(job: Any) -> str:
    """How a local job that left no result ended, for its error and the sweep_sft.job_state tag."""
    try:
        record = json.loads(exit_file(job.paths.folder, str(job.job_id)).read_text())
    except (OSError, ValueError):
        record = None
    code = job._process.poll() if getattr(job, "_process", None) is not None else None
    if record is None:
        # no record: the controller itself died (or predates this module)
        return f"{_signalled(-code)} (its controller)" if code is not None and code < 0 else "UNKNOWN"
    if record["stopped"] == TIMEOUT:
        return "TIMEOUT (stopped at hydra.launcher.timeout_min)"
    if record["stopped"] == CANCELLED:
        return "CANCELLED"
    if record["stopped"] == ORPHANED:
        return "CANCELLED (its launcher was gone)"
    codes = [c for c in record["exit_codes"] if c]
    if not codes:
        return "COMPLETED (exit code 0)"
    return _signalled(-codes[0]) if codes[0] < 0 else f"FAILED (exit code {codes[0]})"


def _signalled(number: int) -> str:
    try:
        return f"KILLED by {signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"KILLED by signal {number}"
