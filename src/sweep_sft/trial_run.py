"""A trial's MLflow run across requeues: created once, named in `<output_dir>/mlflow_run.json`,
and reopened by the resumed trial so its loss curve stays one continuous series.

The launcher reads mlflow_run.json ({"run_id", "tracking_uri"}) to mark a trial that Slurm
killed FAILED; keep its name and keys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sweep_sft.config import TrackingConfig
from sweep_sft.tracking import Run, tracking_uri

RUN_FILE = "mlflow_run.json"
RESUMES_TAG = "sweep_sft.resumes"


class ReopenedRun(Run):
    """An existing run set back to RUNNING; metrics at steps it already holds are not re-logged
    (the steps replayed since the checkpoint were logged by the interrupted attempt)."""

    def __init__(self, cfg: TrackingConfig, run_id: str, logged: dict[str, int], spill_dir: Path):
        super().__init__(cfg, None, spill_dir=spill_dir, run_id=run_id)
        self._logged = logged  # metric key -> last step already in the run

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self._logged.get(k, -1)}
        if fresh:
            super().log_metrics(fresh, step)


def open_run(
    cfg: TrackingConfig,
    out: Path,
    run_name: str | None,
    parent_run_id: str | None,
    tags: dict[str, str],
    resuming: bool,
) -> tuple[Run, bool]:
    """The trial's run and whether it is the interrupted attempt's run, reopened."""
    if cfg.enabled and resuming:
        run = _reopen(cfg, out / RUN_FILE, out)
        if run is not None:
            return run, True
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
    if saved.get("tracking_uri") != tracking_uri(cfg):
        print(
            f"warning: {path} names another tracking store ({saved.get('tracking_uri')}): the trial gets a new run",
            file=sys.stderr,
        )
        return None
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    try:
        previous = client.get_run(saved["run_id"])
    except Exception as exc:  # deleted or never committed: start a new run rather than fail the trial
        print(f"warning: cannot reopen MLflow run {saved['run_id']} ({exc}): the trial gets a new run", file=sys.stderr)
        return None
    if previous.info.lifecycle_stage == "deleted":
        return None
    history = {key: client.get_metric_history(saved["run_id"], key) for key in previous.data.metrics}
    logged = {key: max(m.step for m in points) for key, points in history.items() if points}
    client.update_run(saved["run_id"], status="RUNNING")
    resumes = int(previous.data.tags.get(RESUMES_TAG, "0")) + 1
    client.set_tag(saved["run_id"], RESUMES_TAG, str(resumes))
    print(f"continuing MLflow run {saved['run_id']} (resume {resumes})", file=sys.stderr)
    return ReopenedRun(cfg, saved["run_id"], logged, out)
