"""A trial's MLflow run across requeues: created once, named in `<output_dir>/mlflow_run.json`,
and reopened by the resumed trial so its loss curve stays one continuous series.

The launcher reads mlflow_run.json ({"run_id", "tracking_uri"}) to mark a trial that Slurm
killed FAILED; keep its name and keys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sweep_sft.config.schema import TrackingConfig
from sweep_sft.names import ENDED_BY_TAG, ERROR_TAG, RESUMES_TAG, RUN_FILE
from sweep_sft.tracking import run_guard
from sweep_sft.tracking.client import delete_tags, http_defaults, retry_until, tracking_uri
from sweep_sft.tracking.runs import Run, existing_run


class ReopenedRun(Run):
    """An existing run set back to RUNNING; metrics at steps it already holds are not re-logged
    (the steps replayed since the checkpoint were logged by the interrupted attempt)."""

    def __init__(
        self, cfg: TrackingConfig, run_id: str, logged: dict[str, int], spill_dir: Path, has_params: bool, resumes: int
    ):
        super().__init__(cfg, None, spill_dir=spill_dir, run_id=run_id, resumes=resumes)
        self._logged = logged  # metric key -> last step already in the run
        self.has_params = has_params

    def finish(self, status: str = "FINISHED") -> None:
        """As Run.finish, after removing a stale guardian's error from the reopened run."""
        if self.open:  # a guardian that ended the run as it was reopened left its error: stale now
            self.delivery.add_op("stale guardian error", lambda _: run_guard.clear_stale_end(self.client, self.run_id))
        super().finish(status)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """As Run.log_metrics, leaving out the points the run already holds."""
        fresh = {k: v for k, v in metrics.items() if step > self._logged.get(k, -1)}
        if fresh:
            super().log_metrics(fresh, step)

    def backfill(self, series: dict[str, list[list[float]]]) -> None:
        """Points the checkpoint holds but the run lacks (the interrupted attempt could not
        deliver them: a server outage before the requeue), sent now in step order."""
        by_step: dict[int, dict[str, float]] = {}
        for key, points in series.items():
            for step, value in points:
                if step > self._logged.get(key, -1):
                    by_step.setdefault(int(step), {})[key] = value
        for step in sorted(by_step):
            self.log_metrics(by_step[step], step)
        for key, points in series.items():
            if points:
                self._logged[key] = max(self._logged.get(key, -1), int(points[-1][0]))


def open_run(
    cfg: TrackingConfig,
    out: Path,
    run_name: str | None,
    parent_run_id: str | None,
    tags: dict[str, str],
    resuming: bool,
) -> tuple[Run, bool]:
    """The trial's run, and whether it is the interrupted attempt's run reopened with its params
    and artifacts already delivered (then they are not logged again)."""
    if cfg.enabled and resuming:
        run = _reopen(cfg, out / RUN_FILE, out)
        if run is not None:
            return run, run.has_params
    run = Run(cfg, run_name, parent_run_id, tags=tags)
    if run.enabled:
        (out / RUN_FILE).write_text(json.dumps({"run_id": run.run_id, "tracking_uri": run.uri}))
    return run, False


def _reopen(cfg: TrackingConfig, path: Path, out: Path) -> ReopenedRun | None:
    from mlflow.tracking import MlflowClient

    if not path.exists():
        print(f"warning: resuming without {path}: the trial gets a new MLflow run", file=sys.stderr)
        return None
    saved = json.loads(path.read_text())
    uri, run_id = saved.get("tracking_uri"), saved.get("run_id")
    if uri != tracking_uri(cfg):
        print(f"warning: {path} names another tracking store ({uri}): the trial gets a new run", file=sys.stderr)
        return None
    http_defaults(uri)
    client = MlflowClient(tracking_uri=uri)

    # An outage is waited out: a new run here would orphan the interrupted one, RUNNING forever.
    previous = existing_run(client, run_id, cfg.outage_timeout_s, uri)
    if previous is None:
        print(f"warning: MLflow run {run_id} no longer exists: the trial gets a new run", file=sys.stderr)
        return None

    resumes = int(previous.data.tags.get(RESUMES_TAG, "0")) + 1

    def reopen() -> dict[str, int]:
        history = {key: client.get_metric_history(run_id, key) for key in previous.data.metrics}
        # The tag first: the dead attempt's guardian may still be ending the run (both of us retrying
        # through an outage); it re-reads the tag right before, and leaves a run whose tag moved.
        client.set_tag(run_id, RESUMES_TAG, str(resumes))
        client.update_run(run_id, status="RUNNING")
        # The dead attempt's error (its launcher's or guardian's) even if `previous` lacked it: a
        # guardian may have ended the run since it was read.
        delete_tags(client, run_id, [ERROR_TAG, ENDED_BY_TAG])
        return {key: max(m.step for m in points) for key, points in history.items() if points}

    logged = retry_until(reopen, cfg.outage_timeout_s, f"reopen MLflow run {run_id}", uri)
    print(f"continuing MLflow run {run_id} (resume {resumes})", file=sys.stderr)
    # Records are delivered asynchronously: an attempt that died early may not have sent its params.
    return ReopenedRun(cfg, run_id, logged, out, has_params=bool(previous.data.params), resumes=resumes)
