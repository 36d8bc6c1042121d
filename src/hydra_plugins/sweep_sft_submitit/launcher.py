"""hydra-submitit-launcher's Slurm and local launchers, with one change: launch() waits on
each job separately. A job that died without a result (submitit raises from `results()`:
killed by Slurm for memory, time limit, scancel, node failure) is submitted again up to
`retries` times, then returned as a FAILED JobReturn, so the sweeper records a failed trial
and goes on instead of the whole sweep ending. The task's own exception is not retried: Hydra
already returns it as a FAILED JobReturn from inside the job.

Besides Hydra's blocking launch(), a non-blocking path: submit() one job, poll() for the ones that
ended, stop() the rest; our sweepers use it (sweep_sft.sweep.dispatch) to start a job the moment
another ends."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sweep_sft_submitit import inflight
from hydra_plugins.sweep_sft_submitit.dead_jobs import JobDied, failed_return, job_output_dir, tail
from hydra_plugins.sweep_sft_submitit.local_job_state import ended, kill_job, write_trial_file
from sweep_sft.names import JOB_STATE_TAG, RETRIED_TAG, job_id_tag
from sweep_sft.redact import redact
from sweep_sft.sweep.inflight import GONE_TIMEOUT_S, slurm_job_gone
from sweep_sft.tracking.dead_runs import end_dead_trial, is_tracked

log = logging.getLogger(__name__)
# Our keys, read by launch(); not submitit executor parameters.
OWN_KEYS = ("retries", "result_grace_s", "poll_s", "sacct_interval_s")


class _Pending:
    """One submitted job being waited on. (Not a dataclass: Hydra's plugin scan executes this
    module outside sys.modules, where dataclasses with string annotations fail.)"""

    def __init__(self, num: int, overrides: list[str], job: Any, attempt: int) -> None:
        self.num = num  # Hydra job number
        self.overrides = overrides
        self.job = job  # a submitit Job
        self.attempt = attempt  # 1 for the first submission
        self.submitted_ms = int(time.time() * 1000) - 1000  # runs it opened start after this


class _Flight:
    """The jobs a sweep has in flight on one launcher: its executor, the jobs not returned yet (by
    job number) and every attempt submitted."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.pending: dict[int, _Pending] = {}
        self.submitted: list[_Pending] = []
        self.asked = time.monotonic()  # the last scheduler query


