"""Local jobs (hydra/launcher=local_jobs, sweep_sft_local) that say how they ended and do not
outlive the sweep that started them.

submitit's local controller (`python -m submitit.local._local`, one per job, parent of the trial
process) keeps the trial's exit code to itself and exits 0, so a trial killed by a signal reads as
FINISHED; and it is meant to survive the Python session that started it, so a sweep that crashed
left its trials running. Ours (`python -m hydra_plugins.sweep_sft_submitit._local_jobs FOLDER`) is
submitit's with two additions: it writes the tasks' exit codes to `<job id>_exit.json` in the job's
folder, and it stops its tasks (SIGINT, then SIGKILL, as `job.cancel()` does) once the process that
launched it is gone, however that ended: it holds the read end of a pipe whose write end only the
launcher holds, which reads EOF when the launcher exits.

(The leading underscore keeps Hydra's plugin scan from importing this module, and submitit with it,
at every start.)"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from submitit.core import utils
from submitit.local import local

LIFELINE_ENV = "SWEEP_SFT_LAUNCHER_FD"
_LIFELINE: list[int] = []  # this process's pipe: [read end, write end]; the write end is never written
TIMEOUT, CANCELLED, ORPHANED = "timeout", "cancelled", "launcher gone"


def lifeline() -> int:
    """The read end of this process's pipe, passed to each controller it starts."""
    if not _LIFELINE:
        _LIFELINE.extend(os.pipe())  # not inheritable: only the controllers get the read end
    return _LIFELINE[0]


def exit_file(folder: str | Path, job_id: str) -> Path:
    return utils.JobPaths(folder, job_id).folder / f"{job_id}_exit.json"


class LocalExecutor(local.LocalExecutor):
    """submitit's LocalExecutor, starting our controller."""

    def _submit_command(self, command: str) -> local.LocalJob:
        # as submitit 1.5's LocalExecutor._submit_command
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible == () else visible[:n_gpus]
        process = _start_controller(
            self.folder,
            command,
            ntasks,
            ",".join(str(k) for k in gpus),
            self.parameters.get("timeout_min", 2.0),
            self.parameters.get("signal_delay_s", 30),
            self.parameters.get("stderr_to_stdout", False),
            self.parameters.get("setup", ()),
        )
        return local.LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))


def _start_controller(
    folder: Path,
    command: str,
    ntasks: int,
    cuda_devices: str,
    timeout_min: float,
    signal_delay_s: int,
    stderr_to_stdout: bool,
    setup: Any,
) -> subprocess.Popen:
    """submitit's local.start_controller (its environment), running our controller with the lifeline."""
    fd = lifeline()
    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(ntasks),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
        **{LIFELINE_ENV: str(fd)},
    )
    cmd: Any = [sys.executable, "-m", __name__, str(folder)]
    if setup:
        cmd = " && ".join([*setup, shlex.join(cmd)])
    return subprocess.Popen(cmd, shell=bool(setup), env=env, pass_fds=(fd,))


class Controller(local.Controller):
    """submitit's controller, recording its tasks' exit codes and watching its launcher."""

    stopped: str | None = None

    def watch_launcher(self) -> None:
        fd = os.environ.get(LIFELINE_ENV)
        if fd:
            threading.Thread(target=self._wait_for_eof, args=(int(fd),), daemon=True).start()

    def _wait_for_eof(self, fd: int) -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        self.stopped = ORPHANED
        os.kill(os.getpid(), signal.SIGINT)  # as job.cancel(): the main thread stops the tasks

    def wait(self, freq: int = 24):
        codes = super().wait(freq)
        if any(code is None for code in codes):
            self.stopped = TIMEOUT  # submitit's wait returns with tasks running only at the time limit
        return codes

    def kill_tasks(self) -> None:
        tasks = list(self.tasks)
        if self.stopped is None and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            self.stopped = CANCELLED
        super().kill_tasks()
        if tasks:
            record = {"exit_codes": [_exit_code(t) for t in tasks], "stopped": self.stopped}
            path = exit_file(self.folder, self.pid)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)


def _exit_code(task: subprocess.Popen) -> int | None:
    try:
        return task.wait(timeout=5)  # just sent SIGKILL if it still ran
    except subprocess.TimeoutExpired:
        return None


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


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant of it (found by their parent pids in /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except OSError:
            pass


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {__name__} <submitit folder>")
    # a sweep started in the background of a script has SIGINT ignored, which its children
    # inherit: cancelling (SIGINT) must still stop this controller
    signal.signal(signal.SIGINT, signal.default_int_handler)
    controller = Controller(Path(sys.argv[1]))
    controller.watch_launcher()
    try:
        controller.run()
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)  # cancelled: its tasks are stopped; no traceback on the sweep's stderr


if __name__ == "__main__":
    main()
