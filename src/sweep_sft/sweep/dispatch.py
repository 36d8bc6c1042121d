"""Keeping a launcher's slots busy: jobs dispatched one by one as slots free, not in batches.

Hydra's launch() takes a batch and returns when its slowest job ends, so a trial pruned after a
tenth of its steps leaves its slot idle for the rest of the batch. Our launchers (local_jobs and
the Slurm profiles) also submit one job and report the ones that ended without waiting
(`submit`/`poll`/`stop` on hydra_plugins.sweep_sft_submitit.launcher.RetryingLauncher); with them a
sweeper starts its next job the moment one ends. With Optuna's successive-halving or Hyperband
pruner that is asynchronous successive halving (ASHA) across independent jobs. Other launchers
keep Hydra's batches (`hydra.sweeper.dispatch`: auto, async, batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hydra.core.utils import JobReturn
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from sweep_sft.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "async", "batch")
KEY = "hydra.sweeper.dispatch"
METHODS = ("submit", "poll", "stop")


class Job:
    """One job to launch: its overrides, its Hydra job number and what the sweeper keeps with it
    (an Optuna trial). (Not a dataclass: Hydra's plugin scan executes our sweepers' modules
    outside sys.modules, where dataclasses with string annotations fail.)"""

    def __init__(self, overrides: list[str], num: int, payload: Any = None) -> None:
        self.overrides, self.num, self.payload = overrides, num, payload


NextJob = Callable[[], "Job | None"]
OnDone = Callable[[Job, JobReturn], bool]


def queued(jobs: list[Job], validate: Callable[[list[list[str]]], None]) -> NextJob:
    """next_job() for a fixed list of jobs, each validated (the sweeper's validate_batch_is_legal)
    when its turn comes."""
    todo = iter(jobs)

    def next_job() -> Job | None:
        job = next(todo, None)
        if job is not None:
            validate([job.overrides])
        return job

    return next_job


def check_settings(mode: str, slots: int | None, slots_key: str) -> None:
    """A ConfigError naming the key: an unknown dispatch mode, or fewer than one slot."""
    if mode not in MODES:
        raise ConfigError(f"{KEY}: expected one of {', '.join(MODES)}, got {mode!r}")
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
        raise ConfigError(f"{slots_key}: expected an integer >= 1, got {slots!r}")


def can_dispatch(launcher: Any) -> bool:
    """Whether a launcher (or launcher class) can submit one job and poll for ended ones."""
    return all(callable(getattr(launcher, name, None)) for name in METHODS)


def warn_unless_possible(config: DictConfig, mode: str) -> None:
    """One line, before anything runs, when dispatch=async is asked of a launcher that launches
    batches only (the sweep then goes in batches)."""
    if mode != "async":
        return
    target = OmegaConf.select(config, "hydra.launcher._target_")
    try:
        launcher = get_class(target)
    except Exception:  # noqa: BLE001 - Hydra reports an unknown launcher itself
        return
    if not can_dispatch(launcher):
        log.warning(_batch_only(target))


def is_async(launcher: Any, mode: str) -> bool:
    """Whether this sweep dispatches job by job: auto and async do when the launcher can."""
    if mode == "batch":
        return False
    if can_dispatch(launcher):
        return True
    if mode == "async":
        log.warning(_batch_only(f"{type(launcher).__module__}.{type(launcher).__qualname__}"))
    return False


def _batch_only(launcher: str) -> str:
    return (
        f"{KEY}=async: {launcher} launches batches only, so jobs go in batches "
        "(hydra/launcher=local_jobs or a Slurm profile dispatches them one by one)"
    )


def dispatch(launcher: Any, mode: str, slots: int, next_job: NextJob, on_done: OnDone) -> list[list[JobReturn]]:
    """Run jobs with at most `slots` in flight, job by job or in batches (`mode`, launcher).

    `next_job()` gives the next job to start, or None when there is none now; `on_done(job,
    result)` is told each job as it ends and returns False to start no more (the jobs in flight
    are still awaited, so no result is lost). Returns the results as Hydra's sweepers do: one
    list per launch (one list in all when dispatched job by job)."""
    if is_async(launcher, mode):
        return [_one_by_one(launcher, slots, next_job, on_done)]
    return _in_batches(launcher, slots, next_job, on_done)


def _one_by_one(launcher: Any, slots: int, next_job: NextJob, on_done: OnDone) -> list[JobReturn]:
    poll_s = float(getattr(launcher, "poll_s", 1.0))
    flying: dict[int, Job] = {}
    results: list[JobReturn] = []
    starting = True
    try:
        while True:
            while starting and len(flying) < slots and (job := next_job()) is not None:
                launcher.submit(job.overrides, job.num)
                flying[job.num] = job
            if not flying:
                return results
            ended = launcher.poll()
            for num, result in ended:
                results.append(result)
                if not on_done(flying.pop(num), result):
                    starting = False
            if not ended:
                time.sleep(poll_s)
    except BaseException as exc:
        launcher.stop(exc)
        raise


def _in_batches(launcher: Any, slots: int, next_job: NextJob, on_done: OnDone) -> list[list[JobReturn]]:
    returns: list[list[JobReturn]] = []
    while True:
        jobs: list[Job] = []
        while len(jobs) < slots and (job := next_job()) is not None:
            jobs.append(job)
        if not jobs:
            return returns
        go_on = True
        # Hydra numbers a batch's jobs from its first: a gap (finished jobs a resumed sweep skips)
        # starts another launch.
        for run in _consecutive(jobs):
            results = list(launcher.launch([j.overrides for j in run], initial_job_idx=run[0].num))
            returns.append(results)
            for job, result in zip(run, results, strict=True):
                go_on = on_done(job, result) and go_on
        if not go_on:
            return returns


def _consecutive(jobs: list[Job]) -> list[list[Job]]:
    runs: list[list[Job]] = []
    for job in jobs:
        if runs and runs[-1][-1].num + 1 == job.num:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs
