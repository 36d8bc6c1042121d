"""Local jobs (hydra/launcher=local_jobs, sweep_sft_local) that say how they ended and do not
outlive the sweep that started them.

submitit's local controller (`python -m submitit.local._local`, one per job, parent of the trial
process) keeps the trial's exit code to itself and exits 0, so a trial killed by a signal reads as
FINISHED; and it is meant to survive the Python session that started it, so a sweep that crashed
left its trials running. Ours (`python -m hydra_plugins.sweep_sft_submitit._local_jobs FOLDER`) is
submitit's with these changes: it writes the tasks' exit codes to `<job id>_exit.json` in the job's
folder; it gives its tasks `stop_grace_s` (10 s) from SIGINT to SIGKILL (submitit: 1 s), and a
second SIGINT does not cut that short; it runs in a session of its own (a terminal's Ctrl-C reaches the launcher
alone, and the launcher can kill the job's whole process group); and it stops its tasks once the
process that launched it is gone, however that ended (it holds the read end of a pipe whose write
end only the launcher holds, which reads EOF when the launcher exits), then ends the trial's MLflow
run if the trial left it RUNNING (`<job id>_trial.json`, written by the launcher, names its folder).

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
import time
from pathlib import Path
from typing import Any

from submitit.core import utils
from submitit.local import local

from hydra_plugins.sweep_sft_submitit.local_job_state import (
    CANCELLED,
    ORPHANED,
    TIMEOUT,
    exit_file,
    trial_file,
    write_atomic,
)
from sweep_sft.names import JOB_STATE_TAG, job_id_tag
from sweep_sft.tracking.dead_runs import end_running_trial

LIFELINE_ENV = "SWEEP_SFT_LAUNCHER_FD"
_LIFELINE: list[int] = []  # this process's pipe: [read end, write end]; the write end is never written
GRACE_ENV = "SWEEP_SFT_STOP_GRACE_S"
# Seconds a task has from SIGINT to SIGKILL (hydra.launcher.stop_grace_s): a trial ends its MLflow
# run on SIGINT, which can take seconds (a long torch op, records still being delivered, a busy
# store); submitit gives it 1 s.
STOP_GRACE_S = 10.0


def lifeline() -> int:
    """The read end of this process's pipe, passed to each controller it starts."""
    if not _LIFELINE:
        _LIFELINE.extend(os.pipe())  # not inheritable: only the controllers get the read end
    return _LIFELINE[0]


class LocalExecutor(local.LocalExecutor):
    """submitit's LocalExecutor, starting our controller."""

    stop_grace_s = STOP_GRACE_S  # set by the launcher

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
            self.stop_grace_s,
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
    stop_grace_s: float,
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
        **{LIFELINE_ENV: str(fd), GRACE_ENV: str(stop_grace_s)},
    )
    cmd: Any = [sys.executable, "-m", __name__, str(folder)]
    if setup:
        cmd = " && ".join([*setup, shlex.join(cmd)])
    # A session of its own: a terminal's Ctrl-C reaches the sweep alone, which stops its jobs through
    # their controllers; and the job id (its pid) names the process group of the job's processes,
    # which the launcher kills when the controller itself died.
    return subprocess.Popen(cmd, shell=bool(setup), env=env, pass_fds=(fd,), start_new_session=True)


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
        """As submitit's, noting a return with tasks still running as the time limit's stop."""
        codes = super().wait(freq)
        if any(code is None for code in codes):
            self.stopped = TIMEOUT  # submitit's wait returns with tasks running only at the time limit
        return codes

    def kill_tasks(self) -> None:
        """Stop the tasks (SIGINT, SIGKILL after stop_grace_s) and record their exit codes."""
        if self.stopped is None and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            self.stopped = CANCELLED
        interrupted: list[int] = []
        # a second SIGINT (the launcher's cancel after a Ctrl-C) must not cut the stop short
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
        try:
            tasks = list(self.tasks)
            self._stop(tasks)
            if tasks:
                record = {"exit_codes": [_exit_code(t) for t in tasks], "stopped": self.stopped}
                write_atomic(exit_file(self._job_folder(), self.pid), record)
                if self.stopped == ORPHANED:
                    self._end_trial_run()
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted and self.stopped != CANCELLED:
            raise KeyboardInterrupt  # cancelled while stopping: no requeued attempt starts

    def _job_folder(self) -> Path:
        """This job's own folder (the executor's folder with its `%j` filled in)."""
        return utils.JobPaths(self.folder, self.pid).folder

    def _stop(self, tasks: list[subprocess.Popen]) -> None:
        if any(t.poll() is None for t in tasks):
            self._forward_signal(signal.SIGINT)
            deadline = time.monotonic() + float(os.environ.get(GRACE_ENV, STOP_GRACE_S))
            while any(t.poll() is None for t in tasks) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._forward_signal(signal.SIGKILL)
        self.tasks = []
        files = self.stdouts + self.stderrs
        self.stdouts, self.stderrs = [], []
        for f in files:
            f.close()

    def _end_trial_run(self) -> None:
        """The launcher is gone, so nothing else ends a run the trial left RUNNING (it was
        SIGKILLed, or died of the SIGINT before ending it)."""
        try:
            output_dir = json.loads(trial_file(self._job_folder(), self.pid).read_text())["output_dir"]
        except (OSError, ValueError, KeyError):
            return  # the launcher died before writing it
        error = f"local job {self.pid} stopped: the sweep that launched it was gone (killed)"
        tags = {job_id_tag("local"): self.pid, JOB_STATE_TAG: "CANCELLED (its launcher was gone)"}
        try:
            run_id = end_running_trial(output_dir, error, tags)
        except Exception as exc:  # noqa: BLE001 - the store may be down; nothing else to do here
            print(f"sweep_sft: could not end the MLflow run in {output_dir}: {exc}", file=sys.stderr)
            return
        if run_id:
            print(f"sweep_sft: MLflow run {run_id} of local job {self.pid} ended KILLED", file=sys.stderr)


def _exit_code(task: subprocess.Popen) -> int | None:
    try:
        return task.wait(timeout=5)  # just sent SIGKILL if it still ran
    except subprocess.TimeoutExpired:
        return None


def main() -> None:
    """`python -m hydra_plugins.sweep_sft_submitit._local_jobs FOLDER`: one local job's controller."""
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
