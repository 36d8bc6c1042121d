"""A user's general set (eval.general.source=<file>): every bad input is named with its file and line,
before a model loads, in a trial and in standalone evaluation; the eval.general keys are checked."""

from __future__ import annotations

import json

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError, DataError
from sweep_sft.evaluate.general_set import read_set
from sweep_sft.trial.run import run_trial

CHAT = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}
TEXT = {"text": "monday tuesday wednesday"}


def write(path, lines: list) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


BAD_SETS = [
    ([], r"general.jsonl: the general set is empty"),
    (["", "   "], r"general.jsonl: the general set is empty"),
    ([TEXT, "{not json"], r"general.jsonl:2: not valid JSON"),
    ([TEXT, {"prompt": "x"}], r'general.jsonl:2: expected a record with "text" .* or "messages".*keys \[.prompt.\]'),
    ([["a list"]], r"general.jsonl:1: expected a record with .*got list"),
    ([{"text": "  "}], r'general.jsonl:1: "text" must be a non-empty string'),
    ([{"messages": [{"role": "user", "content": "Hi"}]}], r"general.jsonl:1: the last turn is 'user'"),
    (
        [TEXT, {"messages": [*CHAT["messages"], {"role": "user", "content": "And?"}]}],
        r"general.jsonl:2: the last turn is 'user'.*ends in the assistant turn",
    ),
    ([{"messages": [{"role": "assistant", "content": "Hi"}]}], r"general.jsonl:1: only an assistant turn"),
    ([{"messages": [{"role": "robot", "content": "Hi"}]}], r"general.jsonl:1: messages\[0\] must be"),
    ([{"messages": []}], r'general.jsonl:1: "messages" must be a non-empty list'),
]


@pytest.mark.parametrize("lines,message", BAD_SETS)
def test_a_bad_general_set_is_named_with_its_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        read_set(write(tmp_path / "general.jsonl", lines))


def test_a_missing_general_set_names_the_key_and_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"eval.general.source=.*nope.jsonl: no such file; expected auto, embedded"):
        read_set(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"eval.general.source=.*: is not a file"):
        read_set(tmp_path)


def test_a_general_set_reads_texts_and_chats_and_keeps_the_first_max_items(tmp_path):
    path = write(tmp_path / "general.jsonl", [TEXT, "", CHAT, TEXT])
    items = read_set(path)
    assert [i.where for i in items] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert items[0].text == TEXT["text"] and items[0].messages is None
    assert items[1].messages == tuple(CHAT["messages"]) and items[1].text is None
    assert len(read_set(path, max_items=2)) == 2


@pytest.mark.parametrize(
    "override,message",
    [
        ("eval.general.source=''", "eval.general.source: expected auto, embedded, base_answers or a path"),
        ("eval.general.max_items=0", "eval.general.max_items must be >= 1"),
        ("eval.general.max_new_tokens=0", "eval.general.max_new_tokens must be >= 1"),
        ("eval.general.max_seq_len=1", "eval.general.max_seq_len must be >= 2"),
    ],
)
def test_eval_general_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose([override]))


def test_the_defaults_keep_the_switch_and_decide_the_source_by_model():
    config = validate(compose([]))
    assert config.eval.general_probe is True
    assert (config.eval.general.source, config.eval.general.max_items) == ("auto", None)


def forbid_model_loads(monkeypatch):
    from sweep_sft import modeling

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the general set was checked")

    monkeypatch.setattr(modeling, "load_model", no_model)


@pytest.mark.parametrize("lines,message", [BAD_SETS[0], BAD_SETS[2], BAD_SETS[3], BAD_SETS[7]])
def test_a_trial_with_a_bad_general_set_fails_before_the_model_loads(
    tmp_path, tiny_overrides, monkeypatch, lines, message
):
    forbid_model_loads(monkeypatch)
    path = write(tmp_path / "general.jsonl", lines)
    with pytest.raises(DataError, match=message):
        run_trial(compose(tiny_overrides + [f"eval.general.source={path}"]))
    assert not (tmp_path / "trial" / "dataset_stats.json").exists()  # before the data was prepared


def test_a_trial_with_a_missing_general_set_fails_before_the_model_loads(tmp_path, tiny_overrides, monkeypatch):
    forbid_model_loads(monkeypatch)
    with pytest.raises(DataError, match="eval.general.source=.*missing.jsonl: no such file"):
        run_trial(compose(tiny_overrides + [f"eval.general.source={tmp_path / 'missing.jsonl'}"]))


def test_the_general_set_is_not_read_when_the_probe_is_off(tmp_path, tiny_overrides, monkeypatch):
    from sweep_sft.trial.checks import check_early

    config = validate(compose(tiny_overrides + [f"eval.general.source={tmp_path / 'x'}", "eval.general_probe=false"]))
    check_early(config, tmp_path / "out")  # no error: nothing to score it with


def test_standalone_evaluation_checks_the_general_set_before_loading_a_model(tmp_path, monkeypatch):
    from sweep_sft.evaluate import standalone

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the general set was checked")

    monkeypatch.setattr(standalone, "load_trained", no_model)
    path = write(tmp_path / "general.jsonl", [TEXT, "{oops"])
    config = validate(compose([f"eval.general.source={path}"]))
    with pytest.raises(DataError, match=r"general.jsonl:2: not valid JSON"):
        standalone.evaluate(None, config)
