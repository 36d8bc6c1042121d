"""A real two-trial sweep opened as a user would: `mlflow ui` over the store it wrote, rendered in
headless Chromium (`make browser`). Checked from the rendered page, not the REST API: the
experiment opens as a training experiment, the parent run's page lists its children and its
description, and the compare view of the two children shows their lr and val/loss. Screenshots
stay in the test's temporary folder."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import run_cli
from integration.report.test_report_browser import _chromium, chromium  # noqa: F401 (a fixture)
from servers import free_port
from sweep_sft.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, KIND_TAG, NOTE_TAG

pytestmark = pytest.mark.slow
LRS = ("0.0001", "0.003")
LR = "optimizer.lr"  # what lr= sets, a param of every trial


@pytest.fixture
def swept_store(tmp_path, tracked_overrides):
    """The store of a finished 2-trial lr sweep of the real trial: (uri, experiment, parent, children)."""
    args = ["-m", f"lr={','.join(LRS)}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *tracked_overrides]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sweep-sft")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(KIND_TAG) == "sweep")
    children = sorted((r for r in runs if r is not parent), key=lambda r: float(r.data.params[LR]))
    return uri, experiment, parent, children


@pytest.fixture
def mlflow_ui(tmp_path, swept_store):
    """The base URL of `mlflow ui` (as `make mlflow-ui` starts it) over the sweep's store."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", swept_store[0]]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _page_text(browser: str, tmp_path, url: str, shot: str | None = None) -> str:
    """The text of the page at `url` once its scripts ran (a screenshot of it too, if named)."""
    args = ["--virtual-time-budget=25000", "--window-size=1600,1400"]
    dom = _chromium(browser, tmp_path, "--dump-dom", *args, url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if shot:
        done = _chromium(browser, tmp_path, f"--screenshot={tmp_path / shot}", *args, url)
        assert done.returncode == 0 and (tmp_path / shot).stat().st_size > 10_000, done.stderr[-2000:]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))


def test_the_mlflow_ui_shows_the_sweep_its_children_and_their_comparison(
    tmp_path,
    swept_store,
    mlflow_ui,
    chromium,  # noqa: F811
):
    _, experiment, parent, children = swept_store
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert [c.data.params[LR] for c in children] == list(LRS)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.metrics["all/val_loss"] == child.data.metrics["val/loss"]
        assert "```" in child.data.tags[NOTE_TAG] and "task_type" in child.data.tags[NOTE_TAG]
    exp = experiment.experiment_id

    runs_page = _page_text(chromium, tmp_path, f"{mlflow_ui}/#/experiments/{exp}/runs", "runs.png")
    assert parent.info.run_name in runs_page, runs_page[:3000]
    assert "Detect Issues" not in runs_page and "No data available" not in runs_page  # not the GenAI overview

    parent_url = f"{mlflow_ui}/#/experiments/{exp}/runs/{parent.info.run_id}"
    parent_page = _page_text(chromium, tmp_path, parent_url, "parent.png")
    for child in children:
        assert child.info.run_name in parent_page, parent_page[:3000]
    assert "Best trial:" in parent_page and "report.html" in parent_page, parent_page[:3000]

    ids = ",".join(f'"{c.info.run_id}"' for c in children)
    compare = f'{mlflow_ui}/#/compare-runs?runs=[{ids}]&experiments=["{exp}"]'
    page = _page_text(chromium, tmp_path, compare, "compare.png")
    assert LR in page and "val/loss" in page and "all/val_loss" in page, page[:3000]
    for child in children:
        assert child.info.run_name in page
        assert f"{child.data.metrics['val/loss']:.4g}"[:5] in page, (child.data.metrics["val/loss"], page[:3000])
