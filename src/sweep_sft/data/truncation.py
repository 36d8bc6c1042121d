"""What an example longer than `data.max_seq_len` keeps: one pure function over token ids and labels.

The supervised part is everything from the first to the last supervised token (label != IGNORE):
all trained turns under loss_on=all_assistant, with the user turns between them; weight-0 turns
and system/user tokens before the first trained turn or after the last one are outside it.

- `prompt` (default): keep the END of the example, so the prompt is cut from the left and every
  supervised token stays; when unsupervised tokens after the last supervised one would push the
  first supervised token out of the window, the window starts at the first supervised token
  instead (the tail cut is unsupervised too). Only when the supervised part alone is longer than
  max_seq_len is it cut: keep from its first supervised token, cut the end (an answer-cut).
  A BOS token at the start goes with the cut prompt: the model was never trained to need it
  mid-sequence either way, and re-inserting it would shift every kept position.
- `drop`: an example longer than max_seq_len is left out.
- `end`: the old behaviour, keep the first max_seq_len tokens; what it cuts is usually the answer.

Every cut is one of two outcomes, counted per task_type: a prompt-cut (no supervised token lost)
or an answer-cut (some supervised tokens lost).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100

PROMPT = "prompt"
DROP = "drop"
END = "end"
MODES = (PROMPT, DROP, END)

# What happened to one example.
KEPT = "kept"  # it fits: nothing cut
PROMPT_CUT = "prompt_cut"  # unsupervised tokens cut, every supervised token kept
ANSWER_CUT = "answer_cut"  # supervised tokens cut
DROPPED = "dropped"


@dataclass(frozen=True)
class Cut:
    """The kept window [left, left + len(input_ids)) of an example, and what its cut cost."""

    input_ids: list[int]
    labels: list[int]
    outcome: str  # KEPT, PROMPT_CUT, ANSWER_CUT or DROPPED (then input_ids and labels are empty)
    left: int = 0  # tokens cut from the start
    right: int = 0  # tokens cut from the end
    supervised_cut: int = 0  # supervised tokens among them

    @property
    def keeps_all_supervised(self) -> bool:
        """Every supervised token of the example is in the window (the end-of-turn checks hold)."""
        return self.outcome in (KEPT, PROMPT_CUT)


def fit(input_ids: list[int], labels: list[int], max_seq_len: int, mode: str) -> Cut:
    """The window of at most max_seq_len tokens that `mode` keeps (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"truncation mode {mode!r}; expected one of {', '.join(MODES)}")
    n = len(input_ids)
    if n <= max_seq_len:
        return Cut(list(input_ids), list(labels), KEPT)
    if mode == DROP:
        return Cut([], [], DROPPED)
    supervised = [i for i, label in enumerate(labels) if label != IGNORE]
    if mode == END:
        start = 0
    elif not supervised:  # nothing to keep whole: the end, like a prompt
        start = n - max_seq_len
    else:
        # The end of the example, unless that loses the first supervised token; a supervised part
        # longer than the window starts at its first token either way (and loses its end).
        start = min(n - max_seq_len, supervised[0])
    stop = start + max_seq_len
    lost = sum(1 for i in supervised if not start <= i < stop)
    return Cut(
        list(input_ids[start:stop]),
        list(labels[start:stop]),
        ANSWER_CUT if lost else PROMPT_CUT,
        left=start,
        right=n - stop,
        supervised_cut=lost,
    )
