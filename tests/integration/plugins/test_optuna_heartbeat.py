"""Optuna's heartbeat and retry callback in our sweeper (hydra.sweeper.heartbeat_s, retries), on a
database storage, with trials of the synthetic curve (tests/apps/synthetic_curve.py) through our
local launcher: a trial whose process is killed is failed and run again with the same
parameters, and counted once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import run_cli, start_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sweep_app("synthetic_curve.py", "optuna5")]
SPACE = "x=tag(log,interval(1e-6,1e-1))"


def _args(tmp_path: Path, storage: str, n_trials: int, *more: str) -> list[str]:
    return [
        "-m",
        "hydra/sweeper=optuna5",
        "hydra/launcher=sweep_sft_local",
        "hydra.launcher.retries=0",  # the sweeper's retry, not the launcher's
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.heartbeat_s=1",
        "hydra.sweeper.grace_s=3",
        "hydra.sweeper.retries=1",
        SPACE,
        *more,
    ]


def _study(storage: str):
    import optuna

    return optuna.load_study(study_name="sweep", storage=storage)


def _result(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())


def _assert_retried_once(tmp_path: Path, storage: str, n_trials: int, killed: int) -> None:
    trials = _study(storage).trials
    assert len(trials) == n_trials + 1, [(t.number, t.state.name) for t in trials]
    assert trials[killed].state.name == "FAIL"
    retry = next(t for t in trials if t.system_attrs.get("retry_history") == [killed])
    assert retry.state.name == "COMPLETE" and retry.params == trials[killed].params
    r = _result(tmp_path)
    assert r["states"] == {"COMPLETE": n_trials} and r["retried"] == [killed]
    assert len(r["trials"]) == n_trials  # counted once: the killed attempt is history


def test_a_trial_whose_process_dies_is_failed_and_retried_with_its_parameters(tmp_path, sqlite_study):
    # KILL_ONCE: job 1's process exits by os._exit(9), no result: its controller sees the death
    env = {"KILL_ONCE": str(tmp_path / "killed"), "KILL_AT": "1"}
    proc = run_cli(*_args(tmp_path, sqlite_study, 4), app="synthetic_curve.py", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "killed").exists()
    _assert_retried_once(tmp_path, sqlite_study, 4, killed=1)


def test_a_stale_heartbeat_fails_the_trial_and_another_controller_retries_it(tmp_path, sqlite_study):
    """The controller and its trial killed together (a lost machine): nobody tells the study; the
    trial's heartbeat stops, and the next controller on the study fails it and runs it again."""
    hold, log = tmp_path / "hold", tmp_path / "first.log"
    first = start_cli(
        *_args(tmp_path, sqlite_study, 3), app="synthetic_curve.py", cwd=tmp_path, log=log, env={"HOLD_ONCE": str(hold)}
    )
    try:
        wait_for("trial 0 holding", lambda: hold.exists() and hold.read_text(), timeout=120, proc=first, log=log)
        os.kill(int(hold.read_text()), signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert _study(sqlite_study).trials[0].state.name == "RUNNING"  # as the dead left it
    time.sleep(4)  # past grace_s
    again = run_cli(*_args(tmp_path, sqlite_study, 3), app="synthetic_curve.py", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_retried_once(tmp_path, sqlite_study, 3, killed=0)


@pytest.fixture
def sqlite_study(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"