class RetryingLauncher(BaseSubmititLauncher):
    """hydra-submitit-launcher's launcher waiting on each job, a dead one resubmitted up to `retries` times."""

    def __init__(self, **params: Any) -> None:
        own = {key: params.pop(key) for key in OWN_KEYS if key in params}
        super().__init__(**params)
        self.retries = int(own.get("retries", 0))
        self.result_grace_s = float(own.get("result_grace_s", 15))
        self.poll_s = float(own.get("poll_s", 1.0))
        self.sacct_interval_s = float(own.get("sacct_interval_s", 15.0))
        if self.retries < 0:
            raise ValueError(f"hydra.launcher.retries: expected an integer >= 0, got {self.retries}")
        self._flight: _Flight | None = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the batch (one array) and wait for every job; a job dead for good becomes a FAILED JobReturn."""
        assert self.config is not None
        assert len(job_overrides) > 0
        flight = self._open_flight()
        params = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info(f"\t#{num} : {redact(' '.join(filter_overrides(overrides)))}")
            params.append(self._job_args(list(overrides), num))
        results: dict[int, JobReturn] = {}
        try:
            jobs = flight.executor.map_array(self, *zip(*params, strict=True))
            for p, job in zip(params, jobs, strict=True):
                self._track(_Pending(p[2], p[0], job, 1))
            while len(results) < len(job_overrides):
                results.update(self.poll())
                if len(results) < len(job_overrides):
                    time.sleep(self.poll_s)
        except BaseException as exc:
            self.stop(exc)
            raise
        return [results[initial_job_idx + i] for i in range(len(job_overrides))]

    # The non-blocking path (sweep_sft.sweep.dispatch): sweepers keep slots busy by submitting one
    # job as soon as another ends, rather than waiting for a batch's slowest.
    def submit(self, overrides: Sequence[str], num: int) -> None:
        """Submit one job (Hydra job number `num`) and return at once; poll() returns its result."""
        flight = self._open_flight()
        log.info(f"\t#{num} : {redact(' '.join(filter_overrides(list(overrides))))}")
        job = flight.executor.submit(self, *self._job_args(list(overrides), num))
        self._track(_Pending(num, list(overrides), job, 1))

    def poll(self) -> list[tuple[int, JobReturn]]:
        """The jobs that ended since the last call, as (job number, JobReturn), without waiting. A job
        that died is submitted again up to `retries` times, then returned FAILED. The scheduler is
        asked once for all jobs, at most every sacct_interval_s."""
        flight = self._flight
        if flight is None or not flight.pending:
            return []
        if time.monotonic() - flight.asked >= self.sacct_interval_s:
            self._refresh(list(flight.pending.values()))
            flight.asked = time.monotonic()
        ended = []
        for p in list(flight.pending.values()):
            if not p.job.done():
                continue
            del flight.pending[p.num]
            outcome = self._collect(p)
            if isinstance(outcome, JobReturn):
                ended.append((p.num, outcome))
                inflight.collected(self, p)
                continue
            self._wait_until_gone(p.job)
            if p.attempt <= self.retries:
                self._end_attempt(p, outcome, "KILLED", retried=True)
                job = flight.executor.submit(self, *self._job_args(p.overrides, p.num))
                log.warning(f"#{p.num}: {outcome}; submitted again as job {job.job_id}")
                self._track(_Pending(p.num, p.overrides, job, p.attempt + 1))
            else:
                log.error(f"#{p.num} failed: {outcome}")
                ended.append((p.num, self._failed_return(p, outcome)))
            inflight.collected(self, p)  # its death recorded (and a retry, if any, submitted)
        return ended

    @property
    def in_flight(self) -> int:
        """How many submitted jobs have not been returned by poll() yet."""
        return len(self._flight.pending) if self._flight is not None else 0

    def stop(self, error: BaseException) -> None:
        """The sweep ends with `error` (e.g. KeyboardInterrupt): what becomes of the jobs still running."""
        if self._flight is not None:
            self._abandon(self._flight.submitted, error)

    def _open_flight(self) -> _Flight:
        if self._flight is None:
            assert self.config is not None
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            self._flight = _Flight(self._executor())
        return self._flight

    def _track(self, p: _Pending) -> None:
        assert self._flight is not None
        self._flight.pending[p.num] = p
        self._flight.submitted.append(p)  # every attempt, so that a launcher that raises can stop them all
        self._submitted(p)

    def __getstate__(self) -> dict[str, Any]:
        # submitit pickles the launcher into every job: the jobs in flight stay with the sweep.
        return {**self.__dict__, "_flight": None}

    def _executor(self):
        """The submitit executor, parameters mapped as hydra-submitit-launcher maps them."""
        import submitit

        init_keys = {"max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}
        init.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys | {"submitit_folder"}
            }
        )
        return executor

    def _submitted(self, p: _Pending) -> None:
        """A job was just submitted: named in the sweep folder's record of jobs in flight."""
        inflight.submitted(self, p)

    def _refresh(self, pending: list[_Pending]) -> None:
        """Ask the scheduler for the jobs' states now (every sacct_interval_s); done() reads them."""

    def _abandon(self, submitted: list[_Pending], error: BaseException) -> None:
        """The launcher raised (e.g. KeyboardInterrupt): what becomes of the jobs still running."""

    def _end_stopped(self, stopped: list[_Pending], error: BaseException) -> None:
        """End the MLflow runs of the jobs the sweep stopped as KILLED, naming why."""
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        for p in stopped:
            died = JobDied(self._EXECUTOR, str(p.job.job_id), "CANCELLED", p.attempt, f"the sweep stopped ({reason})")
            self._end_attempt(p, died, "KILLED", retried=False)
        if stopped:
            ids = ", ".join(str(p.job.job_id) for p in stopped)
            log.error(f"stopped {len(stopped)} {self._EXECUTOR} job(s) still running: {ids}")

    def _ended_state(self, job) -> str:
        """The scheduler's word for how a job without a result ended."""
        raise NotImplementedError

    def _wait_until_gone(self, job) -> None:
        """Return once the dead job's processes are gone (they could still write to MLflow)."""
        raise NotImplementedError

    def _job_args(self, overrides: list[str], num: int) -> tuple:
        # What BaseSubmititLauncher.__call__ takes (and checkpoint() resubmits).
        return (overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())

    def _collect(self, p: _Pending) -> JobReturn | JobDied:
        """The job's JobReturn, or why it has none."""
        p.job._results_timeout_s = self.result_grace_s  # submitit's wait for a late result file
        try:
            return p.job.results()[0]
        except Exception as exc:  # noqa: BLE001 - any error here is the job's death, not the task's
            state = self._ended_state(p.job)
            stderr = tail(p.job.stderr())
            detail = f"stderr tail:\n{stderr}" if stderr else f"{type(exc).__name__}: {tail(str(exc))}"
            return JobDied(self._EXECUTOR, str(p.job.job_id), state, p.attempt, detail)

    def _failed_return(self, p: _Pending, error: JobDied) -> JobReturn:
        """A FAILED JobReturn filled as Hydra's run_job fills one, so sweepers read it alike."""
        assert self.hydra_context is not None and self.config is not None
        ret, config = failed_return(self.hydra_context, self.config, p.overrides, p.num, str(p.job.job_id), error)
        self._end_attempt(p, error, "FAILED", retried=False, config=config)
        return ret

    def _end_attempt(
        self, p: _Pending, error: JobDied, status: str, retried: bool, config: DictConfig | None = None
    ) -> None:
        """End the attempt's MLflow run (sweep_sft apps): KILLED when it runs again, else FAILED."""
        assert self.config is not None
        sweep_dir = str(self.config.hydra.sweep.dir)
        output_dir = job_output_dir(self, p.overrides, p.num, config)
        if not is_tracked(sweep_dir, output_dir):
            return
        tags = {job_id_tag(self._EXECUTOR): str(p.job.job_id), JOB_STATE_TAG: error.state}
        if retried:
            tags[RETRIED_TAG] = f"attempt {p.attempt} of {self.retries + 1}"
        try:
            runs = end_dead_trial(
                sweep_dir,
                output_dir,
                str(error),
                job_num=p.num,
                overrides=p.overrides,
                status=status,
                tags=tags,
                since_ms=p.submitted_ms,
            )
            log.info(f"#{p.num}: MLflow run(s) {', '.join(runs) or '(none)'} ended {status}")
        except Exception as exc:  # noqa: BLE001 - a bookkeeping failure must not end the sweep
            log.warning(f"#{p.num}: could not record the dead job in MLflow: {type(exc).__name__}: {exc}")


