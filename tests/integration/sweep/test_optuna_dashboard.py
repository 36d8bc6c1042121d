"""`make optuna-dashboard` on a real optuna5 sweep (tests/apps/synthetic_curve.py): the
dashboard serves the sweep folder's study, and headless Chromium renders its name and trials."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest

from integration.report.test_report_browser import _chromium, chromium  # noqa: F401 (a fixture)
from sweep_sft.sweep.dashboard import open_dashboard_storage

pytestmark = [pytest.mark.slow, pytest.mark.sweep_app("synthetic_curve.py", "optuna5")]
N_TRIALS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited {proc.returncode}: {proc.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the dashboard did not listen on {port} within {seconds} s")


@pytest.fixture
def dashboard(tmp_path, sweep):
    """(port, optuna_result) of a dashboard serving a finished 3-trial sweep's folder."""
    proc = sweep(
        "x=tag(log,interval(1e-6,1e-1))", f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.study_name=dash"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = _free_port()
    cmd = [sys.executable, "-m", "sweep_sft.sweep.dashboard", str(tmp_path / "sweep"), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_port(port, server)
        yield port, json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())
    finally:
        server.terminate()
        server.wait(timeout=30)


def _render(browser: str, tmp_path, url: str) -> str:
    dom = _chromium(browser, tmp_path, "--dump-dom", "--virtual-time-budget=15000", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))  # the page's text


def test_the_dashboard_renders_the_sweeps_study_and_trials(tmp_path, dashboard, chromium):  # noqa: F811
    port, result = dashboard
    assert result["study_name"] == "dash" and result["states"] == {"COMPLETE": N_TRIALS}
    study_id = open_dashboard_storage(result["storage"]).get_study_id_from_name("dash")
    base = f"http://127.0.0.1:{port}/dashboard"
    assert f"{study_id}. dash Direction: MINIMIZE" in _render(chromium, tmp_path, base)
    page = _render(chromium, tmp_path, f"{base}/studies/{study_id}")
    best = result["best"]
    assert f"dash (id={study_id})" in page and f"Best Trial (number={best['number']})" in page, page[:3000]
    trials = _render(chromium, tmp_path, f"{base}/studies/{study_id}/trials")
    assert f"{N_TRIALS} Trials" in trials, trials[:3000]
    for t in result["trials"]:
        assert f"Trial {t['number']} Complete" in trials
    shot = tmp_path / "dashboard.png"
    args = (f"--screenshot={shot}", "--window-size=1200,1600", "--virtual-time-budget=15000")
    done = _chromium(chromium, tmp_path, *args, f"{base}/studies/{study_id}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
