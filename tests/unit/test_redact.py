"""Passwords in URLs never shown: masked in text and MLflow params, moved out of trials' URLs."""

from __future__ import annotations

from sweep_sft.redact import redact, split_password
from sweep_sft.tracking.client import flatten


def test_a_url_password_is_masked_wherever_it_appears():
    line = "study.storage='postgresql+psycopg2://team:s3cr:et@db:5432/optuna' tracking.uri=http://h:5000/x"
    assert redact(line) == "study.storage='postgresql+psycopg2://team:***@db:5432/optuna' tracking.uri=http://h:5000/x"
    assert redact("postgresql://team@db/optuna") == "postgresql://team@db/optuna"  # nothing to hide


def test_config_params_never_hold_a_password():
    params = flatten({"study": {"storage": "postgresql://u:pw@h/db", "trial_number": 3}, "x": ["mysql://a:b@c/d"]})
    assert params == {"study.storage": "postgresql://u:***@h/db", "study.trial_number": "3", "x": '["mysql://a:***@c/d"]'}


def test_a_postgresql_password_moves_out_of_the_url():
    assert split_password("postgresql://u:p%40ss@h:5433/optuna?sslmode=require") == (
        "postgresql://u@h:5433/optuna?sslmode=require",
        "p@ss",
    )
    assert split_password("postgresql://u@h/optuna") == ("postgresql://u@h/optuna", None)
    assert split_password("mysql://u:p@h/optuna") == ("mysql://u:p@h/optuna", None)  # only libpq reads PGPASSWORD
