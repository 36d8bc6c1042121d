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


def test_a_sqlite_stores_artifacts_lie_beside_its_database_whatever_the_cwd(tmp_path, monkeypatch, empty_store):
    # MLflow's default is ./mlruns under the cwd of the process that creates the experiment: a
    # sweep job's folder, a test's checkout (the suite once left 15 run folders in ours).
    from mlflow.tracking import MlflowClient

    from sweep_sft.tracking.client import artifact_location

    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(empty_store, store / "mlflow.db")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment(run_experiment(client, "my sft/exp"))
    assert experiment.artifact_location == (store / "mlruns" / "my_sft_exp").as_uri()
    run = client.create_run(experiment.experiment_id)
    client.log_text(run.info.run_id, "x", "note.txt")
    assert list(store.glob("mlruns/my_sft_exp/*/artifacts/note.txt")) and not list(elsewhere.iterdir())
    # relative paths are the cwd's; servers and other stores keep their own artifact roots
    assert artifact_location("sqlite:///rel/m.db", "e") == (elsewhere / "rel" / "mlruns" / "e").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "e") is None
    assert artifact_location("postgresql://u@h/db", "e") is None
    assert artifact_location("sqlite://", "e") is None


def test_the_tests_cache_is_not_the_users():
    import os
    from pathlib import Path

    from sweep_sft.cache import cache_root

    assert cache_root() != Path.home() / ".cache" / "sweep_sft"
    assert Path(os.environ["SWEEP_SFT_CACHE"]).name.startswith("sweep-sft-test-cache-")
