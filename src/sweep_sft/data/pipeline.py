"""From data sources to the tokenised training mix and validation set, in one fixed order:
load -> de-duplicate -> hold out validation (only when no source has a val file) -> source
weights -> subsample -> tokenise (cut or drop what is longer than max_seq_len, pre-flight) -> task
repeats and shares.
Every random choice is seeded by `trainer.seed`."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from typing import Any

from sweep_sft.config.schema import Config
from sweep_sft.data.dedup import deduplicate
from sweep_sft.data.mix import apply_task_mix, realised_mix, scale
from sweep_sft.data.records import Example, first_per_task, load_jsonl
from sweep_sft.data.tokenize import DatasetStats, Tokenized, tokenize
from sweep_sft.data.truncation import DROP
from sweep_sft.embedded.build import embedded_data


@dataclass
class PreparedData:
    """The tokenised training mix and validation set, with what the trial prints and records about them."""
    train_rows: list[Tokenized]
    val_rows: list[Tokenized]
    val_examples: list[Example]
    report: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return sorted({r.task_type for r in self.train_rows} | {e.task_type for e in self.val_examples})


def load_sources(config: Config) -> tuple[dict[str, list[Example]], list[Example]]:
    """Training examples per source, and the validation examples of all sources."""
    train: dict[str, list[Example]] = {}
    val: list[Example] = []
    for name, source in config.data.mix.sources.items():
        train[name] = load_jsonl(_path(source.train, "train"), source.format, source.default_task_type)
        if source.val:
            val += load_jsonl(_path(source.val, "validation"), source.format, source.default_task_type)
    return train, val


def prepare(
    config: Config, tokenizer, end_of_turn_id: int, loaded: tuple[dict[str, list[Example]], list[Example]] | None = None
) -> PreparedData:
    """Load, deduplicate, mix and tokenize the data a trial trains and validates on."""
    data = config.data
    rng = random.Random(config.trainer.seed)
    by_source, val = loaded or load_sources(config)
    by_source, dedup_report = _deduplicate(by_source, config)
    held_out: dict[str, int] = {}
    if not any(source.val for source in data.mix.sources.values()):
        by_source, val, held_out = hold_out(by_source, data.val_holdout, config.trainer.seed)
    train = [e for name, examples in by_source.items() for e in scale(examples, data.mix.sources[name].weight, rng)]
    if data.max_train_examples is not None and data.max_train_examples < len(train):
        train = rng.sample(train, data.max_train_examples)
    if data.max_val_per_task is not None:
        val = first_per_task(val, data.max_val_per_task)
    args = (tokenizer, data.loss_on, data.max_seq_len, data.truncation, end_of_turn_id)
    rows, token_stats = tokenize(train, *args)
    val_rows, val_stats = tokenize(val, *args)
    if data.truncation == DROP:  # what validation loss leaves out, generation leaves out too
        kept = {id(row.example) for row in val_rows}
        val = [example for example in val if id(example) in kept]
    notice = answer_cut_notice(token_stats, val_stats, data.max_seq_len, data.truncation)
    if notice:
        print(notice, file=sys.stderr)
    rows = apply_task_mix(
        rows, data.mix.task_repeat, data.mix.task_ratio, data.mix.ratio_of, config.trainer.seed, data.mix.only
    )
    report = realised_mix(rows)
    for task, stats in token_stats.as_dict().items():
        entry = report.setdefault(
            task, {"examples": 0, "supervised_tokens": 0, "example_share": 0.0, "token_share": 0.0}
        )
        entry.update({key: stats[key] for key in CUT_KEYS}, **dedup_report.get(task, {}))
    for task, stats in val_stats.as_dict().items():  # validation rows follow the same rule
        if task in report and any(stats[key] for key in CUT_KEYS):
            report[task].update({f"val_{key}": stats[key] for key in CUT_KEYS})
    for task, n in held_out.items():
        if task in report:
            report[task]["val_held_out"] = n
    return PreparedData(rows, val_rows, val, dict(sorted(report.items())))


# Per task_type, examples longer than data.max_seq_len: cut with every supervised token kept, cut
# with supervised tokens lost, left out (TaskStats' counters).
CUT_KEYS = ("prompt_cut", "answer_cut", "dropped")


def answer_cut_notice(train: DatasetStats, val: DatasetStats, max_seq_len: int, truncation: str) -> str | None:
    """One line when some example lost supervised tokens to data.max_seq_len; None when none did."""
    parts = []
    for split, stats in (("training", train), ("validation", val)):
        cut = {task: s.answer_cut for task, s in sorted(stats.per_task.items()) if s.answer_cut}
        if cut:
            total = sum(s.examples + s.dropped for s in stats.per_task.values())
            each = ", ".join(f"{task}: {n}" for task, n in cut.items())
            parts.append(f"{sum(cut.values())} of {total} {split} examples ({each})")
    if not parts:
        return None
    why = (
        "data.truncation=end cuts the end of a long example; data.truncation=prompt keeps the answers "
        "whose supervised part fits"
        if truncation == "end"
        else "their supervised part alone is longer"
    )
    return (
        f"warning: answers cut: {' and '.join(parts)} lost supervised tokens to data.max_seq_len={max_seq_len} "
        f"({why}); raise data.max_seq_len to train on them whole"
    )


def hold_out(
    by_source: dict[str, list[Example]], fraction: float, seed: int
) -> tuple[dict[str, list[Example]], list[Example], dict[str, int]]:
    """No source has a val file: a seeded `fraction` of each task_type's (de-duplicated) training
    examples becomes the validation set, at least one and never the last one of a task_type, so
    that validation never sees a trained example. Returns the rest, the held-out examples in file
    order, and the count per task_type."""
    rng = random.Random(seed)
    everything = [e for examples in by_source.values() for e in examples]
    by_task: dict[str, list[int]] = {}
    for i, example in enumerate(everything):
        by_task.setdefault(example.task_type, []).append(i)
    picked: set[int] = set()
    for indices in by_task.values():
        n = min(max(1, round(fraction * len(indices))), len(indices) - 1)
        picked.update(rng.sample(indices, n))
    val_ids = {id(everything[i]) for i in picked}
    rest = {name: [e for e in examples if id(e) not in val_ids] for name, examples in by_source.items()}
    val = [everything[i] for i in sorted(picked)]
    counts = {task: sum(e.task_type == task for e in val) for task in sorted(by_task)}
    print(
        f"validation: no source has a val file; held out {len(val)} training examples "
        f"({fraction:.0%} of each task_type, data.val_holdout) as the validation set"
    )
    return rest, val, counts


def _deduplicate(by_source: dict[str, list[Example]], config: Config):
    dedup = config.data.dedup
    if not dedup.exact and dedup.near_threshold is None:
        return by_source, {}
    everything = [e for examples in by_source.values() for e in examples]
    kept, stats = deduplicate(
        everything, dedup.near_threshold, min_answer_words=dedup.min_answer_words, exact=dedup.exact
    )
    kept_ids = {id(e) for e in kept}
    report = {
        task: {"dedup_exact": counts["exact"], "dedup_near": counts["near"]} for task, counts in stats.as_dict().items()
    }
    return {name: [e for e in examples if id(e) in kept_ids] for name, examples in by_source.items()}, report


def _path(value: str, split: str) -> str:
    if value != "embedded":
        return value
    return str(embedded_data() / f"{split}.jsonl")


def mix_table(report: dict[str, dict[str, Any]]) -> str:
    """The realised mix, printed before training: per task_type its examples and supervised tokens
    with their shares, its examples longer than data.max_seq_len (prompt_cut: every supervised token
    kept; answer_cut: supervised tokens lost; dropped) and its duplicates removed."""
    head = (
        f"{'task_type':<26}{'examples':>9}{'share':>7}{'supervised':>11}{'share':>7}"
        f"{'prompt_cut':>11}{'answer_cut':>11}{'dropped':>8}{'dedup':>7}"
    )
    lines = [head]
    for task, s in report.items():
        removed = s.get("dedup_exact", 0) + s.get("dedup_near", 0)
        lines.append(
            f"{task:<26}{s['examples']:>9}{s['example_share']:>7.1%}{s['supervised_tokens']:>11}"
            f"{s['token_share']:>7.1%}{s.get('prompt_cut', 0):>11}{s.get('answer_cut', 0):>11}"
            f"{s.get('dropped', 0):>8}{removed:>7}"
        )
    return "\n".join(lines)
