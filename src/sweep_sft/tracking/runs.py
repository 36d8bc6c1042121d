"""MLflow records: one run per trial (a child of the sweep's parent run), delivered in batches
from a background thread that rides out server outages (sweep_sft.tracking.delivery).

Uses MlflowClient rather than the fluent API: no process-global active run, so a trial
never logs into another's run, and several trials can share one process (basic launcher).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sweep_sft.config.schema import TrackingConfig
from sweep_sft.names import ENDED_BY_TAG, ERROR_TAG, OUTPUT_DIR_TAG, RESUMES_TAG, SWEEP_DIR_TAG, UNDELIVERED_FILE
from sweep_sft.tracking import run_guard
from sweep_sft.tracking.client import (
    TrackingError,
    delete_tags,
    http_defaults,
    retry_until,
    run_experiment,
    tracking_uri,
)
from sweep_sft.tracking.delivery import Delivery

log = logging.getLogger(__name__)


class Run:
    """An MLflow run whose records are delivered asynchronously; a no-op when tracking is disabled.

    Nothing logged is lost silently: `finish` waits for delivery (up to tracking.outage_timeout_s
    without progress), and otherwise writes what is left to `spill_dir`/mlflow_undelivered.json
    and raises TrackingError naming the server.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str | None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        spill_dir: str | Path | None = None,
        run_id: str | None = None,
        resumes: int = 0,
    ):
        """A new run, or with `run_id` an existing one continued (a resumed trial's, its
        `resumes`-th resume: the guardian leaves the run alone once a later attempt took it on)."""
        self.enabled = cfg.enabled
        self.run_id: str | None = None
        self.delivery = None
        if not self.enabled:
            return
        self.uri = tracking_uri(cfg)
        http_defaults(self.uri)
        from mlflow.tracking import MlflowClient

        self.timeout_s = cfg.outage_timeout_s
        self.client = MlflowClient(tracking_uri=self.uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.spill_dir = Path(spill_dir or all_tags.get(OUTPUT_DIR_TAG) or all_tags.get(SWEEP_DIR_TAG) or ".")

        def create():
            experiment = run_experiment(self.client, cfg.experiment)
            return self.client.create_run(experiment, run_name=run_name, tags=all_tags)

        self.run_id = run_id or retry_until(create, self.timeout_s, "create the MLflow run", self.uri).info.run_id
        self.delivery = Delivery(self.client, self.run_id, self.uri, cfg.max_buffered_points)
        # A process killed outright (SIGKILL, out of memory) cannot end its run: the guardian does.
        run_guard.watch(self.uri, self.run_id, resumes, self.timeout_s)

    @property
    def open(self) -> bool:
        """Enabled and not finished: a finished run ignores what comes after (a trial's error
        handler tagging a run whose finish failed)."""
        return self.enabled and self.delivery is not None

    def log_params(self, params: dict[str, str]) -> None:
        """The params queued for delivery, in batches of MLflow's 100 at most (values cut to 6000 chars)."""
        if not self.open:
            return
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            chunk = items[start : start + 100]
            self.delivery.add_op(
                f"params {chunk[0].key}..{chunk[-1].key}",
                lambda chunk: self.client.log_batch(self.run_id, params=chunk),
                chunk,
            )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metric points at `step` buffered for delivery; waits while the buffer is full (an outage)."""
        if not self.open:
            return
        from mlflow.entities import Metric

        # Stamped now, never again: a re-sent point is then identical and the store keeps one.
        stamp = int(time.time() * 1000)
        try:
            self.delivery.add_points([Metric(k, float(v), stamp, step) for k, v in metrics.items()], self.timeout_s)
        except TimeoutError as exc:
            raise TrackingError(f"tracking.uri {self.uri}: server unreachable and {exc}") from exc

    def flush(self) -> bool:
        """Deliver what was logged so far; False if the server is down (it stays buffered)."""
        return not self.open or self.delivery.drain(0.0)

    def log_json(self, obj: Any, name: str) -> None:
        """`obj` queued as the JSON artifact `name`."""
        if self.open:
            self.delivery.add_op(f"artifact {name}", lambda obj: self.client.log_dict(self.run_id, obj, name), obj)

    def log_text(self, text: str, name: str) -> None:
        """`text` queued as the artifact `name`."""
        if self.open:
            self.delivery.add_op(f"artifact {name}", lambda text: self.client.log_text(self.run_id, text, name), text)

    def log_artifacts(self, folder: str | Path, name: str) -> None:
        """The files of `folder` queued as the artifact folder `name` (read when sent)."""
        if self.open:
            folder = str(folder)
            self.delivery.add_op(
                f"artifacts {name}", lambda f: self.client.log_artifacts(self.run_id, f, artifact_path=name), folder
            )

    def set_tag(self, key: str, value: str) -> None:
        """The tag queued for delivery."""
        if self.open:
            self.delivery.add_op(f"tag {key}", lambda value: self.client.set_tag(self.run_id, key, value), value)

    def finish(self, status: str = "FINISHED") -> None:
        """Deliver everything, then mark the run `status`; on a lasting outage, spill and raise."""
        if not self.open:
            return
        delivery, self.delivery = self.delivery, None
        try:
            delivered = delivery.drain(self.timeout_s)
            if delivered:
                delivery.add_op(
                    "run status", lambda status: self.client.set_terminated(self.run_id, status=status), status
                )
                delivered = delivery.drain(self.timeout_s)
        except BaseException:  # interrupted while waiting (Ctrl-C, Slurm's signal): keep what is left
            delivery.stop()
            self._spill(delivery, status)
            raise
        delivery.stop()
        # Ended, or its undelivered records (status included) are in the spill file for replay.
        # Interrupted above, it stays guarded: ended KILLED when this process is gone.
        run_guard.release(self.run_id)
        rejected = delivery.rejected()
        if delivered and not rejected:
            return
        path = self._spill(delivery, status)
        reason = (
            f"the server was unreachable for tracking.outage_timeout_s={self.timeout_s:g} s ({delivery.last_error})"
            if not delivered
            else f"the server refused {len(rejected)} record(s): {rejected[0][1]}"
        )
        raise TrackingError(
            f"tracking.uri {self.uri}: run {self.run_id} is incomplete: {reason}; undelivered records saved to {path}"
        )

    def detach(self) -> None:
        """Deliver everything and let go of the run, leaving it RUNNING for another process that
        holds it too (the other controllers of a shared study: the last one ends it)."""
        if not self.open:
            return
        delivery, self.delivery = self.delivery, None
        delivered = delivery.drain(self.timeout_s)
        delivery.stop()
        if delivered:  # this process's guardian must not end it when this process is gone
            run_guard.release(self.run_id)

    def _spill(self, delivery, status: str) -> Path:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / UNDELIVERED_FILE
        left = delivery.undelivered()
        path.write_text(
            json.dumps(
                {
                    "tracking_uri": self.uri,
                    "run_id": self.run_id,
                    "status": status,
                    "error": delivery.last_error,
                    **left,
                },
                indent=1,
                default=str,
            )
        )
        log.error(
            "MLflow: %d metric points and %d records not delivered to %s; saved to %s",
            len(left["metrics"]),
            len(left["records"]),
            self.uri,
            path,
        )
        return path.resolve()


def existing_run(client, run_id: str, timeout_s: float, uri: str):
    """The run, or None when it is gone from the store (deleted, or never there); an outage is
    waited out (up to `timeout_s`), not taken for a missing run."""
    from mlflow.exceptions import MlflowException

    def get():
        try:
            return client.get_run(run_id)
        except MlflowException as exc:  # gone from the store (not an outage: that is retried)
            if exc.get_http_status_code() == 404 or "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
                return None
            raise

    run = retry_until(get, timeout_s, f"read MLflow run {run_id}", uri)
    return None if run is None or run.info.lifecycle_stage == "deleted" else run


def reopen(cfg: TrackingConfig, run_id: str, spill_dir: str | Path) -> Run | None:
    """The run `run_id` of the store `cfg` names set RUNNING again and continued (a sweep's parent
    run, when the sweep runs again in its folder), its resumes tag counting the reopenings and a
    dead process's error removed; None when the run is not in this store and experiment."""
    if not cfg.enabled:
        return None
    uri = tracking_uri(cfg)
    http_defaults(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    previous = existing_run(client, run_id, cfg.outage_timeout_s, uri)
    if previous is None:
        return None
    experiment = retry_until(lambda: run_experiment(client, cfg.experiment), cfg.outage_timeout_s, "find it", uri)
    if previous.info.experiment_id != experiment:
        return None
    resumes = int(previous.data.tags.get(RESUMES_TAG, "0")) + 1

    def claim() -> None:
        # The tag first: the dead process's guardian, still ending the run, leaves a run whose tag moved.
        client.set_tag(run_id, RESUMES_TAG, str(resumes))
        client.update_run(run_id, status="RUNNING")
        delete_tags(client, run_id, [ERROR_TAG, ENDED_BY_TAG])

    retry_until(claim, cfg.outage_timeout_s, f"reopen MLflow run {run_id}", uri)
    return Run(cfg, None, spill_dir=spill_dir, run_id=run_id, resumes=resumes)


def replay(path: str | Path, uri: str | None = None) -> int:
    """Deliver what a run could not (its mlflow_undelivered.json) once the server is back, to
    the same run; points already stored are not duplicated (same timestamps). Returns the
    number of metric points sent."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    left = json.loads(Path(path).read_text())
    client, run_id = MlflowClient(tracking_uri=uri or left["tracking_uri"]), left["run_id"]
    points = [Metric(key, value, stamp, step) for key, value, stamp, step in left["metrics"]]
    for start in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[start : start + 1000])
    for record in left["records"]:
        kind, name = record["what"].split(" ", 1)
        payload = record["payload"]
        if kind == "params":
            client.log_batch(run_id, params=[Param(k, v) for k, v in payload.items()])
        elif kind == "tag":
            client.set_tag(run_id, name, payload)
        elif kind == "artifacts":  # a folder (the model): it must still be there
            client.log_artifacts(run_id, payload, artifact_path=name)
        elif kind == "artifact":
            (client.log_text if isinstance(payload, str) else client.log_dict)(run_id, payload, name)
    client.set_terminated(run_id, status=left["status"])
    return len(points)
