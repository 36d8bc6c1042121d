"""The objective check accepts every metric a trial writes to metrics.json (the trial's metric
names and the check's come from one place: sweep_sft.metrics)."""

from __future__ import annotations

import json

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.metrics import check_objective, metric_names
from sweep_sft.trial.run import run_trial

TASKS = ["classification/topic", "reasoning/addition"]


@pytest.mark.parametrize(
    "objective",
    [
        "train/grad_norm",
        "train/tokens_per_s",
        "general/base_score",
        "train/loss_weight_share/reasoning/addition",
        "data/token_share/classification/topic",
    ],
)
def test_an_objective_the_trial_writes_to_metrics_json_is_accepted(objective):
    config = validate(compose([f"objective={objective}"]))
    check_objective(config.objective, TASKS, config.eval)


def test_a_baseline_comparison_adds_its_metrics():
    config = validate(compose(["eval.baseline_run_id=some-run"]))
    names = metric_names(TASKS, config.eval)
    assert {"compare/regressions", "compare/delta/exact_match/reasoning/addition"} <= set(names)
    assert "compare/regressions" not in metric_names(TASKS, validate(compose([])).eval)


def test_every_metric_of_a_real_trials_metrics_json_is_accepted(tiny_overrides, tmp_path):
    """Every eval on (generation, pass@k, train recall, the general probe): each key of metrics.json
    is a metric the objective check knows, and each known metric is in metrics.json."""
    config = validate(compose(tiny_overrides))
    result = run_trial(config)
    written = json.loads((tmp_path / "trial" / "metrics.json").read_text())["metrics"]
    tasks = sorted({key.removeprefix("val/loss/") for key in written if key.startswith("val/loss/")})
    assert set(written) == set(metric_names(tasks, config.eval)) == set(result.metrics)
    for key in written:
        check_objective(key, tasks, config.eval)
