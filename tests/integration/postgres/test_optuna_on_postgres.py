"""An Optuna study in RDBStorage on a fresh PostgreSQL database outlives the process that ran it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from servers import sqlalchemy_url

pytestmark = pytest.mark.postgres

WRITER = """
import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
sampler = optuna.samplers.RandomSampler(seed=0)
study = optuna.create_study(study_name="persist", storage=sys.argv[1], load_if_exists=True, sampler=sampler)
study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 0.5) ** 2, n_trials=int(sys.argv[2]))
print(json.dumps({"values": [t.value for t in study.trials], "best": study.best_params}))
"""


def run_writer(url: str, n: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", WRITER, url, str(n)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_study_persists_across_processes(postgres_database):
    import optuna

    url = sqlalchemy_url(postgres_database)
    assert url.startswith("postgresql+psycopg2://sweep_sft@")  # no password in it: libpq's password file
    written = run_writer(url, 4)
    study = optuna.load_study(study_name="persist", storage=optuna.storages.RDBStorage(url))
    assert [t.value for t in study.trials] == written["values"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert study.best_params == written["best"]
    # a second process resumes the same study: its trials add to the first ones
    again = run_writer(url, 2)
    assert again["values"][:4] == written["values"] and len(again["values"]) == 6
