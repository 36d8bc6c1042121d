"""Config of our grid sweeper, registered as hydra/sweeper=grid (the default of sweep_sft).

(No `from __future__ import annotations` here: Hydra's plugin scan builds these dataclasses
into configs and needs real types.)"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.sweep_sft_grid.grid_sweeper.GridSweeper"
    # Jobs launched together (one job array on Slurm) when dispatched in batches; null: all of them.
    max_batch_size: int | None = None
    # Jobs running at once through our launchers (local_jobs, the Slurm profiles), the next
    # started the moment one ends; null: max_batch_size (null: all of them).
    max_in_flight: int | None = None
    # auto: job by job through our launchers, in batches through others. async: the same,
    # warning when the launcher can only do batches. batch: Hydra's batches of max_batch_size.
    dispatch: str = "auto"
    # Run again in its folder, the sweep carries over the jobs that finished (same overrides at
    # the same number) and runs the rest; false: every job runs again.
    resume: bool = True
    # The grid in Hydra's override grammar, e.g. lr: 1e-4,1e-3; the command line adds to it.
    params: dict[str, str] | None = None
    # The sweep exits 1 (after writing sweep_summary.json) once more than this share of its
    # jobs failed; otherwise failed trials are listed and the sweep finishes.
    max_failure_rate: float = 0.5


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="sweep_sft")
