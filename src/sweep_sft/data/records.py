"""Chat SFT examples loaded from JSONL files in messages, alpaca or sharegpt form."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep_sft.errors import ConfigError, DataError

FORMATS = ("messages", "alpaca", "sharegpt")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
# Checked in this order so a record carrying several keys gets the richest format.
FORMAT_KEYS = (("messages", "messages"), ("conversations", "sharegpt"), ("instruction", "alpaca"))


@dataclass(frozen=True)
class Example:
    messages: tuple[dict[str, str], ...]
    task_type: str
    source: str
    tags: tuple[str, ...] = ()


class _RecordError(Exception):
    """A problem with one record; load_jsonl prefixes it with path:line."""


def load_jsonl(path: str | Path, fmt: str = "auto", default_task_type: str | None = None) -> list[Example]:
    """Load every non-blank line of a JSONL file as an Example."""
    path = Path(path)
    _check_format_name(fmt)
    if default_task_type is not None:
        _check_default_task_type(default_task_type)
    examples = []
    for lineno, line in _numbered_lines(path):
        try:
            examples.append(_parse_line(line, fmt, default_task_type, f"{path}:{lineno}"))
        except _RecordError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
    if not examples:
        raise DataError(f"{path}: no records found (file is empty or only blank lines)")
    return examples


def task_types(examples: Iterable[Example]) -> list[str]:
    """Sorted unique task types."""
    return sorted({ex.task_type for ex in examples})


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    """Write examples in messages form, one JSON object per line."""
    # newline="\n" so files written on Windows stay byte-identical.
    with Path(path).open("w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            record: dict[str, Any] = {
                "messages": [dict(m) for m in ex.messages],
                "task_type": ex.task_type,
            }
            if ex.tags:
                record["tags"] = list(ex.tags)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _check_format_name(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        allowed = ", ".join(("auto",) + FORMATS)
        raise ConfigError(f"data.mix.sources.<name>.format: unknown format {fmt!r}; expected one of {allowed}")


def _check_default_task_type(task_type: str) -> None:
    problem = _task_type_problem(task_type)
    if problem:
        raise ConfigError(f"data.mix.sources.<name>.default_task_type: {problem}")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for non-blank lines."""
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a JSONL file, found a directory or special file")
    # Text-mode iteration splits only on \n, \r and \r\n, unlike str.splitlines,
    # which would also break on U+2028 left unescaped inside JSON strings.
    # utf-8-sig tolerates a byte-order mark written by some editors.
    try:
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from None


def _parse_line(line: str, fmt: str, default_task_type: str | None, source: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise _RecordError(f"malformed JSON ({err})") from None
    if not isinstance(record, dict):
        raise _RecordError(f"expected a JSON object, got {type(record).__name__}")
    found = _detect_format(record)
    if fmt != "auto" and found != fmt:
        raise _RecordError(
            f"data.mix.sources.<name>.format is {fmt!r} but this record looks like {found!r} format; "
            f"convert the file or set data.mix.sources.<name>.format to 'auto'"
        )
    messages = _CONVERTERS[found](record)
    _check_conversation(messages)
    return Example(
        messages=messages,
        task_type=_task_type(record, default_task_type),
        source=source,
        tags=_tags(record),
    )


def _detect_format(record: dict[str, Any]) -> str:
    for key, fmt in FORMAT_KEYS:
        if key in record:
            return fmt
    keys = ", ".join(repr(k) for k, _ in FORMAT_KEYS)
    found = ", ".join(repr(k) for k in record) or "none"
    raise _RecordError(f"expected one of the keys {keys}; record has keys: {found}")


def _from_messages(record: dict[str, Any]) -> tuple[dict[str, str], ...]:
    raw = _non_empty_list(record, "messages")
    messages = []
    for i, msg in enumerate(raw):
        role = _string_field(msg, "role", f"messages[{i}]")
        content = _string_field(msg, "content", f"messages[{i}]")
        if role not in ROLES:
            raise _RecordError(f"messages[{i}]: unknown role {role!r}; allowed roles: {', '.join(ROLES)}")
        messages.append({"role": role, "content": content})
    return tuple(messages)


def _from_sharegpt(record: dict[str, Any]) -> tuple[dict[str, str], ...]:
    raw = _non_empty_list(record, "conversations")
    messages = _optional_system(record)
    for i, turn in enumerate(raw):
        speaker = _string_field(turn, "from", f"conversations[{i}]")
        value = _string_field(turn, "value", f"conversations[{i}]")
        if speaker not in SHAREGPT_ROLES:
            allowed = ", ".join(SHAREGPT_ROLES)
            raise _RecordError(f"conversations[{i}]: unknown role {speaker!r}; allowed roles: {allowed}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return tuple(messages)


def _from_alpaca(record: dict[str, Any]) -> tuple[dict[str, str], ...]:
    instruction = _string_field(record, "instruction", "record")
    output = _string_field(record, "output", "record")
    extra = _string_field(record, "input", "record") if "input" in record else ""
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = _optional_system(record)
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    return tuple(messages)


_CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}


def _optional_system(record: dict[str, Any]) -> list[dict[str, str]]:
    if "system" not in record:
        return []
    return [{"role": "system", "content": _string_field(record, "system", "record")}]


def _non_empty_list(record: dict[str, Any], key: str) -> list[Any]:
    value = record[key]
    if not isinstance(value, list) or not value:
        raise _RecordError(f"{key!r} must be a non-empty list of message objects")
    return value


def _string_field(obj: Any, key: str, where: str) -> str:
    if not isinstance(obj, dict):
        raise _RecordError(f"{where}: expected an object, got {type(obj).__name__}")
    value = obj.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in obj else type(value).__name__
        raise _RecordError(f"{where}: expected string {key!r}, got {got}")
    return value


def _check_conversation(messages: tuple[dict[str, str], ...]) -> None:
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant" and not msg["content"].strip():
            raise _RecordError(f"message {i}: assistant turn is empty; expected a non-empty reply")
    if messages[-1]["role"] != "assistant":
        raise _RecordError(f"last message has role {messages[-1]['role']!r}; expected an assistant turn last")
    if not any(msg["role"] == "user" for msg in messages):
        raise _RecordError("conversation has no user turn; expected at least one")


def _task_type(record: dict[str, Any], default: str | None) -> str:
    if "task_type" not in record:
        if default is None:
            raise _RecordError(
                "record has no 'task_type'; add task_type to the record "
                "or set data.mix.sources.<name>.default_task_type"
            )
        return default
    value = record["task_type"]
    problem = _task_type_problem(value)
    if problem:
        raise _RecordError(f"task_type: {problem}")
    return value


def _task_type_problem(value: Any) -> str | None:
    """Why value is not a valid task type, or None if it is."""
    if not isinstance(value, str) or not value:
        return f"expected a non-empty string like 'reasoning/addition', got {value!r}"
    levels = value.split("/")
    if len(levels) > 2:
        return f"{value!r} has {len(levels)} levels; expected 'a' or 'a/b'"
    if any(not level.strip() or level != level.strip() for level in levels):
        return f"{value!r} has an empty or space-padded level; expected 'a' or 'a/b'"
    return None


def _tags(record: dict[str, Any]) -> tuple[str, ...]:
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _RecordError(f"'tags' must be a list of strings, got {tags!r}")
    return tuple(tags)


def first_per_task(examples: list[Example], n: int | None) -> list[Example]:
    """The first `n` examples of each task_type, in file order (all of them when n is None)."""
    if n is None:
        return list(examples)
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for example in examples:
        seen[example.task_type] += 1
        if seen[example.task_type] <= n:
            kept.append(example)
    return kept