class LocalLauncher(RetryingLauncher):
    """Local processes through our controller (_local_jobs): a job's exit state is its trial's
    (exit code or signal), and its processes end with the launcher."""

    _EXECUTOR = "local"
    # beyond stop_grace_s, how long a controller may take to stop its trial (reaped, exit file written)
    STOP_MARGIN_S = 15.0

    def __init__(self, **params: Any) -> None:
        self.stop_grace_s = float(params.pop("stop_grace_s", 10.0))
        if not self.stop_grace_s >= 0:
            raise ValueError(f"hydra.launcher.stop_grace_s: expected a number >= 0, got {self.stop_grace_s}")
        super().__init__(**params)

    def _executor(self):
        # Here, not at the top: _local_jobs subclasses submitit's classes, and Hydra's plugin scan
        # imports this module at every start.
        from hydra_plugins.sweep_sft_submitit import _local_jobs

        executor = super()._executor()
        # submitit's LocalExecutor, as AutoExecutor built it, with our controller
        executor._executor.__class__ = _local_jobs.LocalExecutor
        executor._executor.stop_grace_s = self.stop_grace_s
        return executor

    # _refresh: nothing to ask; a LocalJob's done() polls its process

    def _submitted(self, p: _Pending) -> None:
        """Tell the job's controller where its trial writes: if this process dies, the controller
        ends the run the trial leaves RUNNING."""
        super()._submitted(p)
        try:
            write_trial_file(p.job.paths.folder, str(p.job.job_id), job_output_dir(self, p.overrides, p.num, None))
        except Exception as exc:  # noqa: BLE001 - bookkeeping for a crash; the sweep goes on without it
            log.warning(f"#{p.num}: could not name its folder to job {p.job.job_id}: {type(exc).__name__}: {exc}")

    def _ended_state(self, job) -> str:
        return ended(job)

    def _wait_until_gone(self, job) -> None:
        """Its controller has exited; a controller killed outright left its trial running."""
        kill_job(str(job.job_id))

    def _abandon(self, submitted: list[_Pending], error: BaseException) -> None:
        """Stop the jobs still running (their controllers stop their trials: SIGINT, then SIGKILL
        after stop_grace_s) and end their MLflow runs KILLED, before the exception ends the sweep."""
        live = [p for p in submitted if p.job._process is not None and not _done(p.job)]
        for p in live:
            p.job.cancel(check=False)
        deadline = time.monotonic() + self.stop_grace_s + self.STOP_MARGIN_S
        for p in live:
            try:
                p.job._process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a stuck controller: SIGKILL it and its trial
                pass
            kill_job(str(p.job.job_id))  # also what a controller left (killed, or stuck)
        self._end_stopped(live, error)


