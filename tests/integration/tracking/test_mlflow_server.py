"""Trials logging over HTTP to a real `mlflow server` on 127.0.0.1 (tracking=server): delivery in
batches from a background thread, through the server being stopped and restarted, and a clear
failure (records saved to disk) when it does not come back."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import run_cli
from servers import Server, free_port, sqlalchemy_url
from sweep_sft.metrics import HEADLINE_PREFIX


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"), free_port())
    srv.start()
    yield srv
    srv.stop()
    print(f"mlflow server start times (s): {[round(s, 1) for s in srv.start_s]}")


@pytest.fixture
def mlflow_server(server):
    server.ensure_up()
    return server.url


def server_overrides(tiny_overrides, url: str, *extra: str) -> list[str]:
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")]
    fast = ["eval.generate=false", "eval.general_probe=false"]
    return [*overrides, "tracking=server", f"tracking.uri={url}", *fast, *extra]


def points_on_server(client, run_id: str, series: dict) -> dict[str, list[int]]:
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in series}


def steps_in(series: dict) -> dict[str, list[int]]:
    return {key: sorted(int(step) for step, _ in values) for key, values in series.items()}


def stop_when_training(server: Server, outage: dict, restart_after_s: float | None) -> threading.Thread:
    """Stop the server once a run on it has its first train/loss point, and start it again
    `restart_after_s` later (never, if None); the times go into `outage`."""
    from mlflow.tracking import MlflowClient

    def watch() -> None:
        client = MlflowClient(tracking_uri=server.url)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                runs = client.search_runs(
                    [client.get_experiment_by_name("sweep-sft").experiment_id], "attributes.status = 'RUNNING'"
                )
                if any("train/loss" in r.data.metrics for r in runs):
                    break
            except Exception:  # noqa: BLE001 - the experiment may not exist yet
                pass
            time.sleep(0.1)
        server.stop(signal.SIGKILL)  # a crash: a graceful stop can outlast a tiny trial's training
        outage["down_ms"] = time.time() * 1000
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            outage["restart_ms"] = time.time() * 1000
            server.start()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_trial_logs_to_a_tracking_server(mlflow_server, tiny_overrides):
    from mlflow.tracking import MlflowClient

    from sweep_sft.config.compose import compose
    from sweep_sft.trial.run import run_trial

    result = run_trial(compose(server_overrides(tiny_overrides, mlflow_server)))
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [1, 2, 3, 4]
    assert run.data.metrics["val/loss"] == pytest.approx(result.metrics["val/loss"])
    assert {"config.yaml", "dataset_stats.json"} <= {a.path for a in client.list_artifacts(result.run_id)}
    assert points_on_server(client, result.run_id, result.series) == steps_in(result.series)


@pytest.mark.slow
def test_async_logging_never_waits_for_the_server(mlflow_server):
    """Per-call cost of Run.log_metrics (buffer, background delivery) against a synchronous
    log_batch of the same point over HTTP."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from sweep_sft.config.schema import TrackingConfig
    from sweep_sft.tracking.runs import Run

    run = Run(TrackingConfig(uri=mlflow_server), run_name="latency")
    client = MlflowClient(tracking_uri=mlflow_server)
    sync_run = client.create_run(run.client.get_run(run.run_id).info.experiment_id).info.run_id
    n = 50
    started = time.perf_counter()
    for step in range(n):
        run.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-3}, step)
    async_s = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for step in range(n):
        client.log_batch(sync_run, metrics=[Metric("loss", 1.0 / (step + 1), 0, step), Metric("lr", 1e-3, 0, step)])
    sync_s = (time.perf_counter() - started) / n
    run.finish()
    print(f"per call: async {async_s * 1e6:.0f} us, synchronous log_batch {sync_s * 1e3:.1f} ms")
    assert len(client.get_metric_history(run.run_id, "loss")) == n
    assert async_s < sync_s / 10


def running_jobs(name: str, seen: list[int], done: threading.Event) -> None:
    """Poll Slurm for how many of the sweep's jobs run at once (the most goes into `seen`)."""
    while not done.wait(0.5):
        out = subprocess.run(["squeue", "-h", "-t", "R", "-n", name, "-o", "%i"], capture_output=True, text=True)
        seen.append(len(out.stdout.split()))


