"""Hydra's basic grid sweeper, except that a failed job does not end the sweep: every job is
recorded in `sweep_summary.json` in the sweep folder, a table lists the failed ones, and the
sweep fails (exit 1) only when more than `max_failure_rate` of its jobs failed. `preflight`
composes and validates every job's config before the first is launched (sweep_sft.sweep.preflight)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf

from sweep_sft.config.compose import task_overrides
from sweep_sft.errors import ConfigError
from sweep_sft.names import MULTIRUN_FILE, SUMMARY_FILE
from sweep_sft.sweep.dispatch import Job, check_settings, dispatch, is_async, queued, warn_unless_possible
from sweep_sft.sweep.jobs import log_to_parent
from sweep_sft.sweep.preflight import check_jobs
from sweep_sft.sweep.resume import done_entries, hydra_folders
from sweep_sft.sweep.summary import job_entry, summarize, table, too_many_failed, write

log = logging.getLogger(__name__)


class SweepFailed(RuntimeError):
    """More of the grid's jobs failed than hydra.sweeper.max_failure_rate allows."""


class GridSweeper(BasicSweeper):
    """hydra/sweeper=grid: Hydra's basic grid, each job recorded and a failed one no end of the sweep."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        max_failure_rate: float = 0.5,
        max_in_flight: int | None = None,
        dispatch: str = "auto",
        resume: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        if not 0 <= max_failure_rate <= 1:
            raise ConfigError(f"hydra.sweeper.max_failure_rate: expected a share in [0, 1], got {max_failure_rate}")
        check_settings(dispatch, max_in_flight, "hydra.sweeper.max_in_flight")
        check_settings(dispatch, max_batch_size, "hydra.sweeper.max_batch_size")
        self.max_failure_rate = max_failure_rate
        self.max_in_flight = max_in_flight
        self.dispatch = dispatch
        self.resume = resume

    def preflight(self, config: DictConfig, config_loader) -> None:
        """Compose and validate every job of the grid (sweep_sft.sweep.preflight, before any launch)."""
        warn_unless_possible(config, self.dispatch)
        parser = OverridesParser.create(config_loader=config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *task_overrides(config.hydra)])
        check_jobs(config_loader, config, [job for batch in self.split_arguments(overrides, None) for job in batch])

    def sweep(self, arguments: list[str]) -> Any:
        """Launch the grid (max_in_flight jobs at a time, or batch by batch), writing the summary as
        each job ends; start no more once too many failed."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        n_jobs = len(jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        # Run again in its folder, the sweep carries over the jobs that finished (sweep_sft.sweep.resume).
        folders = hydra_folders(self.config, self.hydra_context.config_loader)
        done = done_entries(sweep_dir, jobs, folders) if self.resume else {}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        entries: list[dict[str, Any]] = list(done.values())
        summary = summarize(entries, n_jobs, self.max_failure_rate)
        write(sweep_dir, summary)
        todo = [Job(list(job), num) for num, job in enumerate(jobs) if num not in done]

        def on_done(job: Job, result: JobReturn) -> bool:
            nonlocal summary
            entries.append(job_entry(job.num, result))
            summary = summarize(entries, n_jobs, self.max_failure_rate)
            write(sweep_dir, summary)
            return not too_many_failed(summary["states"]["FAILED"], n_jobs, self.max_failure_rate)

        asynchronous = is_async(self.launcher, self.dispatch)
        # A Slurm profile's array_parallelism caps the jobs running at once, as it caps an array's.
        cap = (getattr(self.launcher, "params", None) or {}).get("array_parallelism") if asynchronous else None
        in_flight = (self.max_in_flight if asynchronous else None) or self.max_batch_size or cap or n_jobs
        mode = "async" if asynchronous else "batch"
        returns = dispatch(self.launcher, mode, in_flight, queued(todo, self.validate_batch_is_legal), on_done)
        log.info("sweep summary (%s):\n%s", sweep_dir / SUMMARY_FILE, table(summary))
        states = summary["states"]
        log_to_parent(sweep_dir, SUMMARY_FILE, summary, {f"sweep/{k.lower()}": v for k, v in states.items()})
        if summary["too_many_failed"]:
            raise SweepFailed(
                f"{states['FAILED']} of {n_jobs} jobs failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate}; the finished ones are recorded in {sweep_dir / SUMMARY_FILE}. Errors: "
                + "; ".join(f"#{e['number']}: {e['error']}" for e in entries if e["state"] == "FAILED")[:2000]
            )
        return returns