def _done(job) -> bool:
    try:
        return job.done()
    except Exception:  # noqa: BLE001 - unknown: try to stop it
        return False


class SlurmLauncher(RetryingLauncher):
    """Slurm jobs (hydra/launcher=sweep_sft_slurm): states from sacct, a dead job awaited until squeue drops it."""

    _EXECUTOR = "slurm"

    def _refresh(self, pending: list[_Pending]) -> None:
        # One sacct for every job: submitit alone asks ever more rarely (up to every 10 min),
        # so a killed job would be noticed late.
        pending[0].job.watcher.update()

    def _ended_state(self, job) -> str:
        try:
            return str(job.get_info().get("State") or job.state)
        except Exception:  # noqa: BLE001 - sacct may be down; the state is for the message only
            return "UNKNOWN"

    def _abandon(self, submitted: list[_Pending], error: BaseException) -> None:
        """Cancel the sweep's jobs that have not ended (Ctrl-C on the sweep stops its trials, as
        with local jobs; a rerun would cancel them anyway), wait until Slurm has killed their
        processes, and end their MLflow runs KILLED."""
        live = [p for p in submitted if not _done(p.job)]
        for p in live:
            try:
                p.job.cancel(check=False)  # scancel
            except Exception as exc:  # noqa: BLE001 - the others are still cancelled
                log.warning(f"could not scancel slurm job {p.job.job_id}: {type(exc).__name__}: {exc}")
        for p in live:
            self._wait_until_gone(p.job)
        self._end_stopped(live, error)

    def _wait_until_gone(self, job, timeout_s: float = GONE_TIMEOUT_S) -> None:
        """sacct says CANCELLED at once, but the job's processes live on until Slurm's KillWait
        ends (submitit ignores the SIGTERM): a trial could still open its MLflow run after we
        looked for it. Wait until squeue no longer lists the job as running or completing."""
        if not slurm_job_gone(str(job.job_id), timeout_s):
            log.warning(f"slurm job {job.job_id} still listed by squeue after {timeout_s:.0f} s; recording it anyway")
