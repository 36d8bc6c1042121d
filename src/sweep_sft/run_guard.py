"""A guardian that ends a process's MLflow runs when the process dies without ending them.

A SIGKILL, the out-of-memory killer or a crash in native code cannot be caught, so the run a
trial (or a sweep's parent) opened would stay RUNNING for ever, with no end time. The first run a
process opens starts one small child, `python -m sweep_sft.run_guard`, in its own session (Ctrl-C
and a closed terminal do not reach it) and joined to it by a pipe. The process tells it each run
it opens and each one it ends itself; the child only waits on the pipe, with nothing imported.
EOF on the pipe (or its parent pid changing, when a forked child keeps the pipe open) means the
process is gone: the runs it still holds are ended KILLED with an end time and `sweep_sft.error`
saying the process died. Metric points still buffered in the dead process are lost with it.

A run is ended only while it is still RUNNING and not reopened since (its `sweep_sft.resumes`
tag unchanged): a trial resumed into the same run by a newer process is never touched. Inside a
submitit job no guardian starts: the launcher ends a dead job's runs with its Slurm state
(sweep_sft.failed_trial), and a preempted job leaves its run RUNNING on purpose for the requeue.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading

# How often the guardian checks that its parent is alive when the pipe stays quiet.
POLL_S = 2.0

_lock = threading.Lock()
_guardian: tuple[int, subprocess.Popen] | None = None  # (the pid that started it, the child)


def enabled() -> bool:
    """No guardian inside a submitit job: the launcher owns a dead job's runs there."""
    return "SUBMITIT_FOLDER" not in os.environ


def watch(uri: str, run_id: str, resumes: int, timeout_s: float) -> None:
    """From now until `release(run_id)`, the run is ended if this process dies."""
    if enabled():
        _send({"watch": run_id, "uri": uri, "resumes": resumes, "timeout_s": timeout_s}, start=True)


def release(run_id: str) -> None:
    """This process ended the run itself (or handed it on): the guardian forgets it."""
    _send({"release": run_id}, start=False)


def _send(message: dict, start: bool) -> None:
    global _guardian
    with _lock:
        if _guardian is not None and _guardian[0] != os.getpid():  # inherited through fork: not ours
            _guardian = None
        if _guardian is None and not start:
            return
        try:
            if _guardian is None:
                _guardian = (os.getpid(), _spawn())
            _guardian[1].stdin.write((json.dumps(message) + "\n").encode())
            _guardian[1].stdin.flush()
        except OSError as exc:  # no guardian (gone, or none could start): the run is recorded, only unguarded
            print(
                f"warning: MLflow run guardian unavailable ({exc}); a killed process leaves its run RUNNING",
                file=sys.stderr,
            )
            _guardian = None


def _spawn() -> subprocess.Popen:
    # Same interpreter, environment and working directory: it imports this package as we did.
    return subprocess.Popen(
        [sys.executable, "-m", "sweep_sft.run_guard", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        # Its note on a terminal; never a pipe, which it would keep open (and a reader waiting) past our exit.
        stderr=None if os.isatty(2) else subprocess.DEVNULL,
        start_new_session=True,
    )


# The guardian's side.


def guard(fd: int, parent: int) -> dict[str, dict]:
    """Read watch/release messages from `fd` until the parent is gone; the runs left to end."""
    runs: dict[str, dict] = {}
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if not ready:
            if os.getppid() != parent:
                return runs
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return runs
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "watch" in message:
                runs[message["watch"]] = message
            else:
                runs.pop(message["release"], None)


def end_runs(runs: dict[str, dict], pid: int) -> None:
    for run_id, watched in runs.items():
        try:
            if _end(run_id, watched, pid):
                print(f"sweep_sft: process {pid} died; MLflow run {run_id} ended KILLED", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one run's store failing must not spare the others
            print(f"sweep_sft: could not end MLflow run {run_id} of dead process {pid}: {exc}", file=sys.stderr)


def _end(run_id: str, watched: dict, pid: int) -> bool:
    import socket

    from mlflow.tracking import MlflowClient

    from sweep_sft.tracking import ERROR_TAG, http_defaults, retry_until
    from sweep_sft.trial_run import RESUMES_TAG

    uri, timeout_s = watched["uri"], watched["timeout_s"]
    http_defaults(uri)
    client = MlflowClient(tracking_uri=uri)
    run = retry_until(lambda: client.get_run(run_id), timeout_s, f"read MLflow run {run_id}", uri)
    resumes = int(run.data.tags.get(RESUMES_TAG, "0"))
    if run.info.status != "RUNNING" or resumes != watched["resumes"]:  # ended, or continued by another process
        return False
    error = (
        f"the process running it (pid {pid} on {socket.gethostname()}) died without ending it "
        "(killed: SIGKILL, out of memory, or a crash); ended by its guardian"
    )

    def end() -> None:
        client.set_tag(run_id, ERROR_TAG, error)
        client.set_terminated(run_id, status="KILLED")

    retry_until(end, timeout_s, f"end MLflow run {run_id}", uri)
    return True


if __name__ == "__main__":
    parent = int(sys.argv[1])
    left = guard(sys.stdin.fileno(), parent)
    if left:
        end_runs(left, parent)
