"""What a sweeper reads back from its launched jobs (each trial's metrics.json) and writes
onto the sweep's MLflow parent run. Shared by the sandwich and Optuna sweepers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus

from sweep_sft.config.schema import TrackingConfig
from sweep_sft.names import METRICS_FILE
from sweep_sft.tracking.client import TrackingError, read_parent, retry_until

log = logging.getLogger(__name__)


def job_record(job: JobReturn) -> dict[str, Any] | None:
    """The trial's metrics.json (metrics, state, steps), or None for a failed trial."""
    if job.status != JobStatus.COMPLETED or job.hydra_cfg is None:
        return None
    path = job_output_dir(job) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def job_output_dir(job: JobReturn) -> Path:
    """Where the trial wrote: its own output_dir, resolved as it was in the job (a `${hydra:job.num}`
    in it reads that job's Hydra values, not the sweep's unset ones), else Hydra's job folder."""
    with hydra_values(job.hydra_cfg):
        own = job.cfg.get("output_dir") if job.cfg is not None else None
    return Path(own or job.hydra_cfg.hydra.runtime.output_dir)


@contextmanager
def hydra_values(config) -> Iterator[None]:
    """HydraConfig set to one job's config (its `hydra` node), so `${hydra:...}` resolves as in that
    job, and put back as it was after: a sweeper, its launcher and the preflight read jobs'
    configs outside the jobs, where Hydra has set none or the sweep's own."""
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    try:
        hydra_config.cfg = config  # as is: a JobReturn's hydra_cfg, or a job config being checked
        yield
    finally:
        hydra_config.cfg = previous


def job_metrics(job: JobReturn) -> dict[str, float] | None:
    """The trial's final metrics from its metrics.json, or None for a failed trial."""
    record = job_record(job)
    return record["metrics"] if record else None


def job_error(job: JobReturn) -> str | None:
    """The exception a failed job raised, as text (Hydra keeps it in the JobReturn)."""
    if job.status != JobStatus.FAILED:
        return None
    return f"{type(job._return_value).__name__}: {job._return_value}"[:2000]


def job_died(job: JobReturn) -> bool:
    """Whether the job's process died without a result (our launchers return a JobDied for it),
    rather than the task raising. By class name: Hydra's plugin scan imports the launcher's
    module a second time, so its JobDied class is not always the one this process imported."""
    return job.status == JobStatus.FAILED and type(job._return_value).__name__ == "JobDied"


def log_to_parent(
    sweep_dir: str | Path,
    artifact: str,
    result: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str] | None = None,
) -> None:
    """A sweeper's result onto the parent run the sweep callback opened (if tracking is on).

    The result is already in the sweep folder: a tracking server down for longer than the
    default outage timeout costs a warning, not the sweep."""
    parent = read_parent(sweep_dir)
    if not parent:
        return
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    uri, run_id = parent["tracking_uri"], parent["run_id"]
    client = MlflowClient(tracking_uri=uri)
    stamp = int(time.time() * 1000)

    def deliver() -> None:
        client.log_dict(run_id, result, artifact)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    try:
        retry_until(deliver, TrackingConfig.outage_timeout_s, f"log {artifact} onto the parent run", uri)
    except TrackingError as exc:
        log.warning(f"{exc}; the result stays in {Path(sweep_dir) / artifact}")
