"""What the MLflow UI reads from our records: experiments marked as training experiments (opened
on the runs table), a trial's and a sweep's description (the run note)."""

from __future__ import annotations

import shutil

from sweep_sft.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from sweep_sft.report.data import Sweep, Trial
from sweep_sft.report.notes import sweep_note, trial_note
from sweep_sft.tracking.client import run_experiment


def test_our_experiments_get_the_training_kind_unless_the_user_set_one(tmp_path, monkeypatch, empty_store):
    from mlflow.tracking import MlflowClient

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    kind = lambda experiment_id: client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG)  # noqa: E731
    assert kind(run_experiment(client, "new")) == EXPERIMENT_KIND  # created by us
    client.create_experiment("existing")
    assert kind(run_experiment(client, "existing")) == EXPERIMENT_KIND  # made before, marked on use
    client.create_experiment("users", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert kind(run_experiment(client, "users")) == "genai_development"
    by_id = client.create_experiment("by-id")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", by_id)
    assert kind(run_experiment(client, None)) == EXPERIMENT_KIND


def test_the_trial_note_is_its_printed_table():
    table = "task_type  exact\nqa         0.500\nobjective val/loss = 1.2345"
    note = trial_note(table)
    assert f"```\n{table}\n```" in note


def test_the_sweep_note_names_the_best_trial_and_the_report():
    trials = [
        Trial(0, ["lr=0.0001"], {"lr": 1e-4}, "COMPLETE", 2.34567, "val/loss"),
        Trial(1, ["lr=0.001"], {"lr": 1e-3}, "COMPLETE", 1.23456, "val/loss"),
        Trial(2, ["lr=1e30"], {"lr": 1e30}, "FAILED"),
    ]
    sweep = Sweep("s", None, "grid", ["lr"], trials, objective="val/loss", direction="minimize")
    note = sweep_note(sweep, "/x/report.html")
    assert "2 complete, 0 pruned, 1 failed" in note
    assert "Best trial: **#1 lr=0.001**, val/loss = **1.23** (minimize)" in note
    assert "| lr | 0.001 |" in note and "`/x/report.html`" in note
    assert "No best trial" in sweep_note(Sweep("s", None, "grid", ["lr"], trials[2:], "val/loss", "minimize"), None)
