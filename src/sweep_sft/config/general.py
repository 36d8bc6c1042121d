"""The `eval.general` node: which general set the general-ability probe scores, and how much of it.

`eval.general_probe` stays the switch (on by default); this node says what the probe measures.
The set file itself is read when the trial starts (evaluate.general_set.check_source), not here:
a Slurm job may read a path that only its compute node has."""

from __future__ import annotations

from dataclasses import dataclass

from sweep_sft.config.checks import at_least
from sweep_sft.errors import ConfigError

AUTO = "auto"
EMBEDDED = "embedded"
BASE_ANSWERS = "base_answers"
NAMED_SOURCES = (AUTO, EMBEDDED, BASE_ANSWERS)


@dataclass
class GeneralConfig:
    """What `general/score` and `general_drop` are measured on (docs: README, "The general probe")."""

    # auto: the embedded probe for the embedded model, base_answers for any other model;
    # embedded: continuations of counting, the alphabet, weekdays, opposites (the toy's own text);
    # base_answers: the base model's own greedy answers to the shipped general prompts
    # (sweep_sft/embedded/general_prompts.jsonl), generated once per base model and cached;
    # or a path to your own JSONL general set: {"text": ...} or {"messages": [...]} per line.
    source: str = AUTO
    # Score only the first N items (prompts for base_answers); null: all of them.
    max_items: int | None = None
    # Token budget of each base answer (base_answers); generation stops earlier at end-of-turn.
    max_new_tokens: int = 128
    # Tokens of one scored item at most: a longer chat item loses the start of its prompt, a
    # longer text the end of its text (the scored answer is cut only when it alone is longer).
    max_seq_len: int = 1024

    def __post_init__(self) -> None:
        if not str(self.source).strip():
            raise ConfigError(
                f"eval.general.source: expected {', '.join(NAMED_SOURCES)} or a path to a JSONL general set, "
                "got an empty string"
            )
        if self.max_items is not None:
            at_least("eval.general.max_items", self.max_items, 1)
        at_least("eval.general.max_new_tokens", self.max_new_tokens, 1)
        at_least("eval.general.max_seq_len", self.max_seq_len, 2)

    @property
    def is_file(self) -> bool:
        """The source names the user's own JSONL set, not one of the named sources."""
        return self.source not in NAMED_SOURCES
