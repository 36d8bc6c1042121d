"""Chat examples to token ids and labels: which tokens carry loss, and a pre-flight check.

The tokenizer's own chat template renders each conversation; which tokens are the assistant's
comes from its {% generation %} markers where it has them, else from the template itself
(sweep_sft.data.chat_masks). System and user tokens never carry loss; `loss_on` picks all
assistant turns, the last one, or all tokens (prompts included: a warning says so, with counts).
An assistant turn with OpenAI's `weight: 0` is never trained, whatever `loss_on` says.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

from sweep_sft.data.chat_masks import MARKERS, AssistantTokens, assistant_tokens
from sweep_sft.data.records import Example
from sweep_sft.data.truncation import DROPPED, IGNORE, KEPT, fit
from sweep_sft.errors import DataError


@dataclass
class Tokenized:
    """One example as token ids with its loss labels."""

    input_ids: list[int]
    labels: list[int]
    task_type: str
    truncated: bool = False  # tokens were cut (data.truncation says which)
    # The example it was made from: train recall regenerates answers to trained prompts.
    example: Example | None = field(default=None, repr=False, compare=False)


@dataclass
class TaskStats:
    """One task_type's kept examples and tokens, and its examples longer than data.max_seq_len:
    prompt_cut (every supervised token kept), answer_cut (supervised tokens lost), dropped."""

    examples: int = 0
    supervised_tokens: int = 0
    tokens: int = 0
    prompt_cut: int = 0
    answer_cut: int = 0
    dropped: int = 0


@dataclass
class DatasetStats:
    """TaskStats per task_type."""

    per_task: dict[str, TaskStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {task: vars(stats) for task, stats in sorted(self.per_task.items())}


def tokenize(
    examples: list[Example],
    tokenizer,
    loss_on: str,
    max_seq_len: int,
    truncation: str,
    end_of_turn_id: int,
) -> tuple[list[Tokenized], DatasetStats]:
    """Tokenise, mask, cut or drop what is longer than max_seq_len (data/truncation.py), then run the
    pre-flight check on what is left."""
    out: list[Tokenized] = []
    stats = DatasetStats()
    if not examples:  # the chat template takes an empty batch for one empty conversation
        return out, stats
    eot = tokenizer.decode([end_of_turn_id])
    found = assistant_tokens(examples, tokenizer, eot)
    spans_ok: Counter[str] = Counter()
    spans_bad: Counter[str] = Counter()
    turns_trained: Counter[str] = Counter()  # assistant turns trained / with weight 0, per task_type
    turns_weight_0: Counter[str] = Counter()
    for example, ids, turns in zip(examples, found.input_ids, found.turns, strict=True):
        task = stats.per_task.setdefault(example.task_type, TaskStats())
        spans, untrained = _weighted_spans(example, turns, loss_on)
        labels = _labels(ids, spans, untrained, loss_on)
        turns_trained[example.task_type] += len(spans)
        turns_weight_0[example.task_type] += len(untrained)
        cut = fit(ids, labels, max_seq_len, truncation)
        if cut.outcome != KEPT:  # the outcomes are TaskStats' counters: prompt_cut, answer_cut, dropped
            setattr(task, cut.outcome, getattr(task, cut.outcome) + 1)
        if cut.outcome == DROPPED:
            continue
        # Every trained turn the window keeps whole (an answer-cut mostly keeps the final one whole),
        # checked on the full labels: the window never cuts a supervised end-of-turn token after one.
        for start, end in spans:
            if cut.left <= start and end <= cut.left + len(cut.input_ids):
                ok = _end_of_turn_supervised(ids, labels, end, end_of_turn_id)
                (spans_ok if ok else spans_bad)[example.task_type] += 1
        ids, labels, truncated = cut.input_ids, cut.labels, cut.outcome != KEPT
        task.examples += 1
        task.tokens += len(ids)
        task.supervised_tokens += sum(label != IGNORE for label in labels)
        out.append(Tokenized(list(ids), labels, example.task_type, truncated, example))
    preflight(stats, spans_ok, spans_bad, eot, found.how, (turns_trained, turns_weight_0))
    if loss_on == "all_tokens":
        _warn_all_tokens(examples, found, stats, max_seq_len, truncation)
    return out, stats


def _weighted_spans(
    example: Example, turns: list[tuple[int, int]], loss_on: str
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(trained spans, spans of weight-0 turns) among the token spans of the assistant turns:
    weight 0 removes a turn before `loss_on` picks (last_assistant: the last turn with weight 1)."""
    weights = [m.get("weight", 1) for m in example.messages if m["role"] == "assistant"]
    if all(weights):
        return (turns[-1:] if loss_on == "last_assistant" else turns), []
    if len(turns) != len(weights):
        raise DataError(
            f"{example.source}: a turn has weight 0 but the chat template marks {len(turns)} assistant spans "
            f"for {len(weights)} assistant turns, so the turn cannot be found; expected one "
            "{% generation %} block per assistant turn"
        )
    trained = [span for span, weight in zip(turns, weights, strict=True) if weight]
    untrained = [span for span, weight in zip(turns, weights, strict=True) if not weight]
    return (trained[-1:] if loss_on == "last_assistant" else trained), untrained


