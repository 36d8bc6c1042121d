"""The objective check accepts every metric a trial writes to metrics.json (the trial's metric
names and the check's come from one place: sweep_sft.metrics)."""

from __future__ import annotations

import json

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.metrics import check_objective, headline_metrics, metric_names
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


def test_the_headline_is_the_tables_all_row_the_general_drop_and_the_objective():
    final = {
        "val/loss": 0.65,
        "val/loss/qa": 0.5,
        "task/exact_match": 0.41,
        "task/pass_at_4": 0.43,
        "task/pass_at_4/qa": 0.2,
        "task/train_recall": 0.40,
        "general_drop": 0.48,
        "data/examples/qa": 800.0,
    }
    assert headline_metrics(final, 0.65) == {
        "all/val_loss": 0.65,
        "all/exact_match": 0.41,
        "all/pass_at_4": 0.43,
        "all/train_recall": 0.40,
        "all/general_drop": 0.48,
        "all/objective": 0.65,
    }
    assert headline_metrics({"val/loss": 1.0}, None) == {"all/val_loss": 1.0}  # generation off: what there is
