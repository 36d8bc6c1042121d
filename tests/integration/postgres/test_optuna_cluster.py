"""Our Optuna sweeper on PostgreSQL as a team runs it (`make postgres-up`): three controllers on one
study with MLflow on PostgreSQL too, a trial killed and retried through its stale heartbeat, and
bad storage settings refused before any trial runs, the password never shown."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import run_cli, start_cli, wait_for
from integration.plugins.test_optuna_controllers import check_shared_sweep, run_controllers
from integration.plugins.test_optuna_heartbeat import _args, _assert_retried_once, _study
from servers import PG_PORT, PG_ROLE, free_port, fresh_database, sqlalchemy_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
PASSWORD_FILE = Path(os.environ.get("SWEEP_SFT_PG_STATE", "/var/lib/sweep-sft-postgres")) / "password"


def test_three_controllers_share_a_postgresql_study_and_mlflow_store(tmp_path, postgres_database):
    import optuna

    with fresh_database("mlflow") as mlflow_db:
        tracking = sqlalchemy_url(mlflow_db)
        optuna.create_study(study_name="shared", storage=sqlalchemy_url(postgres_database))
        storage = postgres_database  # as a user types it: a bare postgresql:// URL, no password (~/.pgpass)
        logs = run_controllers(tmp_path, storage, tracking)
        check_shared_sweep(tmp_path, sqlalchemy_url(storage), tracking, logs)


def test_a_killed_trial_is_failed_by_its_stale_heartbeat_and_retried(tmp_path, postgres_database):
    hold, log = tmp_path / "hold", tmp_path / "first.log"
    args = _args(tmp_path, postgres_database, 3)
    first = start_cli(*args, app="synthetic_curve.py", cwd=tmp_path, log=log, env={"HOLD_ONCE": str(hold)})
    try:
        wait_for("trial 0 holding", lambda: hold.exists() and hold.read_text(), timeout=120, proc=first, log=log)
        os.kill(int(hold.read_text()), signal.SIGKILL)  # the trial's process, without a word
    finally:
        first.kill()  # and its controller: nobody tells the study
        first.wait()
    storage = sqlalchemy_url(postgres_database)
    assert _study(storage).trials[0].state.name == "RUNNING"
    time.sleep(4)  # past grace_s: the trial's heartbeat is stale
    again = run_cli(*args, app="synthetic_curve.py", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_retried_once(tmp_path, storage, 3, killed=0)


def _refused(tmp_path: Path, storage: str, *more: str, env: dict | None = None):
    proc = run_cli(*_args(tmp_path, storage, 2, *more), app="synthetic_curve.py", cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert not (tmp_path / "sweep" / "0").exists()  # before any trial ran
    return proc.stderr


def test_bad_storage_settings_are_refused_before_any_trial_naming_the_key(tmp_path, postgres_database):
    import optuna

    password = PASSWORD_FILE.read_text().strip()
    wrong = f"postgresql://{PG_ROLE}:not-{password}@127.0.0.1:{PG_PORT}/optuna"
    err = _refused(tmp_path, wrong, env={"PGPASSFILE": str(tmp_path / "none")})
    assert "hydra.sweeper.storage=postgresql://sweep_sft:***@" in err and "password authentication failed" in err
    assert password not in err
    unreachable = f"postgresql://{PG_ROLE}@127.0.0.1:{free_port()}/optuna"
    assert "hydra.sweeper.storage=" in _refused(tmp_path, unreachable) and "cannot open the study storage" in err
    storage = sqlalchemy_url(postgres_database)
    optuna.create_study(study_name="sweep", storage=storage, direction="maximize")
    err = _refused(tmp_path, postgres_database)
    assert "hydra.sweeper.direction=['minimize']" in err and "exists with direction(s) ['maximize']" in err


def test_a_password_in_the_storage_url_reaches_trials_but_is_never_shown(tmp_path, postgres_database):
    """The password goes to the trials as $PGPASSWORD (no password file here to fall back on):
    not in a log line, a trial's overrides or results, optuna_result.json or multirun.yaml. (Hydra's
    own .hydra/ folders keep the command line as typed: docs/sweepers.md says to use ~/.pgpass.)"""
    password = PASSWORD_FILE.read_text().strip()
    storage = postgres_database.replace(f"{PG_ROLE}@", f"{PG_ROLE}:{password}@", 1)
    proc = run_cli(
        *_args(tmp_path, storage, 2), app="synthetic_curve.py", cwd=tmp_path, env={"PGPASSFILE": str(tmp_path / "x")}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    for path in (tmp_path / "sweep").rglob("*"):
        if path.is_file() and ".hydra" not in path.parts and path.suffix in (".json", ".yaml", ".log", ".out"):
            shown += path.read_text(errors="replace")
    assert "study.heartbeat_s=1" in shown and "***" in shown  # linked to the study; the URL masked
    assert password not in shown
