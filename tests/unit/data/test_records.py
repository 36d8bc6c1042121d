"""Tests for loading, validating and writing chat SFT records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import helpers
from sweep_sft.data.records import Example, load_jsonl, task_types, write_jsonl
from sweep_sft.errors import ConfigError, DataError, UserInputError

GOOD_MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    "task_type": "reasoning/addition",
}


def at(path: Path, line: int) -> str:
    """Regex for the path:line prefix every record error starts with."""
    return "^" + re.escape(f"{path}:{line}: ")


def messages_record(**overrides: object) -> dict:
    record = json.loads(json.dumps(GOOD_MESSAGES))
    record.update(overrides)
    return record


# --- formats -----------------------------------------------------------------


def test_messages_format_loads_exact_messages(tmp_path: Path) -> None:
    record = messages_record(extra_key="ignored", tags=["robustness", "math"])
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    [ex] = load_jsonl(path, fmt="messages")
    assert ex == Example(
        messages=(
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ),
        task_type="reasoning/addition",
        source=f"{path}:1",
        tags=("robustness", "math"),
    )


def test_messages_drop_extra_message_keys(tmp_path: Path) -> None:
    record = messages_record(
        messages=[
            {"role": "user", "content": "hi", "name": "bob"},
            {"role": "assistant", "content": "hello", "weight": 1},
        ]
    )
    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [record]))
    assert ex.messages == (
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    )


def test_alpaca_with_input_and_system(tmp_path: Path) -> None:
    record = {
        "instruction": "Add the numbers.",
        "input": "2 and 3",
        "output": "5",
        "system": "You are a calculator.",
        "task_type": "reasoning/addition",
    }
    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [record]), fmt="alpaca")
    assert ex.messages == (
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    )
    assert ex.task_type == "reasoning/addition"
    assert ex.tags == ()


@pytest.mark.parametrize("extra", [{"input": ""}, {}])
def test_alpaca_without_input_uses_instruction_only(tmp_path: Path, extra: dict) -> None:
    record = {"instruction": "Say hi.", "output": "Hi!", "task_type": "chat", **extra}
    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [record]))
    assert ex.messages == (
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    )


def test_sharegpt_maps_roles(tmp_path: Path) -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "user", "value": "q2"},
            {"from": "assistant", "value": "a2"},
        ],
        "task_type": "dialog",
        "tags": ["multi_turn"],
    }
    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [record]), fmt="sharegpt")
    assert ex.messages == (
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    )
    assert ex.tags == ("multi_turn",)


def test_sharegpt_top_level_system_comes_first(tmp_path: Path) -> None:
    record = {
        "system": "Top system.",
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        "task_type": "dialog",
    }
    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [record]))
    assert ex.messages[0] == {"role": "system", "content": "Top system."}
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]


def test_auto_detects_each_record_in_mixed_file(tmp_path: Path) -> None:
    lines = [
        messages_record(),
        {"instruction": "i", "output": "o", "task_type": "alp"},
        {
            "conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}],
            "task_type": "share/gpt",
        },
        # messages wins over the other keys when several are present
        messages_record(instruction="ignored", conversations="ignored"),
    ]
    path = helpers.write_jsonl(tmp_path / "data.jsonl", lines)
    examples = load_jsonl(path)
    assert [ex.task_type for ex in examples] == [
        "reasoning/addition",
        "alp",
        "share/gpt",
        "reasoning/addition",
    ]
    assert examples[1].messages == (
        {"role": "user", "content": "i"},
        {"role": "assistant", "content": "o"},
    )
    assert examples[2].messages == (
        {"role": "user", "content": "h"},
        {"role": "assistant", "content": "g"},
    )
    assert examples[3].messages == examples[0].messages
    assert [ex.source for ex in examples] == [f"{path}:{n}" for n in range(1, 5)]


def test_conversations_beat_instruction_in_auto(tmp_path: Path) -> None:
    record = {
        "conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}],
        "instruction": "not used",
        "output": "not used",
        "task_type": "t",
    }
    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [record]))
    assert ex.messages[0] == {"role": "user", "content": "h"}


def test_declared_format_mismatch(tmp_path: Path) -> None:
    alpaca = {"instruction": "i", "output": "o", "task_type": "t"}
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), alpaca])
    with pytest.raises(DataError, match=at(path, 2)) as info:
        load_jsonl(path, fmt="messages")
    message = str(info.value)
    assert "data.mix.sources.<name>.format" in message
    assert "'messages'" in message and "'alpaca'" in message


def test_unknown_declared_format_is_config_error(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record()])
    with pytest.raises(ConfigError, match="data.mix.sources.<name>.format.*'openai'"):
        load_jsonl(path, fmt="openai")


# --- task_type and tags --------------------------------------------------------


def test_default_task_type_fills_missing_only(tmp_path: Path) -> None:
    no_type = messages_record()
    del no_type["task_type"]
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [no_type, messages_record(task_type="own")])
    examples = load_jsonl(path, default_task_type="general")
    assert [ex.task_type for ex in examples] == ["general", "own"]


def test_missing_task_type_without_default(tmp_path: Path) -> None:
    no_type = messages_record()
    del no_type["task_type"]
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), no_type])
    with pytest.raises(DataError, match=at(path, 2) + ".*task_type.*data.mix.sources.<name>.default_task_type"):
        load_jsonl(path)


@pytest.mark.parametrize("bad", ["", "a/b/c", "a//", "/b", "a/", 7, None, " a"])
def test_bad_task_type(tmp_path: Path, bad: object) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(task_type=bad)])
    with pytest.raises(DataError, match=at(path, 1) + "task_type"):
        load_jsonl(path)


def test_bad_default_task_type_is_config_error(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record()])
    with pytest.raises(ConfigError, match="data.mix.sources.<name>.default_task_type"):
        load_jsonl(path, default_task_type="a/b/c")


@pytest.mark.parametrize("bad", ["robustness", [1], {"a": 1}])
def test_bad_tags(tmp_path: Path, bad: object) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(tags=bad)])
    with pytest.raises(DataError, match=at(path, 1) + "'tags' must be a list of strings"):
        load_jsonl(path)


def test_task_types_sorted_unique(tmp_path: Path) -> None:
    path = helpers.write_jsonl(
        tmp_path / "data.jsonl",
        [messages_record(task_type=t) for t in ["b/x", "a", "b/x", "a/y"]],
    )
    assert task_types(load_jsonl(path)) == ["a", "a/y", "b/x"]


# --- file-level errors -------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*not found"):
        load_jsonl(path)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_jsonl(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*no records"):
        load_jsonl(path)


def test_errors_are_user_input_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError):
        load_jsonl(tmp_path / "missing.jsonl")


# --- record-level errors -----------------------------------------------------------


def test_malformed_json_includes_decoder_text(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), '{"messages": [}'])
    with pytest.raises(DataError, match=at(path, 2) + r"malformed JSON \(Expecting value"):
        load_jsonl(path)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "str"), ("3", "int")])
def test_json_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [line])
    with pytest.raises(DataError, match=at(path, 1) + f"expected a JSON object, got {kind}"):
        load_jsonl(path)


def test_record_without_known_keys(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError, match=at(path, 1)) as info:
        load_jsonl(path)
    message = str(info.value)
    for key in ("'messages'", "'conversations'", "'instruction'", "'prompt'"):
        assert key in message


@pytest.mark.parametrize("messages", [[], "hello", None, {"role": "user"}])
def test_messages_not_non_empty_list(tmp_path: Path, messages: object) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(messages=messages)])
    with pytest.raises(DataError, match=at(path, 1) + "'messages' must be a non-empty list"):
        load_jsonl(path)


@pytest.mark.parametrize(
    "message, expected",
    [
        ("hello", r"messages\[0\]: expected an object, got str"),
        ({"content": "x"}, r"messages\[0\]: expected string 'role', got missing"),
        ({"role": "user", "content": 5}, r"messages\[0\]: expected string 'content', got int"),
    ],
)
def test_malformed_message(tmp_path: Path, message: object, expected: str) -> None:
    record = messages_record(messages=[message, {"role": "assistant", "content": "a"}])
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + expected):
        load_jsonl(path)


def test_unknown_role_lists_allowed(tmp_path: Path) -> None:
    record = messages_record(messages=[{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}])
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + ".*'human'.*allowed roles: system, user, assistant"):
        load_jsonl(path)


def test_unknown_sharegpt_role(tmp_path: Path) -> None:
    record = {
        "conversations": [{"from": "bot", "value": "q"}, {"from": "gpt", "value": "a"}],
        "task_type": "t",
    }
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + r"conversations\[0\]: unknown role 'bot'"):
        load_jsonl(path)


@pytest.mark.parametrize("content", ["", "  \n\t"])
def test_empty_assistant_turn(tmp_path: Path, content: str) -> None:
    record = messages_record(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ]
    )
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + "message 1: assistant turn is empty"):
        load_jsonl(path)


def test_empty_alpaca_output(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [{"instruction": "i", "output": " ", "task_type": "t"}])
    with pytest.raises(DataError, match=at(path, 1) + ".*assistant turn is empty"):
        load_jsonl(path)


def test_last_message_not_assistant(tmp_path: Path) -> None:
    record = messages_record(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "dangling"},
        ]
    )
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + "last message has role 'user'; expected an assistant"):
        load_jsonl(path)


def test_no_user_turn(tmp_path: Path) -> None:
    record = messages_record(messages=[{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}])
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + "conversation has no user turn"):
        load_jsonl(path)


def test_alpaca_missing_output(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [{"instruction": "i", "task_type": "t"}])
    with pytest.raises(DataError, match=at(path, 1) + "record: expected string 'output'"):
        load_jsonl(path)


# --- line numbers and round trip ----------------------------------------------------


def test_blank_lines_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    good = json.dumps(GOOD_MESSAGES)
    path.write_text(f"\n{good}\n\n   \n{good}\n\n{{broken\n", encoding="utf-8")
    with pytest.raises(DataError, match=at(path, 7) + "malformed JSON"):
        load_jsonl(path)
    path.write_text(f"\n{good}\n\n   \n{good}\n\n", encoding="utf-8")
    examples = load_jsonl(path)
    assert [ex.source for ex in examples] == [f"{path}:2", f"{path}:5"]


def test_round_trip(tmp_path: Path) -> None:
    originals = [
        Example(
            messages=(
                {"role": "system", "content": "Réponds en français."},
                {"role": "user", "content": "line\u2028sep and\nnewline 日本"},
                {"role": "assistant", "content": "ok"},
            ),
            task_type="lang/fr",
            source="x:1",
            tags=("robustness",),
        ),
        Example(
            messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}),
            task_type="plain",
            source="x:2",
        ),
    ]
    path = tmp_path / "out.jsonl"
    write_jsonl(path, originals)

    raw = path.read_text(encoding="utf-8").split("\n")
    assert raw[-1] == "" and len(raw) == 3
    assert "Réponds" in raw[0] and "日本" in raw[0]  # ensure_ascii=False
    assert "tags" not in json.loads(raw[1])

    loaded = load_jsonl(path, fmt="messages")
    assert [(e.messages, e.task_type, e.tags) for e in loaded] == [(e.messages, e.task_type, e.tags) for e in originals]
    assert [e.source for e in loaded] == [f"{path}:1", f"{path}:2"]


# --- what the tokenizer, MLflow and a chat template can take (issue 13) ----------------------


@pytest.mark.parametrize("bad", ["qa/<b>", "qa/a>b", 'qa/"x"', "qa/..", "../x", "qa/.", "qa/$\\x$", "a\\b"])
def test_task_type_with_a_character_mlflow_refuses(tmp_path: Path, bad: str) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), messages_record(task_type=bad)])
    with pytest.raises(DataError, match=at(path, 2) + r"task_type: .*MLflow refuses .*allowed: letters, digits"):
        load_jsonl(path)


@pytest.mark.parametrize("good", ["qa/x y", "élan/x-1.2", "a..b/c_d", "日本/x", "gsm8k:main/cot"])
def test_task_type_with_the_characters_mlflow_takes(tmp_path: Path, good: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    [ex] = load_jsonl(helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(task_type=good)]))
    assert ex.task_type == good
    _validate_metric_name(f"val/loss/{good}")  # what the trial logs


def test_task_type_too_long_for_a_metric_name(tmp_path: Path) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(task_type="a/" + "x" * 250)])
    with pytest.raises(DataError, match=at(path, 1) + r"task_type: .*has 252 characters; expected at most 200"):
        load_jsonl(path)


@pytest.mark.parametrize(
    "line, key",
    [
        ('{"task_type": "a", "task_type": "b", "messages": []}', "task_type"),
        ('{"task_type": "a", "messages": [{"role": "user", "role": "assistant", "content": "x"}]}', "role"),
    ],
)
def test_duplicate_key_is_named(tmp_path: Path, line: str, key: str) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), line])
    expected = f"duplicate key '{key}' in one JSON object; expected each key once"
    with pytest.raises(DataError, match=at(path, 2) + expected):
        load_jsonl(path)


def test_lone_surrogate_is_named_with_its_field(tmp_path: Path) -> None:
    line = json.dumps(messages_record()).replace('"4"', '"4\\udc00"')
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), line])
    expected = r"messages\[2\]\.content: lone surrogate '\\udc00' at character 1"
    with pytest.raises(DataError, match=at(path, 2) + expected):
        load_jsonl(path)
    # A pair of escapes is one character, and fine.
    line = json.dumps(messages_record()).replace('"4"', '"4 \\ud83d\\ude00"')
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [line])
    assert load_jsonl(path)[0].messages[2]["content"] == "4 \U0001f600"


def test_bad_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    good = json.dumps(GOOD_MESSAGES).encode()
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + good + b"\r" + good.replace(b"2+2", b"2\xd72") + b"\n")
    with pytest.raises(DataError, match=at(path, 3) + "not valid UTF-8 .*byte d7 at byte .*; expected UTF-8 text"):
        load_jsonl(path)
    # A byte-order mark, \r\n and lone \r line ends (text mode's newlines) and U+2028 inside a string.
    separator = good.replace(b"2+2", "2\u20282".encode())
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + good + b"\r" + separator + b"\n")
    assert [e.source for e in load_jsonl(path)] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert load_jsonl(path)[2].messages[1]["content"] == "2\u20282?"


def _turns(*roles: str) -> list[dict]:
    return [{"role": role, "content": f"{role} {i}"} for i, role in enumerate(roles)]


@pytest.mark.parametrize(
    "roles, expected",
    [
        (("assistant", "user", "assistant"), "message 0: the conversation starts with an assistant turn"),
        (("system", "assistant", "user", "assistant"), "message 1: the conversation starts with an assistant turn"),
        (("user", "system", "assistant"), "message 1: system turn after the first message"),
        (("system", "system", "user", "assistant"), "message 1: system turn after the first message"),
    ],
)
def test_role_order_errors(tmp_path: Path, roles: tuple[str, ...], expected: str) -> None:
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), messages_record(messages=_turns(*roles))])
    with pytest.raises(DataError, match=at(path, 2) + expected):
        load_jsonl(path)


def test_two_turns_of_one_role_in_a_row_warn_with_their_lines(tmp_path: Path, capsys) -> None:
    twice = messages_record(messages=_turns("user", "user", "assistant"))
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(), twice, messages_record(), twice])
    assert len(load_jsonl(path)) == 4  # kept: a template may still render them
    err = capsys.readouterr().err
    assert err == (
        f"warning: {path}: line 2, 4: two user turns in a row (messages 0 and 1); "
        "expected user and assistant turns to alternate\n"
    )


def test_sharegpt_role_order_is_checked_after_conversion(tmp_path: Path) -> None:
    record = {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], "task_type": "t"}
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError, match=at(path, 1) + "message 0: the conversation starts with an assistant turn"):
        load_jsonl(path)


def test_weight_zero_is_kept_and_weight_one_is_the_default(tmp_path: Path) -> None:
    turns = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "weight": 0},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2", "weight": 1},
    ]
    sharegpt = {
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "weight": 0}]
        + [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}],
        "task_type": "t",
    }
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(messages=turns), sharegpt])
    first, second = load_jsonl(path)
    assert first.messages[1] == {"role": "assistant", "content": "a1", "weight": 0}
    assert first.messages[3] == {"role": "assistant", "content": "a2"}
    assert second.messages[1] == {"role": "assistant", "content": "a", "weight": 0}
    write_jsonl(tmp_path / "out.jsonl", [first])
    assert load_jsonl(tmp_path / "out.jsonl")[0].messages == first.messages


@pytest.mark.parametrize(
    "message, expected",
    [
        ({"role": "assistant", "content": "a", "weight": 0.5}, r"messages\[1\]: weight must be 0 .* or 1 .*, got 0.5"),
        ({"role": "assistant", "content": "a", "weight": True}, r"messages\[1\]: weight must be 0 .* got True"),
        ({"role": "assistant", "content": "a", "weight": "0"}, r"messages\[1\]: weight must be 0 .* got '0'"),
        ({"role": "assistant", "content": "a", "weight": 0}, "every assistant turn has weight 0"),
    ],
)
def test_bad_weight(tmp_path: Path, message: dict, expected: str) -> None:
    turns = [{"role": "user", "content": "q"}, message]
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(messages=turns)])
    with pytest.raises(DataError, match=at(path, 1) + expected):
        load_jsonl(path)


def test_weight_on_a_user_turn(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]
    path = helpers.write_jsonl(tmp_path / "data.jsonl", [messages_record(messages=turns)])
    with pytest.raises(DataError, match=at(path, 1) + r"messages\[0\]: 'weight' is set on a 'user' turn"):
        load_jsonl(path)


def test_a_copy_trained_on_other_turns_is_no_duplicate() -> None:
    from sweep_sft.data.dedup import deduplicate

    turns = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    untrained_first = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0})
    examples = [Example(turns + turns, "t", "s:1"), Example(untrained_first + turns, "t", "s:2")]
    kept, stats = deduplicate([*examples, Example(turns + turns, "t", "s:3")], near_threshold=None)
    assert kept == examples and stats.exact == {"t": 1}
