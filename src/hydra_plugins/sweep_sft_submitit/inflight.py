"""The launcher's side of the sweep folder's record of jobs in flight (sweep_sft.sweep.inflight):
a job is added when submitted and removed once collected, so that a rerun of a sweep whose
controller was killed knows which jobs to stop. Bookkeeping for a crash: a failure here costs a
warning, never the sweep."""

from __future__ import annotations

import logging
from typing import Any

from sweep_sft.sweep import inflight
from sweep_sft.sweep.inflight import shared_folder

log = logging.getLogger(__name__)


def submitted(launcher: Any, p: Any) -> None:
    """The launcher submitted `p` (a _Pending: its job and Hydra job number)."""
    try:
        folder = str(p.job.paths.folder)
        inflight.add(_sweep_dir(launcher), str(p.job.job_id), launcher._EXECUTOR, p.num, folder, _shared(launcher))
    except Exception as exc:  # noqa: BLE001 - the sweep goes on without the record
        log.warning(f"#{p.num}: could not record job {p.job.job_id} as in flight: {type(exc).__name__}: {exc}")


def collected(launcher: Any, p: Any) -> None:
    """The launcher is done with `p`'s job: its result read, or its death recorded."""
    try:
        inflight.remove(_sweep_dir(launcher), str(p.job.job_id), _shared(launcher))
    except Exception as exc:  # noqa: BLE001 - the sweep goes on without the record
        log.warning(f"#{p.num}: could not record job {p.job.job_id} as collected: {type(exc).__name__}: {exc}")


def _sweep_dir(launcher: Any) -> str:
    return str(launcher.config.hydra.sweep.dir)


def _shared(launcher: Any) -> bool:
    """Several controllers on one study (hydra.sweeper.heartbeat_s): a record per controller."""
    return shared_folder(launcher.config)
