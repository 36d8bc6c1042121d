"""A trial whose loss diverges says so at once: a warning line, a `divergence` finding (printed,
tagged on its run, in metrics.json), and with trainer.stop_on_divergence an end as FAILED with the
error on its MLflow run and what it logged kept. The default trial does not warn; a real model
trained with the embedded toy's values is warned of before training."""

from __future__ import annotations

import json
import shutil

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.errors import DivergenceError
from sweep_sft.names import ERROR_TAG
from sweep_sft.trial.run import run_trial

WARNING = "warning: the loss diverges"
TOY_WARNING = "starts from the embedded toy's values"


@pytest.fixture
def huge_lr(tiny_overrides, tmp_path, empty_store):
    """Six steps of the embedded model at lr 1 (1000x its default): the loss leaves its start at once.
    MLflow on, in a store of its own."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    kept = [o for o in tiny_overrides if not o.startswith(("trainer.max_steps", "tracking.enabled"))]
    return [
        *kept,
        "lr=1",
        "trainer.max_steps=6",
        "eval.generate=false",
        "eval.general_probe=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def only_run(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    return client, run


def test_a_diverging_trial_warns_at_once_and_records_the_finding(huge_lr, tmp_path, capsys):
    result = run_trial(compose(huge_lr))
    err = capsys.readouterr().err
    assert err.count(WARNING) == 1, err
    (finding,) = [f for f in result.diagnostics if f["sign"] == "divergence"]
    # The first update already takes the loss past 3x its start (the jump rule).
    assert finding["step"] == 2 and finding["severity"] == "error"
    assert finding["evidence"].startswith("train/loss ") and " (this step) at step 2 against " in finding["evidence"]
    assert finding["evidence"].endswith("with optimizer.lr=1")
    assert f"{WARNING}: {finding['evidence']}; lower the learning rate (e.g. lr=0.1)" in err
    assert result.state == "COMPLETE" and result.steps == 6  # trainer.stop_on_divergence=false: warned only
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["diagnostics"] == result.diagnostics
    _, run = only_run(tmp_path)
    assert run.data.tags["diagnostics.divergence"] == f"step 2: {finding['evidence']}"
    # The series shows it: the second step's loss is over 3x the first's.
    losses = dict(result.series["train/loss"])
    assert losses[2] > 3 * losses[1]


def test_stop_on_divergence_ends_the_trial_failed_with_its_metrics_kept(huge_lr, tmp_path, capsys):
    # log_every 5: the step it stops at (2) is logged all the same, so the run shows the loss there.
    with pytest.raises(DivergenceError, match=r"^trainer.stop_on_divergence: training stopped at step 2, the loss"):
        run_trial(compose([*huge_lr, "trainer.stop_on_divergence=true", "trainer.log_every=5"]))
    assert capsys.readouterr().err.count(WARNING) == 1
    client, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG].startswith(
        "DivergenceError: trainer.stop_on_divergence: training stopped at step 2"
    )
    assert run.data.tags["diagnostics.divergence"].startswith("step 2: train/loss ")
    assert run.data.tags["diagnostics.count"] == "1"
    steps = {
        key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in ("train/loss", "val/loss")
    }
    assert steps == {"train/loss": [2], "val/loss": [0]}  # what it logged before it stopped
    assert not (tmp_path / "trial" / "metrics.json").exists()  # a failed trial has no result


def test_the_default_trial_does_not_warn(tmp_path, capsys):
    """The embedded default itself (its batch, data and lr 1e-3), a few steps of its real series."""
    overrides = [
        "trainer.max_steps=8",
        "trainer.log_every=1",
        "trainer.progress=false",
        "trainer.num_threads=1",
        "eval.generate=false",
        "eval.general_probe=false",
        "trainer.save_model=false",
        "tracking.enabled=false",
        f"output_dir={tmp_path / 'trial'}",
    ]
    result = run_trial(compose(overrides))
    err = capsys.readouterr().err
    assert WARNING not in err and TOY_WARNING not in err
    assert "divergence" not in [f["sign"] for f in result.diagnostics]
    losses = [v for _, v in result.series["train/loss"]]
    assert len(losses) == 8 and max(losses[2:]) < losses[0]  # it falls from its start, as expected


def test_a_real_model_with_the_toys_values_is_warned_of_before_training(
    tiny_overrides, embedded_model_path, monkeypatch, capsys
):
    from sweep_sft import modeling

    def no_model(*args, **kwargs):
        raise AssertionError("stop here: the model would load")

    monkeypatch.setattr(modeling, "load_model", no_model)
    folder = f"model.name_or_path={embedded_model_path}"  # not "embedded": a model of the user's
    with pytest.raises(AssertionError, match="stop here"):
        run_trial(compose([*tiny_overrides, folder]))
    err = capsys.readouterr().err
    assert f"warning: model.name_or_path={embedded_model_path} {TOY_WARNING} (lr=0.001, epochs=3," in err
    assert "pick model=local" in err
    with pytest.raises(AssertionError, match="stop here"):
        run_trial(compose([*tiny_overrides, "model=local", folder]))
    assert TOY_WARNING not in capsys.readouterr().err
