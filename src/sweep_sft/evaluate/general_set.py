"""A general set for the general probe: the user's own JSONL file of plain texts (`{"text": ...}`) or
chat examples (`{"messages": [...]}`, OpenAI form), read and checked when the trial starts (before
the model loads), then turned into token ids: a context and the part scored given it.

A text is scored on every token after its first (after BOS where the tokenizer adds one); a chat
example on its last assistant turn, end-of-turn token included, given the conversation before it
rendered by the model's chat template with the generation prompt: the tokens a generation from
that prompt would have to produce."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep_sft.config.general import NAMED_SOURCES, GeneralConfig
from sweep_sft.data.chat_masks import assistant_tokens
from sweep_sft.data.records import Example
from sweep_sft.errors import DataError

ROLES = ("system", "user", "assistant")
# One scored item: (context token ids, scored token ids).
Pair = tuple[list[int], list[int]]


# The task_type a general item is rendered under (no metric is named by it).
GENERAL_TASK = "general"

@dataclass(frozen=True)
class GeneralItem:
    """One item of a general set: a plain text or a conversation ending in the assistant turn to
    score; `where` names its file and line."""

    where: str
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    # False: the answer was cut (a base answer that ran out of tokens), so no end-of-turn is scored after it.
    ends_turn: bool = True


def check_source(general: GeneralConfig) -> None:
    """A user's general set read and checked (a missing, empty or malformed file named with its
    line); nothing to check for the named sources."""
    if general.is_file:
        read_set(general.source, general.max_items)


def read_set(path: str | Path, max_items: int | None = None) -> list[GeneralItem]:
    """The set's items (the first `max_items`), every line checked first."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "no such file"
        raise DataError(
            f"eval.general.source={path}: {what}; expected {', '.join(NAMED_SOURCES)} or a JSONL general set "
            '({"text": ...} or {"messages": [...]} per line)'
        )
    items = [_item(record, f"{path}:{n}") for n, record in _records(path)]
    if not items:
        raise DataError(
            f"{path}: the general set is empty; expected one JSON record per line, "
            '{"text": ...} or {"messages": [...]} ending in an assistant turn'
        )
    return items[:max_items]


def _records(path: Path):
    """(line number, parsed JSON) of each non-blank line."""
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{n}: not valid UTF-8 ({err.reason}); expected UTF-8 text") from None
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno})") from None


def _item(record: Any, where: str) -> GeneralItem:
    if not isinstance(record, dict) or ("text" not in record and "messages" not in record):
        got = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f'{where}: expected a record with "text" (plain text) or "messages" (a chat example ending in the '
            f"assistant turn to score), got {got}"
        )
    if "messages" in record:
        return GeneralItem(where, messages=_messages(record["messages"], where))
    text = record["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'{where}: "text" must be a non-empty string, got {text!r}')
    return GeneralItem(where, text=text)


def _messages(messages: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} turns')
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(
                f'{where}: messages[{i}] must be {{"role": one of {", ".join(ROLES)}, "content": a string}}, '
                f"got {turn!r}"
            )
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last turn is {turns[-1]['role']!r}; a general chat example ends in the assistant turn "
            "that is scored"
        )
    if len(turns) < 2:
        raise DataError(f"{where}: only an assistant turn; expected the conversation it answers before it")
    return tuple(turns)


def pairs(items: list[GeneralItem], tokenizer, end_of_turn_id: int, max_seq_len: int) -> list[Pair]:
    """Each item's (context, scored) token ids, at most `max_seq_len` tokens together."""
    chats = iter(_last_turns([item for item in items if item.text is None], tokenizer, end_of_turn_id))
    return [
        _text_pair(item, tokenizer, max_seq_len) if item.text is not None else _fit(*next(chats), max_seq_len)
        for item in items
    ]


def _text_pair(item: GeneralItem, tokenizer, max_seq_len: int) -> Pair:
    ids = tokenizer(item.text)["input_ids"][:max_seq_len]  # BOS where the model's tokenizer adds one
    if len(ids) < 2:
        raise DataError(f"{item.where}: the text is one token long; nothing is scored after the first token")
    return ids[:1], ids[1:]


def _last_turns(chats: list[GeneralItem], tokenizer, end_of_turn_id: int) -> list[Pair]:
    """(prompt, answer) token ids of each chat item: its last assistant turn found as training finds
    assistant turns (data.chat_masks: the template's markers, else read off its renderings), with
    its end-of-turn token unless the answer was cut (`ends_turn` False)."""
    examples = [Example(tuple(dict(m) for m in item.messages or ()), GENERAL_TASK, item.where) for item in chats]
    rendered = assistant_tokens(examples, tokenizer, tokenizer.convert_ids_to_tokens(end_of_turn_id))
    found: list[Pair] = []
    for item, ids, turns in zip(chats, rendered.input_ids, rendered.turns, strict=True):
        start, end = turns[-1] if turns else (0, 0)
        answer = list(ids[start:end])
        if answer and answer[-1] == end_of_turn_id and not item.ends_turn:
            answer.pop()
        if not start or not answer:
            raise DataError(f"{item.where}: the chat template renders no prompt or no answer tokens for this record")
        found.append((list(ids[:start]), answer))
    return found


def _fit(prompt: list[int], answer: list[int], max_seq_len: int) -> Pair:
    answer = answer[: max_seq_len - 1]  # the answer is cut only when it alone is too long
    return prompt[-(max_seq_len - len(answer)) :], answer  # the prompt loses its start first
