"""A trial compared with eval.baseline_run_id: a task_type the baseline scored with another
scorer, or a general_drop on another general set, is marked not comparable in comparison.txt,
flagged as no regression and given no compare/delta metric; a baseline that does not say
(written before either was recorded) is compared as before."""

from __future__ import annotations

import json

import pytest

from sweep_sft.compare import Side
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.evaluate.baseline import COMPARISON_FILE, load_baseline, record

MEASURED = {
    "val/loss/summarize/news": 2.0,
    "task/exact_match/summarize/news": 0.60,
    "val/loss/classification/topic": 0.5,
    "task/exact_match/classification/topic": 0.90,
    "general_drop": 0.01,
}


class FakeRun:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def log_text(self, text: str, name: str) -> None:
        pass


def baseline_folder(tmp_path, **extra) -> str:
    folder = tmp_path / "baseline"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"metrics": MEASURED, **extra}))
    return str(folder)


def compared(tmp_path, ref: str, trial: Side) -> tuple[dict[str, float], str, FakeRun]:
    config = validate(compose([f"eval.baseline_run_id={ref}"]))
    baseline = load_baseline(config)
    out = tmp_path / "trial"
    out.mkdir()
    run = FakeRun()
    metrics = record(config, baseline, trial, out, run)
    return metrics, (out / COMPARISON_FILE).read_text(), run


def test_a_task_type_and_a_general_set_measured_differently_are_not_compared(tmp_path, capsys):
    scorers = {"summarize/news": "exact", "classification/topic": "exact"}
    ref = baseline_folder(tmp_path, scorers=scorers, general_source="embedded")
    # Under chrF the summaries score lower than the baseline's exact match, and the drop is on another set.
    trial = Side(
        {**MEASURED, "task/exact_match/summarize/news": 0.30, "general_drop": 0.2},
        {**scorers, "summarize/news": "chrf"},
        "base_answers",
    )
    metrics, text, run = compared(tmp_path, ref, trial)
    assert "not comparable: scorer exact (A) vs chrf (B)" in text
    assert "not comparable: general probe embedded (A) vs base_answers (B)" in text
    assert "no regression beyond the tolerances" in text and run.tags["compare.regressions"] == "none"
    assert "compare/delta/exact_match/summarize/news" not in metrics
    assert metrics["compare/delta/exact_match/classification/topic"] == 0.0
    assert metrics["compare/delta/val_loss/summarize/news"] == 0.0  # val loss is compared still
    assert "not comparable: scorer exact (A) vs chrf (B)" in capsys.readouterr().out


def test_a_baseline_that_does_not_say_is_compared_as_before(tmp_path):
    ref = baseline_folder(tmp_path)
    trial = Side({**MEASURED, "task/exact_match/summarize/news": 0.30}, {"summarize/news": "chrf"}, "base_answers")
    metrics, text, run = compared(tmp_path, ref, trial)
    assert "not comparable" not in text
    assert run.tags["compare.regressions"] == "summarize/news"
    assert metrics["compare/delta/exact_match/summarize/news"] == pytest.approx(-0.30)
