"""Chat SFT examples loaded from JSONL files in messages, alpaca or sharegpt form."""

from __future__ import annotations

import json
import os
import re
import sys
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
# A task_type level becomes part of MLflow metric names (val/loss/<task_type>): only the
# characters MLflow takes in a name on this platform (letters, digits, _ - . and space, and the
# colon of `gsm8k:main` except on Windows, where MLflow refuses it), and no level "." or ".."
# (a name must be a clean path).
_COLON = "" if os.name == "nt" else ":"
TASK_TYPE_LEVEL = re.compile(rf"[\w.\- {_COLON}]+")
TASK_TYPE_CHARACTERS = (
    f"letters, digits, '_', '-', '.'{', ' + repr(_COLON) if _COLON else ''} and space in each level, "
    "'/' between two levels"
)
MAX_TASK_TYPE = 200  # MLflow's metric names hold at most 250 characters, prefix included


@dataclass(frozen=True)
class Example:
    """One training or validation example: its messages, task_type and source."""

    # {role, content}, and weight 0 on an assistant turn that is not trained.
    messages: tuple[dict[str, Any], ...]
    task_type: str
    source: str
    tags: tuple[str, ...] = ()


class _RecordError(Exception):
    """A problem with one record; load_jsonl prefixes it with path:line."""


