"""MLflow's own variables where the config leaves the choice open: MLFLOW_TRACKING_URI names the
store without tracking.uri, MLFLOW_EXPERIMENT_NAME (else MLFLOW_EXPERIMENT_ID) the experiment
without tracking.experiment; what the config sets wins."""

from __future__ import annotations

import shutil

import pytest

from sweep_sft.config.schema import TrackingConfig
from sweep_sft.errors import UserInputError
from sweep_sft.tracking.client import default_uri, run_experiment, tracking_uri


def test_the_store_is_tracking_uri_else_mlflow_tracking_uri_else_the_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(TrackingConfig()) == default_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(TrackingConfig()) == default_uri() == "http://127.0.0.1:5999"
    assert tracking_uri(TrackingConfig(uri="sqlite:///elsewhere.db")) == "sqlite:///elsewhere.db"


def test_the_experiment_is_tracking_experiment_else_mlflow_experiment_name_else_id(tmp_path, monkeypatch, empty_store):
    from mlflow.tracking import MlflowClient

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    name = lambda experiment_id: client.get_experiment(experiment_id).name  # noqa: E731
    assert name(run_experiment(client, None)) == "sweep-sft"
    made = client.create_experiment("by-id")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", made)
    assert run_experiment(client, None) == made
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "by-name")  # MLflow's order: the name first
    assert name(run_experiment(client, None)) == "by-name"
    assert name(run_experiment(client, "configured")) == "configured"

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "9999")
    with pytest.raises(UserInputError, match="MLFLOW_EXPERIMENT_ID=9999 .*tracking.experiment"):
        run_experiment(client, None)