N_LOAD = 32  # trials at once: the local cluster's 2 CPUs x OverSubscribe 16
PARENT_CALLBACK = "+hydra.callbacks.parent._target_=sweep_sft.sweep.callback.MlflowParentRun"


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.slow
def test_thirty_two_slurm_trials_log_every_point_once_to_a_postgresql_server(tmp_path, postgres_database):
    """One sweep of 32 small trials (tests/apps/tracked_trial.py: 300 steps of three metrics
    through the trials' own Run, no torch) through hydra/launcher=submitit_slurm, running at
    once and all logging to one `mlflow server` on PostgreSQL: 32 FINISHED children under the
    sweep's parent, and every point of every trial on the server exactly once."""
    from mlflow.tracking import MlflowClient

    from sweep_sft.tracking.client import read_parent

    store_uri = sqlalchemy_url(postgres_database)
    server = Server(tmp_path, free_port(), backend_uri=store_uri)
    server.start()
    sweep_dir, name = tmp_path / "sweep", f"mlflow{N_LOAD}-{server.port}"
    launcher = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", f"hydra.launcher.name={name}"]
    launcher += ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.mem_per_cpu=600M"]
    launcher += ["hydra.launcher.timeout_min=15"]
    launcher += [f"hydra.launcher.array_parallelism={N_LOAD}"]
    args = ["-m", *launcher, f"hydra.sweep.dir={sweep_dir}", f"lr=range(1,{N_LOAD + 1})"]
    args += ["tracking.enabled=true", f"tracking.uri={server.url}", PARENT_CALLBACK]
    seen, done = [0], threading.Event()
    poller = threading.Thread(target=running_jobs, args=(name, seen, done), daemon=True)
    poller.start()
    try:
        started = time.perf_counter()
        proc = run_cli(*args, app="tracked_trial.py", cwd=tmp_path, env={"LOG_STEPS": "300", "TRIAL_S": "5"})
        took = time.perf_counter() - started
        done.set()
        assert proc.returncode == 0, proc.stderr[-3000:]
        parent = read_parent(sweep_dir)
        client = MlflowClient(tracking_uri=server.url)
        experiment = client.get_run(parent["run_id"]).info.experiment_id
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent['run_id']}'")
        assert sorted(c.info.status for c in children) == ["FINISHED"] * N_LOAD
    finally:
        done.set()
        server.stop()
    store = MlflowClient(tracking_uri=store_uri)  # the server's own store: PostgreSQL
    total = 0
    for child in children:
        out = Path(child.data.tags["sweep_sft.output_dir"])
        series = json.loads((out / "metrics.json").read_text())["series"]
        assert points_on_server(store, child.info.run_id, series) == steps_in(series)  # each once
        total += sum(len(v) for v in series.values())
    print(f"{N_LOAD} Slurm trials, one PostgreSQL server: {took:.0f} s, {total} points, at most {max(seen)} at once")
    assert total == N_LOAD * (3 * 300 + 1) and max(seen) > 16  # more at once than the old 16 slots


@pytest.mark.slow
def test_trial_rides_out_a_server_restart(server, mlflow_server, tiny_overrides, caplog):
    """The server is stopped while the trial trains and started again seconds later: the trial
    goes on, and every point it logged (those logged while the server was down too) is on the
    server once, with one warning for the outage and one for the recovery."""
    from mlflow.tracking import MlflowClient

    from sweep_sft.config.compose import compose
    from sweep_sft.trial.run import run_trial

    outage: dict = {}
    watcher = stop_when_training(server, outage, restart_after_s=3)
    with caplog.at_level(logging.WARNING, logger="sweep_sft.tracking.delivery"):
        result = run_trial(compose(server_overrides(tiny_overrides, mlflow_server, "trainer.max_steps=40")))
    watcher.join(timeout=120)
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert points_on_server(client, result.run_id, result.series) == steps_in(result.series)
    during = [m for m in client.get_metric_history(result.run_id, "train/loss") if outage["down_ms"] < m.timestamp]
    assert during, "no point was logged while the server was down: the outage missed the training"
    messages = [r.getMessage() for r in caplog.records if r.name == "sweep_sft.tracking.delivery"]
    assert sum(" unreachable (" in m for m in messages) == 1, messages
    assert sum("is back after" in m for m in messages) == 1, messages


