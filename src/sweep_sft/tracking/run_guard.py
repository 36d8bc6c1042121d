"""A guardian that ends a process's MLflow runs when the process dies without ending them.

A SIGKILL, the out-of-memory killer or a crash in native code cannot be caught, so the run a
trial (or a sweep's parent) opened would stay RUNNING for ever, with no end time. The first run a
process opens starts one small child, `python -m sweep_sft.tracking.run_guard`, in its own session (Ctrl-C
and a closed terminal do not reach it) and joined to it by a pipe. The process tells it each run
it opens and each one it ends itself; the child only waits on the pipe, with nothing imported.
EOF on the pipe (or its parent pid changing, when a forked child keeps the pipe open) means the
process is gone: the runs it still holds are ended KILLED with an end time and `sweep_sft.error`
saying the process died. Metric points still buffered in the dead process are lost with it.

A run is ended only while it is still RUNNING and not reopened since (its `sweep_sft.resumes`
tag unchanged): a trial resumed into the same run by a newer process is never touched. MLflow has
no compare-and-set, so the tag is read again right before the run is ended (a reopen bumps it
before it sets RUNNING); a reopen landing in that last call's window leaves the live run KILLED
with the guardian's error (`sweep_sft.ended_by=guardian` marks it) until the attempt finishes and
removes it. The guardian never dies of its own output (a closed terminal: EIO) and one run it
cannot end does not spare the others. Inside a
submitit job no guardian starts: the launcher ends a dead job's runs with its Slurm state
(sweep_sft.tracking.dead_runs), and a preempted job leaves its run RUNNING on purpose for the requeue.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading

from sweep_sft.names import ENDED_BY_TAG, ERROR_TAG, RESUMES_TAG
from sweep_sft.tracking.client import delete_tags, http_defaults, retry_until

# How often the guardian checks that its parent is alive when the pipe stays quiet.
POLL_S = 2.0
# On a run the guardian ended (`sweep_sft.error` is also written by trials and the launcher): a
# reopened attempt recognises the guardian's error as stale by it and by the error's last words.
GUARDIAN = "guardian"
NOTE = "ended by its guardian"

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
        [sys.executable, "-m", "sweep_sft.tracking.run_guard", str(os.getpid())],
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
    """End each run the dead process `pid` left (end_dead_run), noting each on the terminal."""
    for run_id, watched in runs.items():
        try:
            ended = _end(run_id, watched, pid)
        except Exception as exc:  # noqa: BLE001 - one run's store failing must not spare the others
            _say(f"sweep_sft: could not end MLflow run {run_id} of dead process {pid}: {exc}")
            continue
        if ended:
            _say(f"sweep_sft: process {pid} died; MLflow run {run_id} ended KILLED")


def _say(text: str) -> None:
    """A note on the terminal, if it is still there: after a hangup (a dropped SSH session) a write
    fails with EIO, and the runs still to end matter more than the note."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        sys.stderr = open(os.devnull, "w")  # nor a traceback at exit for the text left buffered


def _end(run_id: str, watched: dict, pid: int) -> bool:
    from mlflow.tracking import MlflowClient

    http_defaults(watched["uri"])
    return end_dead_run(MlflowClient(tracking_uri=watched["uri"]), run_id, watched, pid)


def end_dead_run(client, run_id: str, watched: dict, pid: int) -> bool:
    """End the dead process's run KILLED unless it was ended or reopened since; whether it was."""
    uri, timeout_s = watched["uri"], watched["timeout_s"]
    run = retry_until(lambda: client.get_run(run_id), timeout_s, f"read MLflow run {run_id}", uri)
    if not _unclaimed(run, watched):
        return False
    error = (
        f"the process running it (pid {pid} on {socket.gethostname()}) died without ending it "
        f"(killed: SIGKILL, out of memory, or a crash); {NOTE}"
    )

    def end() -> bool:
        client.set_tag(run_id, ERROR_TAG, error)
        client.set_tag(run_id, ENDED_BY_TAG, GUARDIAN)
        # Both of us may have retried through an outage since the read above: a resumed attempt
        # that reopened the run meanwhile has bumped its resumes tag (before setting RUNNING).
        if not _unclaimed(client.get_run(run_id), watched):
            delete_tags(client, run_id, [ERROR_TAG, ENDED_BY_TAG])
            return False
        client.set_terminated(run_id, status="KILLED")
        return True

    return retry_until(end, timeout_s, f"end MLflow run {run_id}", uri)


def _unclaimed(run, watched: dict) -> bool:
    """Still RUNNING and not reopened by another process since the dead one registered it."""
    return run.info.status == "RUNNING" and int(run.data.tags.get(RESUMES_TAG, "0")) == watched["resumes"]


def clear_stale_end(client, run_id: str) -> None:
    """On a reopened run about to end: the error of a dead attempt's guardian that ended it as it
    was reopened (a trial's own error, set since, stays)."""
    tags = client.get_run(run_id).data.tags
    if tags.get(ENDED_BY_TAG) == GUARDIAN:
        delete_tags(client, run_id, [ENDED_BY_TAG] + ([ERROR_TAG] if tags.get(ERROR_TAG, "").endswith(NOTE) else []))


if __name__ == "__main__":
    parent = int(sys.argv[1])
    left = guard(sys.stdin.fileno(), parent)
    if left:
        end_runs(left, parent)