def _labels(ids: list[int], spans: list[tuple[int, int]], untrained: list[tuple[int, int]], loss_on: str) -> list[int]:
    if loss_on == "all_tokens":
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            labels[start:end] = ids[start:end]
    for start, end in untrained:
        labels[start:end] = [IGNORE] * (end - start)
    return labels


def _end_of_turn_supervised(ids: list[int], labels: list[int], end: int, eot: int) -> bool:
    # The end token sits inside the assistant span (generation markers around it) or,
    # under loss_on=all_tokens, right after it; either way it must carry a label.
    if ids[end - 1] == eot and labels[end - 1] != IGNORE:
        return True
    return end < len(ids) and ids[end] == eot and labels[end] != IGNORE


def preflight(
    stats: DatasetStats,
    spans_ok: Counter[str],
    spans_bad: Counter[str],
    eot: str,
    how: str = MARKERS,
    turns: tuple[Counter[str], Counter[str]] = (Counter(), Counter()),
) -> None:
    """Stop before training when a task_type would teach nothing, or never teach EOS; `how`: how
    the assistant tokens were found (the template's generation markers, or its renderings);
    `turns`: (assistant turns trained, assistant turns with weight 0) per task_type."""
    trained, weight_0 = turns
    for task_type, task in sorted(stats.per_task.items()):
        if task.examples == 0:
            raise DataError(
                f"task_type {task_type!r}: every example was dropped as longer than data.max_seq_len "
                f"({task.dropped} dropped); raise data.max_seq_len or set data.truncation=prompt "
                "(cut prompts, keep answers)"
            )
        if task.supervised_tokens == 0 and weight_0[task_type] and not trained[task_type]:
            raise DataError(
                f"task_type {task_type!r}: all {weight_0[task_type]} assistant turns of its {task.examples} "
                "examples have `weight: 0`, so nothing is trained; at least one assistant turn per task_type "
                "must be trained (weight 1, or no weight key)"
            )
        if task.supervised_tokens == 0 and task.answer_cut:
            raise DataError(
                f"task_type {task_type!r} has no supervised token left: {task.answer_cut} of its {task.examples} "
                "examples lost theirs to data.max_seq_len; raise data.max_seq_len or set data.truncation=prompt"
            )
        if task.supervised_tokens == 0:
            why = _why_none(how)
            raise DataError(f"task_type {task_type!r} has no supervised token in {task.examples} examples: {why}")
        if spans_bad[task_type]:
            raise DataError(
                f"task_type {task_type!r}: the end-of-turn token {eot!r} is not supervised after "
                f"{spans_bad[task_type]} of {spans_bad[task_type] + spans_ok[task_type]} trained assistant "
                f"turns, so the model would never learn to stop: {_eot_fix(how, eot)}"
            )


def _why_none(how: str) -> str:
    if how == MARKERS:
        return (
            "the chat template's {% generation %} blocks mark no assistant token within data.max_seq_len; put each "
            "assistant turn's content and end-of-turn token inside {% generation %}...{% endgeneration %} "
            "(model.chat_template_path), or raise data.max_seq_len if the prompts fill it"
        )
    return (
        "the assistant turns were read off the chat template's renderings, but none lies within data.max_seq_len; "
        "raise data.max_seq_len"
    )


def _eot_fix(how: str, eot: str) -> str:
    if how == MARKERS:
        return (
            "put it inside the template's {% generation %} block, or set model.end_of_turn_token to the token "
            "that closes a turn"
        )
    return (
        f"the chat template does not close these assistant turns with {eot!r}; set model.end_of_turn_token to "
        "the token it does close them with"
    )


def _warn_all_tokens(
    examples: list[Example], found: AssistantTokens, stats: DatasetStats, max_seq_len: int, truncation: str
) -> None:
    """data.loss_on=all_tokens trains on the prompts too: say so, with what all_assistant would train on."""
    assistant = 0
    for example, ids, turns in zip(examples, found.input_ids, found.turns, strict=True):
        if len(ids) > max_seq_len and truncation == "drop":
            continue
        trained, _ = _weighted_spans(example, turns, "all_assistant")
        assistant += sum(min(end, max_seq_len) - min(start, max_seq_len) for start, end in trained)
    total = sum(task.supervised_tokens for task in stats.per_task.values())
    print(
        f"warning: data.loss_on=all_tokens trains on every token, the system and user prompts and the chat "
        f"template's own tokens too: {total} supervised tokens, of which {assistant} are the assistant turns' "
        "(data.loss_on=all_assistant would train on those only)",
        file=sys.stderr,
    )