@pytest.mark.slow
def test_sweep_end_rides_out_a_server_restart(server, mlflow_server, tmp_path, caplog):
    """The sweep callback closing the parent run while the server is down for a few seconds
    neither crashes the sweep nor loses the parent's final counts."""
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from sweep_sft.sweep.callback import MlflowParentRun
    from sweep_sft.tracking.client import read_parent

    sweep_dir = tmp_path / "sweep"
    config = OmegaConf.create(
        {
            "tracking": {"enabled": True, "uri": mlflow_server},
            "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": ["trainer.seed=0,1"]}},
        }
    )
    callback = MlflowParentRun()
    callback.on_multirun_start(config)
    server.stop(signal.SIGKILL)
    restart = threading.Timer(2, server.start)
    restart.start()
    with caplog.at_level(logging.WARNING):
        callback.on_multirun_end(config)
    restart.join()
    parent = MlflowClient(tracking_uri=mlflow_server).get_run(read_parent(sweep_dir)["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials"] == 0
    assert parent.data.tags["sweep_sft.overrides"] == "trainer.seed=0,1"
    assert any("unreachable" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_trial_fails_clearly_when_the_server_stays_down(server, mlflow_server, tiny_overrides):
    """The server never comes back within tracking.outage_timeout_s: the trial raises an error
    naming the server and the file holding what was not delivered; that file plus what the
    server got is every point of metrics.json."""
    from mlflow.tracking import MlflowClient

    from sweep_sft.config.compose import compose
    from sweep_sft.names import UNDELIVERED_FILE
    from sweep_sft.tracking.client import TrackingError
    from sweep_sft.trial.run import run_trial

    outage: dict = {}
    watcher = stop_when_training(server, outage, restart_after_s=None)
    overrides = server_overrides(tiny_overrides, mlflow_server, "trainer.max_steps=40", "tracking.outage_timeout_s=3")
    with pytest.raises(TrackingError, match=f"tracking.uri {mlflow_server}.*{UNDELIVERED_FILE}"):
        run_trial(compose(overrides))
    watcher.join(timeout=60)
    out = Path(next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("output_dir=")))
    spilled = json.loads((out / UNDELIVERED_FILE).read_text())
    series = json.loads((out / "metrics.json").read_text())["series"]
    assert spilled["tracking_uri"] == mlflow_server and spilled["metrics"]
    assert {"artifact objective.json", "tag sweep_sft.trial_state"} <= {r["what"] for r in spilled["records"]}

    server.start()  # back after the trial gave up: count what it got, then deliver the rest
    client = MlflowClient(tracking_uri=mlflow_server)
    delivered = points_on_server(client, spilled["run_id"], series)
    for key, step in ((m[0], m[3]) for m in spilled["metrics"]):
        delivered.setdefault(key, []).append(step)
    headline = {k: delivered.pop(k) for k in list(delivered) if k.startswith(HEADLINE_PREFIX)}
    assert {k: sorted(v) for k, v in delivered.items()} == steps_in(series)
    assert "all/val_loss" in headline  # logged once more at the end, not a series of metrics.json

    delivered_rest = run_cli(str(out / UNDELIVERED_FILE), module="sweep_sft.tracking", cwd=out)
    assert delivered_rest.returncode == 0, delivered_rest.stderr[-3000:]
    assert points_on_server(client, spilled["run_id"], series) == steps_in(series)
    run = client.get_run(spilled["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["sweep_sft.trial_state"] == "COMPLETE"
    assert "objective.json" in {a.path for a in client.list_artifacts(spilled["run_id"])}


@pytest.mark.slow
def test_a_lost_confirmation_does_not_duplicate_points(mlflow_server):
    """The server stores a batch but the answer is lost (the connection drops): the batch is sent
    again unchanged, and the store keeps each point once."""
    from sweep_sft.config.schema import TrackingConfig
    from sweep_sft.tracking.runs import Run

    run = Run(TrackingConfig(uri=mlflow_server), run_name="dedup")
    real_log_batch, lost = run.client.log_batch, []

    def log_batch_losing_first_answer(run_id, **records):
        real_log_batch(run_id, **records)
        if records.get("metrics") and not lost:
            lost.append(len(records["metrics"]))
            raise ConnectionError("connection reset after the server stored the batch")

    run.client.log_batch = log_batch_losing_first_answer
    for step in range(1, 6):
        run.log_metrics({"train/loss": 1.0 / step}, step)
    run.finish()
    assert lost, "the fault was never injected"
    history = run.client.get_metric_history(run.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_buffer_is_bounded_while_the_server_is_down(monkeypatch, caplog):
    """Nothing listens on the port: points stay buffered up to tracking.max_buffered_points,
    one more waits and then fails, and everything buffered is still there to be saved."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from sweep_sft.tracking.client import HTTP_ENV
    from sweep_sft.tracking.delivery import Delivery

    for key, value in HTTP_ENV.items():
        monkeypatch.setenv(key, value)
    url = f"http://127.0.0.1:{free_port()}"
    delivery = Delivery(MlflowClient(tracking_uri=url), "0" * 32, url, max_points=1000)
    with caplog.at_level(logging.WARNING, logger="sweep_sft.tracking.delivery"):
        for step in range(10):
            delivery.add_points([Metric(f"m{i}", 1.0, 0, step) for i in range(100)], wait_s=0)
        with pytest.raises(TimeoutError, match="1000 metric points buffered"):
            delivery.add_points([Metric("m", 1.0, 0, 10)], wait_s=0.5)
        assert delivery.drain(0.5) is False
    delivery.stop()
    assert len(delivery.undelivered()["metrics"]) == 1000
    assert sum(" unreachable (" in r.getMessage() for r in caplog.records) == 1
