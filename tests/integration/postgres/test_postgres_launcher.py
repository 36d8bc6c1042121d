"""launchers/postgres.sh: the server it starts listens on 127.0.0.1 only, admits nobody without a
SCRAM password (the superuser only over its socket, by peer), never prints the password, and
keeps the libpq password file to one line of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT
from integration.plugins.test_slurm_launcher import listening
from servers import PG_PORT, PG_ROLE, free_port, pg_url

pytestmark = pytest.mark.postgres

SCRIPT = ROOT / "launchers" / "postgres.sh"
STATE = Path(os.environ.get("SWEEP_SFT_PG_STATE", "/var/lib/sweep-sft-postgres"))


def superuser_sql(sql: str) -> list[str]:
    """Rows of `sql` run as the postgres superuser over the script's socket (peer authentication)."""
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-h", str(STATE / "run"), "-p", str(PG_PORT)]
        + ["-d", "postgres", "-c", sql],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_listens_on_localhost_only():
    import psycopg2

    found = listening(("postgres",))
    assert found == {"postgres": {"127.0.0.1"}}, found
    with psycopg2.connect(pg_url("postgres")) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)


def test_no_rule_trusts_anyone():
    rules = superuser_sql("SELECT type, database, user_name, address, auth_method, error FROM pg_hba_file_rules")
    assert sorted(rules) == ["host|{all}|{all}|127.0.0.1|scram-sha-256|", "local|{all}|{postgres}||peer|"]
    lines = [line for line in (STATE / "data" / "pg_hba.conf").read_text().splitlines() if not line.startswith("#")]
    assert not any("trust" in line for line in lines)


def test_a_wrong_or_missing_password_is_refused(tmp_path, monkeypatch):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=PG_PORT, user=PG_ROLE, password="wrong", dbname="postgres")
    # the superuser has no password and TCP needs one
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed|no password supplied"):
        psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", password="x", dbname="postgres")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(pg_url("postgres"))


def test_start_again_keeps_the_password_unprinted_and_the_password_file_tidy(tmp_path):
    password = (STATE / "password").read_text().strip()
    assert (STATE / "password").stat().st_mode & 0o777 == 0o600 and (STATE / "password").stat().st_uid == 0
    assert len(password) >= 16 and password not in SCRIPT.read_text()
    pgpass = tmp_path / "pgpass"
    other = "otherhost:5432:*:someone:secret"
    pgpass.write_text(f"{other}\n127.0.0.1:{PG_PORT}:*:{PG_ROLE}:stale\n")
    for _ in range(2):
        again = subprocess.run(
            [SCRIPT, "start"], capture_output=True, text=True, env={**os.environ, "PGPASSFILE": str(pgpass)}
        )
        assert again.returncode == 0 and "(unchanged)" in again.stdout, again.stdout + again.stderr
        assert password not in again.stdout + again.stderr
        assert pgpass.read_text().splitlines() == [other, f"127.0.0.1:{PG_PORT}:*:{PG_ROLE}:{password}"]
        assert pgpass.stat().st_mode & 0o777 == 0o600
    assert (STATE / "password").read_text().strip() == password  # reused, not regenerated


def test_status_fails_where_no_server_answers(tmp_path):
    env = {**os.environ, "SWEEP_SFT_PG_STATE": str(tmp_path), "SWEEP_SFT_PG_PORT": str(free_port())}
    down = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, env=env)
    assert down.returncode != 0 and "no response" in down.stdout, down.stdout + down.stderr
    up = subprocess.run([SCRIPT, "status"], capture_output=True, text=True)
    assert up.returncode == 0 and "accepting connections" in up.stdout, up.stdout + up.stderr
