"""A finished trial runs the loss-curve diagnostics on its own series: printed, tagged on its
MLflow run (diagnostics.<sign>, diagnostics.count) and kept in metrics.json."""

from __future__ import annotations

import json

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.trial.run import run_trial


@pytest.fixture
def ten_steps(tiny_overrides, tmp_path):
    # Ten logged train points: enough for the checks (min_points 8) to judge the curve.
    kept = [o for o in tiny_overrides if not o.startswith(("trainer.max_steps", "tracking.enabled"))]
    return [
        *kept,
        "trainer.max_steps=10",
        "eval.generate=false",
        "eval.general_probe=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def test_a_loss_below_the_floor_is_flagged_printed_and_tagged(ten_steps, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    # Any real loss is below a floor of 100: the sign must show, with its step and evidence.
    result = run_trial(compose([*ten_steps, "diagnostics.loss_floor=100"]))
    signs = [f["sign"] for f in result.diagnostics]
    assert "below_loss_floor" in signs
    assert "below_loss_floor" in capsys.readouterr().out
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["diagnostics"] == result.diagnostics
    tags = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.run_id).data.tags
    assert tags["diagnostics.count"] == str(len(signs))
    assert tags["diagnostics.below_loss_floor"].startswith("step ")


def test_the_floor_check_can_be_switched_off(ten_steps):
    result = run_trial(compose([*ten_steps, "diagnostics.loss_floor=null"]))
    assert "below_loss_floor" not in [f["sign"] for f in result.diagnostics]
