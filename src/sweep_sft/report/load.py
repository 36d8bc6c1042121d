"""The sweep a report is made of: a sweep folder, or the MLflow parent run of one."""

from __future__ import annotations

import re
from pathlib import Path

from sweep_sft.report.data import ReportInputError, Sweep, load_sweep_dir
from sweep_sft.report.from_mlflow import load_parent_run
from sweep_sft.tracking.client import default_uri


def load(target: str, tracking_uri: str | None = None) -> Sweep:
    """A sweep folder, or (when `target` is no folder) an MLflow parent run id."""
    path = Path(target)
    if path.exists():
        return load_sweep_dir(path)
    if re.fullmatch(r"[0-9a-f]{32}", target):
        return load_parent_run(target, tracking_uri or default_uri())
    raise ReportInputError(
        f"{target}: neither a folder nor an MLflow run id (expected a sweep folder or the sweep's parent run id)"
    )