class _Warnings:
    """Record problems that do not stop the load, printed once per file with their lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, list[int]] = defaultdict(list)

    def add(self, lineno: int, message: str) -> None:
        self.lines[message].append(lineno)

    def flush(self) -> None:
        for message, lines in self.lines.items():
            shown = ", ".join(str(n) for n in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
            print(f"warning: {self.path}: line {shown}: {message}", file=sys.stderr)


def load_jsonl(path: str | Path, fmt: str = "auto", default_task_type: str | None = None) -> list[Example]:
    """Load every non-blank line of a JSONL file as an Example."""
    path = Path(path)
    _check_format_name(fmt)
    if default_task_type is not None:
        _check_default_task_type(default_task_type)
    examples = []
    warnings = _Warnings(path)
    for lineno, line in _numbered_lines(path):
        try:
            example = _parse_line(line, fmt, default_task_type, f"{path}:{lineno}")
        except _RecordError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
        for message in _conversation_warnings(example.messages):
            warnings.add(lineno, message)
        examples.append(example)
    warnings.flush()
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
    # Bytes are decoded a line at a time, so bad bytes are reported with their line. Lines end at
    # \n, \r or \r\n as in text mode, not at U+2028 (str.splitlines would split there, though
    # JSON strings may hold it unescaped). A byte-order mark written by some editors is dropped.
    lineno = 0
    with path.open("rb") as f:
        for raw in f:
            text = _decode_line(raw[3:] if lineno == 0 and raw.startswith(b"\xef\xbb\xbf") else raw, path, lineno + 1)
            for line in text.rstrip("\r\n").split("\r"):
                lineno += 1
                if line.strip():
                    yield lineno, line


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        # Count the lone \r line breaks before the bad byte, so the line number stays exact.
        lineno += raw[: err.start].count(b"\r")
        bad = raw[err.start : err.end]
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte {bad.hex(' ')} at byte {err.start + 1} of the line: "
            f"{err.reason}); expected UTF-8 text: re-encode the file (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _parse_line(line: str, fmt: str, default_task_type: str | None, source: str) -> Example:
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise _RecordError(f"malformed JSON ({err})") from None
    if not isinstance(record, dict):
        raise _RecordError(f"expected a JSON object, got {type(record).__name__}")
    _check_text(record, "record")
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently; a record saying two things is refused.
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _RecordError(f"duplicate key {key!r} in one JSON object; expected each key once")
        record[key] = value
    return record


def _check_text(value: Any, where: str) -> None:
    """Every string must be valid Unicode: JSON's \\ud800-\\udfff escapes can make lone surrogates,
    which no tokenizer (and no UTF-8 file or MLflow) can take."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise _RecordError(
                f"{where}: lone surrogate {value[err.start]!r} at character {err.start}; expected valid "
                "Unicode text (a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one)"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where}: a key")
            _check_text(item, f"{where}.{key}" if where != "record" else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


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
        messages.append({"role": role, "content": content, **_weight(msg, role, f"messages[{i}]")})
    return tuple(messages)


def _weight(msg: dict[str, Any], role: str, where: str) -> dict[str, int]:
    """OpenAI's fine-tuning `weight`: 0 leaves an assistant turn untrained, 1 (the default) trains it.
    Kept on the message only when 0, so weight 1 and no weight are one and the same record."""
    if "weight" not in msg:
        return {}
    weight = msg["weight"]
    if role != "assistant":
        raise _RecordError(f"{where}: 'weight' is set on a {role!r} turn; only assistant turns take a weight")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _RecordError(f"{where}: weight must be 0 (not trained) or 1 (trained), got {weight!r}")
    return {"weight": 0} if weight == 0 else {}


def _from_sharegpt(record: dict[str, Any]) -> tuple[dict[str, str], ...]:
    raw = _non_empty_list(record, "conversations")
    messages = _optional_system(record)
    for i, turn in enumerate(raw):
        speaker = _string_field(turn, "from", f"conversations[{i}]")
        value = _string_field(turn, "value", f"conversations[{i}]")
        if speaker not in SHAREGPT_ROLES:
            allowed = ", ".join(SHAREGPT_ROLES)
            raise _RecordError(f"conversations[{i}]: unknown role {speaker!r}; allowed roles: {allowed}")
        role = SHAREGPT_ROLES[speaker]
        messages.append({"role": role, "content": value, **_weight(turn, role, f"conversations[{i}]")})
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


def _check_conversation(messages: tuple[dict[str, Any], ...]) -> None:
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant" and not msg["content"].strip():
            raise _RecordError(f"message {i}: assistant turn is empty; expected a non-empty reply")
        if msg["role"] == "system" and i > 0:
            raise _RecordError(
                f"message {i}: system turn after the first message; expected a system turn first or none"
            )
    if not any(msg["role"] == "user" for msg in messages):
        raise _RecordError("conversation has no user turn; expected at least one")
    first = 1 if messages[0]["role"] == "system" else 0
    if messages[first]["role"] == "assistant":
        raise _RecordError(
            f"message {first}: the conversation starts with an assistant turn; expected a user turn first "
            "(after an optional system turn)"
        )
    if messages[-1]["role"] != "assistant":
        raise _RecordError(f"last message has role {messages[-1]['role']!r}; expected an assistant turn last")
    if all(msg.get("weight", 1) == 0 for msg in messages if msg["role"] == "assistant"):
        raise _RecordError("every assistant turn has weight 0; expected at least one trained turn (weight 1)")


def _conversation_warnings(messages: tuple[dict[str, Any], ...]) -> list[str]:
    """Problems a chat template may still render: two turns of one role in a row."""
    return [
        f"two {b['role']} turns in a row (messages {i} and {i + 1}); expected user and assistant turns to alternate"
        for i, (a, b) in enumerate(zip(messages, messages[1:], strict=False))
        if a["role"] == b["role"]
    ]


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
    if any(not TASK_TYPE_LEVEL.fullmatch(level) or level in (".", "..") for level in levels):
        bad = sorted({c for c in value if c != "/" and not TASK_TYPE_LEVEL.fullmatch(c)})
        what = f"characters {' '.join(map(repr, bad))}" if bad else "a level '.' or '..'"
        return (
            f"{value!r} has {what}, which MLflow refuses in metric names (val/loss/<task_type>); "
            f"allowed: {TASK_TYPE_CHARACTERS}, no level '.' or '..'"
        )
    if len(value) > MAX_TASK_TYPE:
        return f"{value[:40]!r}... has {len(value)} characters; expected at most {MAX_TASK_TYPE} (MLflow metric names)"
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
