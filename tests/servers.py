"""Real servers for tests and benches (imported as `servers`, like helpers; bench/ puts tests/ on
sys.path): an `mlflow server` on any backend store, and fresh databases on the local PostgreSQL
server of launchers/postgres.sh."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ROLE = "sweep_sft"
# As `make mlflow-server` sets them: MLflow's default pool (5 + 10) hangs its worker under 32
# concurrent requests.
SERVER_DB_POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "20", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "40"}
PG_PORT = int(os.environ.get("SWEEP_SFT_PG_PORT", "5433"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_url(database: str) -> str:
    """The role's libpq URL (psycopg2.connect): no password in it, libpq reads it from the password
    file postgres.sh writes."""
    return f"postgresql://{PG_ROLE}@127.0.0.1:{PG_PORT}/{database}"


def sqlalchemy_url(libpq_url: str) -> str:
    """The same database for SQLAlchemy (MLflow, Optuna): a bare postgresql:// means psycopg 3 to
    SQLAlchemy 2.1, which is not installed; psycopg2 is."""
    return libpq_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _as_owner(sql: str) -> None:
    import psycopg2

    # CREATE/DROP DATABASE cannot run inside a transaction
    conn = psycopg2.connect(pg_url("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def fresh_database(prefix: str = "test") -> Iterator[str]:
    """The libpq URL of a new, empty database owned by the role, dropped on exit: a name of its own per
    caller, so pytest-xdist workers and concurrent benches never share state."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    _as_owner(f'CREATE DATABASE "{name}" OWNER {PG_ROLE}')
    try:
        yield pg_url(name)
    finally:
        # FORCE: a server under test may still hold pooled connections to it
        _as_owner(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    """A real `mlflow server` (artifacts served) on `backend_uri`, by default a SQLite file in
    `folder`, that a test can stop and start again on the same port and store."""

    def __init__(self, folder: Path, port: int, backend_uri: str | None = None):
        self.folder, self.port = folder, port
        self.backend_uri = backend_uri or f"sqlite:///{folder / 'mlflow.db'}"
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.start_s: list[float] = []

    def start(self, timeout_s: float = 120) -> None:
        started = time.perf_counter()
        args = ["--backend-store-uri", self.backend_uri]
        args += ["--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--workers", "1"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "server.log", "a"),  # noqa: SIM115 - the child holds it
            # Its own process group, so stop() ends uvicorn with it; no job runner (huey) processes.
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **SERVER_DB_POOL},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                self.start_s.append(time.perf_counter() - started)
                return
            except OSError:
                assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-3000:]
                time.sleep(0.2)
        raise AssertionError(f"mlflow server on {self.url} not up within {timeout_s:.0f} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def ensure_up(self) -> None:
        if self.proc is None:
            self.start()
