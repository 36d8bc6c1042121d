"""The data part of the config schema: sources, their mix, duplicate removal and tokenisation."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING

from sweep_sft.config.checks import at_least, one_of, within
from sweep_sft.errors import ConfigError

LOSS_ON = ("all_assistant", "last_assistant", "all_tokens")
# data/truncation.py implements these (config/ cannot import data/; a test keeps the two equal).
TRUNCATION = ("prompt", "drop", "end")
# The old name of `end`: trial folders and MLflow runs made before `prompt` existed hold it in their
# config.yaml, and `python -m sweep_sft.evaluate` must rebuild their validation rows exactly.
OLD_TRUNCATE = "truncate"
PACKING = ("none", "packed")
RATIO_OF = ("examples", "supervised_tokens")
FORMATS = ("auto", "messages", "alpaca", "sharegpt")


@dataclass
class SourceConfig:
    # JSONL file of training examples; "embedded" generates the project's multi-task set.
    train: str = MISSING
    # JSONL file of validation examples ("embedded": the embedded split); null: none from this source
    # (with none from any source, data.val_holdout of the training examples are held out instead).
    val: str | None = None
    # Record format: auto-detected per record, or declared (then every record must match).
    format: str = "auto"
    # task_type given to records without one (Alpaca/ShareGPT files); null: it is required.
    default_task_type: str | None = None
    # Multiplier of this source's training examples (2: each twice; 0.5: a seeded half).
    weight: float = 1.0


@dataclass
class MixConfig:
    # Named sources (fields of SourceConfig); add one: +data.mix.sources.NAME={train: a.jsonl}.
    sources: dict[str, Any] = field(default_factory=lambda: {"embedded": {"train": "embedded", "val": "embedded"}})
    # Multiplier per task_type, nested by level: task_repeat.classification.sentiment=3.
    task_repeat: dict[str, Any] = field(default_factory=dict)
    # Share of the mix per task_type or family, nested by level: task_ratio.reasoning.addition=0.3.
    task_ratio: dict[str, Any] = field(default_factory=dict)
    # Train on this task_type (or family) alone, e.g. reasoning/addition; null: every task.
    # Validation still covers every task_type (what the others lose shows too).
    only: str | None = None
    # What a share counts: examples, or supervised (loss-bearing) tokens.
    ratio_of: str = "examples"

    def __post_init__(self) -> None:
        one_of("data.mix.ratio_of", self.ratio_of, RATIO_OF)
        if not self.sources:
            raise ConfigError("data.mix.sources: no data source; add one (see data=jsonl)")
        self.sources = {name: _source(name, value) for name, value in self.sources.items()}


@dataclass
class DedupConfig:
    # Remove exact duplicates (same task_type and messages); the first one is kept.
    exact: bool = True
    # Remove near-duplicate answers within a task_type at this word-shingle Jaccard; null: off.
    near_threshold: float | None = None
    # Only answers of at least this many words are near-deduplicated (labels repeat by design).
    min_answer_words: int = 8

    def __post_init__(self) -> None:
        if self.near_threshold is not None:
            within("data.dedup.near_threshold", self.near_threshold, 0, 1)


@dataclass
class DataConfig:
    """The `data` node: sources, mix, dedup, loss masking, length and packing."""

    # Sources, their weights and the per-task_type mix.
    mix: MixConfig = field(default_factory=MixConfig)
    # Duplicate removal before mixing; examples tagged "robustness" are never removed.
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # Which tokens carry loss: every assistant turn, only the last one, or all tokens.
    loss_on: str = "all_assistant"
    # Longest tokenised example; longer ones are cut or dropped (and counted per task_type).
    max_seq_len: int = 256
    # An example longer than max_seq_len. prompt: cut the prompt from the left, every supervised
    # token stays (only a supervised part longer than max_seq_len alone loses its end: answer_cut);
    # drop: leave it out; end: keep its first max_seq_len tokens (cuts the answer; truncate: old name).
    truncation: str = "prompt"
    # none: one example per padded row; packed: each micro-batch's examples bin-packed into rows
    # of max_seq_len, position ids restarting and no attention across examples.
    packing: str = "none"
    # Use at most this many training examples (after shuffling by seed); null: all.
    max_train_examples: int | None = None
    # Use at most this many validation examples per task_type; null: all.
    max_val_per_task: int | None = None
    # With no val file in any source: this share of each task_type's training examples is held
    # out (seeded) as the validation set.
    val_holdout: float = 0.1

    def __post_init__(self) -> None:
        one_of("data.loss_on", self.loss_on, LOSS_ON)
        if self.truncation == OLD_TRUNCATE:
            print(
                "note: data.truncation=truncate is the old name of data.truncation=end, which cuts the end of "
                "a long example (its answer); data.truncation=prompt (the default) cuts the prompt instead",
                file=sys.stderr,
            )
            self.truncation = "end"
        one_of("data.truncation", self.truncation, TRUNCATION)
        one_of("data.packing", self.packing, PACKING)
        at_least("data.max_seq_len", self.max_seq_len, 8)
        if self.max_train_examples is not None:
            at_least("data.max_train_examples", self.max_train_examples, 1)
        if self.max_val_per_task is not None:
            at_least("data.max_val_per_task", self.max_val_per_task, 1)
        if not 0 < self.val_holdout <= 0.5:
            raise ConfigError(f"data.val_holdout must be in (0, 0.5], got {self.val_holdout}")


def _source(name: str, value: Any) -> SourceConfig:
    key = f"data.mix.sources.{name}"
    if isinstance(value, SourceConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping with keys train, val, format, default_task_type, weight")
    known = {f.name for f in dataclasses.fields(SourceConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    if value.get("train") in (None, MISSING):
        raise ConfigError(f"{key}.train: missing mandatory value (a JSONL file, or embedded)")
    source = SourceConfig(**value)
    one_of(f"{key}.format", source.format, FORMATS)
    if not isinstance(source.weight, (int, float)) or not 0 <= source.weight < math.inf:
        raise ConfigError(f"{key}.weight must be a finite number >= 0, got {source.weight!r}")
    return source


MIX_TREES = ("data.mix.task_ratio", "data.mix.task_repeat")


def check_tree_overrides(overrides: list[str]) -> None:
    """A number for a family and a key inside it (task_ratio.math=0.3 task_ratio.math.add=0.2)
    cannot both hold: Hydra's merge keeps whichever comes last and drops the other in silence."""
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_delete()]
    inside = [o for o in parsed if any(o.key_or_group.startswith(tree + ".") for tree in MIX_TREES)]
    for short in inside:
        if isinstance(short.value(), dict):  # a mapping merges with the keys beside it
            continue
        for long in inside:
            if long.key_or_group.startswith(short.key_or_group + "."):
                raise ConfigError(
                    f"{short.input_line} and {long.input_line}: {short.key_or_group} cannot be a number and hold "
                    f"{long.key_or_group.removeprefix(short.key_or_group + '.')} too (only the last would be kept); "
                    "set the family or the task_types inside it, not both"
                )
