"""A trial logging over HTTP to a real `mlflow server` on 127.0.0.1 (tracking=server)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):  # the server needs ~20 s to come up on 2 cores
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_trial_logs_to_a_tracking_server(mlflow_server, tiny_overrides):
    from mlflow.tracking import MlflowClient

    from sweep_sft.config import compose
    from sweep_sft.trial import run_trial

    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")]
    result = run_trial(compose(overrides + ["tracking=server", f"tracking.uri={mlflow_server}", "eval.generate=false"]))
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [1, 2, 3, 4]
    assert run.data.metrics["val/loss"] == pytest.approx(result.metrics["val/loss"])
    assert {"config.yaml", "dataset_stats.json"} <= {a.path for a in client.list_artifacts(result.run_id)}
