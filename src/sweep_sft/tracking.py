"""MLflow records: one run per trial (a child of the sweep's parent run), metrics batched.

Uses MlflowClient rather than the fluent API: no process-global active run, so a trial
never logs into another's run, and several trials can share one process (basic launcher).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sweep_sft.config import TrackingConfig

PARENT_FILE = "mlflow_parent_run.json"
FLUSH_EVERY = 200


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another trial created it between our two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, (list, tuple)) else str(tree)}


class Run:
    """An MLflow run with buffered metrics; a no-op when tracking is disabled."""

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str | None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.enabled = cfg.enabled
        self.run_id: str | None = None
        self._buffer: list = []
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id(self.client, cfg.experiment), run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        if len(self._buffer) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.enabled and self._buffer:
            for start in range(0, len(self._buffer), 1000):
                self.client.log_batch(self.run_id, metrics=self._buffer[start : start + 1000])
            self._buffer = []

    def log_json(self, obj: Any, name: str) -> None:
        if self.enabled:
            self.client.log_dict(self.run_id, obj, name)

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, name)

    def set_tag(self, key: str, value: str) -> None:
        if self.enabled:
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.flush()
            self.client.set_terminated(self.run_id, status=status)


def read_parent(sweep_dir: str | Path) -> dict[str, Any]:
    """What the sweep callback left in the sweep folder: parent run id and swept keys."""
    path = Path(sweep_dir) / PARENT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def child_run_name(job_overrides: list[str], swept: list[str]) -> str:
    """The swept part of a job's overrides ("lr=0.001,grad_accum=2"), the rest being common."""
    chosen = [o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(chosen or job_overrides)
