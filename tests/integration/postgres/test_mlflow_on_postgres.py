"""A real `mlflow server` whose backend store is a fresh PostgreSQL database: a run's params and
metrics go in through MlflowClient, come back, and are rows of that database."""

from __future__ import annotations

import pytest

from servers import Server, free_port, sqlalchemy_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_mlflow_server_on_postgres_keeps_a_run(postgres_database, tmp_path):
    import psycopg2
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    server = Server(tmp_path, free_port(), backend_uri=sqlalchemy_url(postgres_database))
    server.start()
    try:
        client = MlflowClient(tracking_uri=server.url)
        run_id = client.create_run(client.create_experiment("pg")).info.run_id
        points = [Metric("train/loss", 1.0 / step, 0, step) for step in range(1, 51)]
        client.log_batch(run_id, metrics=points, params=[Param("lr", "0.001"), Param("model", "tiny")])
        client.log_metric(run_id, "val/loss", 0.25, step=50)
        client.set_terminated(run_id)
        run = client.get_run(run_id)
        history = client.get_metric_history(run_id, "train/loss")
    finally:
        server.stop()
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.001", "model": "tiny"}
    assert run.data.metrics == {"train/loss": 1.0 / 50, "val/loss": 0.25}
    assert sorted((m.step, m.value) for m in history) == [(p.step, p.value) for p in points]
    with psycopg2.connect(postgres_database) as conn, conn.cursor() as cur:  # the server's store is this database
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone() == (51,)
        cur.execute("SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", (run_id,))
        assert cur.fetchall() == [("lr", "0.001"), ("model", "tiny")]
