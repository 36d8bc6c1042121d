"""A sweep from the command line: one MLflow parent run, a child run per trial, read back
from the SQLite store that `make mlflow-ui` shows."""

from __future__ import annotations

import pytest

from helpers import run_cli


@pytest.mark.slow
def test_sweep_records_children_under_one_parent(tmp_path, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith(("tracking.", "output_dir="))]
    proc = run_cli("-m", "lr=1e-4,1e-3", "grad_accum=1,2", *overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep-sft")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep_sft.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == 4
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/finished"] == 4
    swept = sorted((c.data.params["optimizer.lr"], c.data.params["trainer.grad_accum"]) for c in children)
    assert swept == [("0.0001", "1"), ("0.0001", "2"), ("0.001", "1"), ("0.001", "2")]
    for child in children:
        assert child.info.status == "FINISHED"
        assert "lr" not in child.data.params  # short names are logged under their full path only
        # trainer.precision=auto as trained (CPU: fp32), beside the config's own value.
        assert (child.data.params["trainer.precision"], child.data.params["trainer.precision_resolved"]) == (
            "auto",
            "fp32",
        )
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert {"val/loss", "general_drop", "task/exact_match/classification/topic"} <= set(child.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "dataset_stats.json"} <= artifacts
    assert {c.data.tags["mlflow.runName"] for c in children} == {
        "0: lr=0.0001,grad_accum=1",
        "1: lr=0.0001,grad_accum=2",
        "2: lr=0.001,grad_accum=1",
        "3: lr=0.001,grad_accum=2",
    }


@pytest.mark.slow
def test_optuna_sweep_records_pruned_trials_in_mlflow(tmp_path, tiny_overrides):
    """Real trials reporting val/loss to the study: the one that does not learn (lr 1e-6) is
    pruned by a threshold at step 4, the other completes; MLflow shows which is which."""
    overrides = [
        o
        for o in tiny_overrides
        if not o.startswith(("tracking.", "output_dir=", "trainer.max_steps", "trainer.eval_every"))
    ]
    args = ["-m", "hydra/sweeper=optuna5", "hydra/sweeper/sampler=grid", "lr=1e-6,3e-3"]
    args += [
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.upper=9.0",
        "hydra.sweeper.pruner.n_warmup_steps=4",
    ]
    args += ["trainer.max_steps=12", "trainer.eval_every=4", *overrides]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep_sft.kind") == "sweep")
    children = {r.data.params["optimizer.lr"]: r for r in runs if r is not parent}
    pruned, complete = children["1e-06"], children["0.003"]
    assert pruned.data.tags["sweep_sft.trial_state"] == "PRUNED" and pruned.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val/loss")] == [0, 4]
    assert complete.data.tags["sweep_sft.trial_state"] == "COMPLETE" and complete.info.status == "FINISHED"
    assert parent.data.metrics["sweep/pruned"] == 1 and parent.data.metrics["optuna/pruned"] == 1
    assert parent.data.tags["optuna.best.lr"] == "0.003"
    assert parent.data.metrics["optuna/best_value"] == pytest.approx(complete.data.metrics["val/loss"])
    assert "optuna_result.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_a_trial_that_fails_before_opening_its_run_is_a_failed_child(tmp_path, tiny_overrides):
    """A trial of a sweep that fails before opening its run (an objective its data does not have,
    which only the trial can tell; a bad value is refused before the sweep starts): MLflow has a
    FAILED child with the error, and the parent counts it."""
    overrides = [o for o in tiny_overrides if not o.startswith(("tracking.", "output_dir="))]
    proc = run_cli("-m", "objective=val/loss,val/loss/no_such_task", *overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # one failure of two is within max_failure_rate

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep_sft.kind") == "sweep")
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r is not parent}
    assert set(children) == {"0: objective=val/loss", "1: objective=val/loss/no_such_task"}
    failed = children["1: objective=val/loss/no_such_task"]
    assert failed.info.status == "FAILED"
    assert "unknown metric 'val/loss/no_such_task'" in failed.data.tags["sweep_sft.error"]
    assert children["0: objective=val/loss"].info.status == "FINISHED"
    assert parent.data.metrics["sweep/failed"] == 1 and parent.data.metrics["sweep/finished"] == 1


def test_an_unknown_sweeper_key_fails_before_the_parent_run(tmp_path, tiny_overrides):
    """`+hydra.sweeper.<typo>` forces a key into the sweeper's config that Hydra only refuses when
    it builds the sweeper: checked first, the sweep leaves no FAILED parent run and no report."""
    overrides = [o for o in tiny_overrides if not o.startswith(("tracking.", "output_dir="))]
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "+hydra.sweeper.bogus=1", "lr=1e-3,1e-2", *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.bogus: hydra/sweeper=grid has no key 'bogus'; "
        "its keys under hydra.sweeper: max_batch_size, max_in_flight, dispatch, resume, params, max_failure_rate"
    ), proc.stderr[-3000:]
    store = tmp_path / "mlflow.db"
    if store.exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(experiments) == []
    assert not sweep.exists()  # no parent file, no report
