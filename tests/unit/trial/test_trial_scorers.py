"""Scorers in a trial: a scorer that cannot work fails before the tokenizer or the model loads,
naming eval.scorers.<pattern>; a short trial writes every greedy generation to
generations.jsonl, scores its metrics with each task_type's scorer and names the scorers in its
table; the run gets the same file and a scorer tag per task_type."""

from __future__ import annotations

import json
import re

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.config.schema import EvalConfig
from sweep_sft.data.records import Example
from sweep_sft.errors import ConfigError
from sweep_sft.names import GENERATIONS_FILE
from sweep_sft.trial.checks import check_scorers
from sweep_sft.trial.generations import record_generations
from sweep_sft.trial.run import run_trial


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading the tokenizer or the model fails the test: what is checked must be checked first."""
    from sweep_sft import modeling

    def forbidden(*args, **kwargs):
        raise AssertionError("the tokenizer or the model loaded before the scorers were checked")

    monkeypatch.setattr(modeling, "load_tokenizer", forbidden)
    monkeypatch.setattr(modeling, "load_model", forbidden)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "trial_scorers.py").write_text(
        "LIMIT = 1\n\ndef too_big(generated, reference):\n    return 2\n\n"
        "def fails(generated, reference):\n    raise KeyError('oops')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "trial_scorers", raising=False)


@pytest.mark.parametrize(
    "scorers,message",
    [
        ("{classification/*: nope}", "eval.scorers.classification/*: unknown scorer 'nope'; the scorers are exact,"),
        ('{x: "regex:[a-"}', "eval.scorers.x=regex:[a-: not a valid regular expression"),
        ("{x: no_such_scorer_module:f}", "eval.scorers.x=no_such_scorer_module:f: cannot import no_such_scorer_module"),
        ("{x: trial_scorers:LIMIT}", "eval.scorers.x=trial_scorers:LIMIT: LIMIT is a int, not a function"),
        ("{x: trial_scorers:missing}", "eval.scorers.x=trial_scorers:missing: trial_scorers has no missing"),
        (
            "{classification/*: trial_scorers:too_big}",
            "eval.scorers.classification/*=trial_scorers:too_big: failed on a reference of task_type "
            "classification/sentiment: ValueError: eval.scorers.classification/*=trial_scorers:too_big returned 2",
        ),
        (
            "{transform/*: trial_scorers:fails}",
            "eval.scorers.transform/*=trial_scorers:fails: failed on a reference of task_type transform/copy: "
            "KeyError: 'oops'",
        ),
        (
            "{classification/*: json_equal}",
            "eval.scorers.classification/*=json_equal: a validation reference of task_type classification/sentiment "
            "(source *validation.jsonl:1) is not JSON: 'positive'",
        ),
    ],
)
def test_a_scorer_that_cannot_work_fails_before_anything_loads(
    tiny_overrides, tmp_path, nothing_loads, user_module, scorers, message
):
    # `*` in a message: any text there (the data file's path); every other character as it is.
    with pytest.raises(ConfigError, match=".*".join(map(re.escape, message.split(" *")))):
        run_trial(compose(tiny_overrides + [f"eval.scorers={scorers}"]))
    assert not (tmp_path / "trial" / "dataset_stats.json").exists()


def test_a_pattern_that_matches_no_task_type_is_named(capsys):
    val = [Example(({"role": "user", "content": "q"}, {"role": "assistant", "content": "{}"}), "format/json", "s")]
    check_scorers(EvalConfig(scorers={"format/*": "json_equal", "summ*": "chrf"}), ["format/json"], val)
    err = capsys.readouterr().err
    assert "warning: eval.scorers.summ*: matches no task_type of the data (format/json)" in err
    assert "format/*" not in err


def test_a_training_reference_that_is_no_json_is_named_too():
    """Train recall scores trained answers with the same scorer: they must parse as well."""

    def example(answer: str, source: str) -> Example:
        return Example(({"role": "user", "content": "q"}, {"role": "assistant", "content": answer}), "f/j", source)

    ev = EvalConfig(scorers={"f/*": "json_equal"})
    val = [example('{"a": 1}', "v.jsonl:1")]
    check_scorers(ev, ["f/j"], val, [example("[1]", "t.jsonl:1")])
    message = r"eval.scorers.f/\*=json_equal: a training reference of task_type f/j \(source t.jsonl:2\) is not JSON"
    with pytest.raises(ConfigError, match=message):
        check_scorers(ev, ["f/j"], val, [example("[1]", "t.jsonl:1"), example("oops", "t.jsonl:2")])


def test_scorer_patterns_are_logged_as_one_param_mlflow_takes():
    """`*` is no character of an MLflow param name: the mapping is one JSON param, in its order."""
    from sweep_sft.tracking.client import flatten

    params = flatten({"eval": {"scorers": {"summ*": "chrf", "a/b": "exact"}, "pass_k": 4}})
    assert params == {"eval.scorers": '{"summ*": "chrf", "a/b": "exact"}', "eval.pass_k": "4"}
    assert flatten({"eval": {"scorers": {"qa/x": "chrf"}}}) == {"eval.scorers.qa/x": "chrf"}


class FakeRun:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.texts: dict[str, str] = {}

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def log_text(self, text: str, name: str) -> None:
        self.texts[name] = text


def test_the_run_gets_the_file_and_a_scorer_tag_per_task_type(tmp_path):
    run = FakeRun()
    records = [{"split": "validation", "task_type": "a/b", "generated": "é", "score": 1.0, "scorer": "chrf"}]
    record_generations(tmp_path, run, records, EvalConfig(scorers={"a/*": "chrf"}), ["a/b", "c"])
    assert run.tags == {"sweep_sft.scorer.a/b": "chrf", "sweep_sft.scorer.c": "exact"}
    text = (tmp_path / GENERATIONS_FILE).read_text(encoding="utf-8")
    assert run.texts == {GENERATIONS_FILE: text} and [json.loads(line) for line in text.splitlines()] == records
    assert "é" in text  # as it is, not \\u00e9


def test_a_short_trial_writes_its_generations_and_scores_with_each_task_types_scorer(tiny_overrides, tmp_path, capsys):
    scorers = 'eval.scorers={format/*: json_valid, reasoning/*: "regex:(\\d+)", classification/*: normalized}'
    result = run_trial(compose(tiny_overrides + ["trainer.max_steps=1", scorers, "eval.general_probe=false"]))
    lines = (tmp_path / "trial" / GENERATIONS_FILE).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"split", "task_type", "prompt", "reference", "generated", "score", "scorer"} for r in records)
    val = [r for r in records if r["split"] == "validation"]
    train = [r for r in records if r["split"] == "train"]
    tasks = sorted({r["task_type"] for r in val})
    assert len(val) == 4 * len(tasks) == 32  # data.max_val_per_task=4, 8 task_types
    assert 0 < len(train) <= 4 * len(tasks)  # eval.train_recall_examples=4
    expected = {"format/json": "json_valid", "reasoning/addition": "regex:(\\d+)", "transform/copy": "exact"}
    expected |= {"classification/sentiment": "normalized", "classification/topic": "normalized"}
    for r in records:
        assert r["scorer"] == expected.get(r["task_type"], "exact")
        assert isinstance(r["prompt"], list) and r["prompt"][-1]["role"] == "user"
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["scorers"] == {task: expected.get(task, "exact") for task in tasks}
    assert saved["general_source"] is None  # eval.general_probe=false
    for task in tasks:
        scores = [r["score"] for r in val if r["task_type"] == task]
        assert result.metrics[f"task/exact_match/{task}"] == pytest.approx(sum(scores) / len(scores))
        recalled = [r["score"] for r in train if r["task_type"] == task]
        if recalled:
            assert result.metrics[f"task/train_recall/{task}"] == pytest.approx(sum(recalled) / len(recalled))
    out = capsys.readouterr().out
    table = out[out.index("task_type                  train ex") :]
    assert "score" in table.splitlines()[0] and table.splitlines()[0].endswith("  scorer")
    assert re.search(r"^format/json .*  json_valid$", table, re.M)
    assert re.search(r"^transform/copy .*  exact$", table, re.M)
    assert "final evaluation: exact match over 32 prompts in" in out  # trainer.progress=false: lines


def test_a_baseline_measured_differently_is_compared_with_notes_not_regressions(tiny_overrides, tmp_path):
    """The baseline scored format/json with json_valid and probed base_answers; this trial scores
    it exact and probes the embedded set: neither difference is taken for a regression."""
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    metrics = {"task/exact_match/format/json": 1.0, "general_drop": -1.0}
    record = {"metrics": metrics, "scorers": {"format/json": "json_valid"}, "general_source": "base_answers"}
    (baseline / "metrics.json").write_text(json.dumps(record))
    run_trial(compose(tiny_overrides + ["trainer.max_steps=1", f"eval.baseline_run_id={baseline}"]))
    text = (tmp_path / "trial" / "comparison.txt").read_text()
    assert re.search(r"^format/json .* n/c  not comparable: scorer json_valid \(A\) vs exact \(B\)$", text, re.M)
    assert "not comparable: general probe base_answers (A) vs embedded (B)" in text
    assert "no regression beyond the tolerances" in text
