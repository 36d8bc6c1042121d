"""The report of a real sweep that raises (tests/unit/report/test_report.py: the report itself, on
hand-built sweep folders; test_report_browser.py: a finished sweep's report in Chromium)."""

from __future__ import annotations

import json
import re

import pytest

from helpers import run_cli


@pytest.mark.slow
def test_a_sweep_that_raises_still_reports_onto_its_failed_parent_run(tmp_path):
    """Every trial fails its objective check (an unknown metric: only the trial, with its data,
    can tell), the grid sweeper raises: the report is written at exit, lists both errors, and
    is logged onto the parent run marked FAILED."""
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    args = ["-m", "objective=nope1,nope2", "trainer.progress=false", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1 and "SweepFailed" in proc.stderr, proc.stderr[-2000:]
    html = (sweep / "report.html").read_text()
    failed = re.search(r'<section id="failed">(.*?)</section>', html, re.S).group(1)
    assert "unknown metric &#x27;nope1&#x27;" in failed and "&#x27;nope2&#x27;" in failed
    parent = json.loads((sweep / "mlflow_parent_run.json").read_text())
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    assert client.get_run(parent["run_id"]).info.status == "FAILED"
    assert "report.html" in {a.path for a in client.list_artifacts(parent["run_id"])}
