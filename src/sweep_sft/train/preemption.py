"""Preemption and time limits inside a submitit (Slurm) job: checkpoint at a step boundary.

submitit installs a handler for its USR signal that calls the submitted callable's
`checkpoint()`, requeues the job and exits, wherever the main thread happens to be; a
checkpoint taken there could catch the optimizer mid-step. While a trial trains, our handler
only raises a flag; the loop checks it after each optimizer step, writes a checkpoint, then
calls submitit's own handler, which requeues (or refuses to: too many time-outs) and exits.

With several ranks, submitit's handler requeues on rank 0 only and returns on the others (it
must not kill the job's main task); there we exit ourselves, after the checkpoint (the ranks
agree on the step, see train/checkpoint.py), so every rank leaves at the same boundary.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def submitit_signal() -> signal.Signals | None:
    """The signal submitit checkpoints on, when this process is a submitit job."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return None
    from submitit import JobEnvironment

    return getattr(signal, "SIG" + JobEnvironment.USR_SIG, None)


class Preemption:
    """A context manager that defers submitit's requeue signal to the next step boundary."""

    def __init__(self) -> None:
        self.signum: signal.Signals | None = None
        self.requested = False
        # Set just before submitit's handler runs: the exit that follows is a requeue, not a failure.
        self.handed_over = False
        self._original = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread; submitit runs jobs there
        signum = submitit_signal()
        original = signal.getsignal(signum) if signum is not None else None
        if callable(original):  # submitit's handler is in place: take it over
            self.signum, self._original = signum, original
            signal.signal(signum, self._flag)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
        if self.requested and not self.handed_over and exc[0] is None:
            # Signalled after the last step boundary: the trial is finishing; let it finish.
            print("preemption signal came after training ended: finishing the trial", file=sys.stderr)

    @property
    def active(self) -> bool:
        """Whether the signal is deferred to step boundaries (a submitit job, main thread)."""
        return self.signum is not None

    def _flag(self, signum, frame) -> None:
        self.requested = True
        print(f"caught {signal.Signals(signum).name}: checkpointing at the next optimizer step", file=sys.stderr)

    def release(self) -> None:
        """Give the signal back to submitit (a trial that cannot checkpoint): it requeues at once."""
        self._restore()
        self.signum = None

    def _restore(self) -> None:
        if self.signum is not None:
            signal.signal(self.signum, self._original)

    def hand_over(self) -> None:
        """After the checkpoint: submitit's handler requeues the job and exits the process."""
        self.handed_over = True
        self._restore()
        try:
            self._original(self.signum, None)
        except Exception as exc:  # submitit refused to requeue (e.g. time limit, max_num_timeout=0)
            print(
                f"submitit did not requeue ({exc}); the checkpoint stays: rerun the trial into the same output "
                "folder (trainer.resume=auto) or raise hydra.launcher.max_num_timeout to requeue after time limits",
                file=sys.stderr,
            )
            raise
        # Returned: a rank other than 0, which submitit leaves running; rank 0 requeues the job.
        print("checkpoint written by rank 0: this rank exits for the requeue", file=sys.stderr)
        raise SystemExit(0)
