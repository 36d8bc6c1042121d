"""MLflow's tracking server on SQLite against PostgreSQL under concurrent writers.

Two real `mlflow server`s run side by side, one on a SQLite file and one on a fresh PostgreSQL
database of the local server (launchers/postgres.sh, `make postgres-up`). Each in turn takes
metric batches from N client threads (MlflowClient.log_batch, one metric key per thread, all in
one run); afterwards every thread's series is read back with get_metric_history and must hold
each step exactly once. Prints a Markdown table.

    python bench/tracking_backends.py [--threads 8] [--batches 200] [--points 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

# The tests' real-server helpers, so the bench measures the servers the tests check.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import Server, free_port, fresh_database, sqlalchemy_url  # noqa: E402


def writer(url: str, run_id: str, key: str, args: argparse.Namespace, out: dict) -> None:
    """args.batches log_batch calls of args.points points each; latencies and errors into out."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    for batch in range(args.batches):
        first = batch * args.points
        points = [Metric(key, float(step), 0, step) for step in range(first, first + args.points)]
        started = time.perf_counter()
        try:
            client.log_batch(run_id, metrics=points)
        except Exception as error:  # noqa: BLE001 - counted: the table's errors column
            out["errors"].append(repr(error)[:200])
            continue
        out["latency_s"].append(time.perf_counter() - started)


def exactly_once(url: str, run_id: str, keys: list[str], expected: int) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    return all(sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(expected)) for key in keys)


def measure(name: str, server: Server, args: argparse.Namespace) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    run_id = client.create_run(client.create_experiment(f"bench-{name}")).info.run_id
    keys = [f"thread{i}" for i in range(args.threads)]
    outs = [{"latency_s": [], "errors": []} for _ in keys]
    pairs = zip(keys, outs, strict=True)
    threads = [threading.Thread(target=writer, args=(server.url, run_id, key, args, out)) for key, out in pairs]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies = sorted(s for out in outs for s in out["latency_s"])
    errors = [e for out in outs for e in out["errors"]]
    return {
        "backend": name,
        "start_s": server.start_s[0],
        "points": len(latencies) * args.points,
        "wall_s": wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
        "errors": errors,
        "exactly_once": exactly_once(server.url, run_id, keys, args.batches * args.points),
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"{args.threads} threads x {args.batches} log_batch calls x {args.points} points per backend",
        "",
        "| backend | server start s | points stored | wall s | points/s | log_batch p50 ms | p99 ms | errors"
        " | every point once |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['start_s']:.1f} | {r['points']:,} | {r['wall_s']:.1f}"
            f" | {r['points'] / r['wall_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {len(r['errors'])}"
            f" | {'yes' if r['exactly_once'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200, help="log_batch calls per thread")
    parser.add_argument("--points", type=int, default=50, help="metric points per call (MLflow allows 1000)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp, fresh_database("bench") as pg:
        folders = {name: Path(tmp) / name for name in ("sqlite", "postgresql")}
        for folder in folders.values():
            folder.mkdir()
        servers = {
            "sqlite": Server(folders["sqlite"], free_port()),
            "postgresql": Server(folders["postgresql"], free_port(), backend_uri=sqlalchemy_url(pg)),
        }
        try:
            for server in servers.values():
                server.start()
            rows = [measure(name, server, args) for name, server in servers.items()]
        finally:
            for server in servers.values():
                server.stop()
    print(table(rows, args))
    for row in rows:
        for error in row["errors"][:3]:
            print(f"{row['backend']} error: {error}", file=sys.stderr)
    if not all(row["exactly_once"] and not row["errors"] for row in rows):
        sys.exit("some points were lost, duplicated or refused (see above)")


if __name__ == "__main__":
    main()
