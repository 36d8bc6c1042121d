"""What an example longer than `data.max_seq_len` keeps: one pure function over token ids and labels.

The supervised part is everything from the first to the last supervised token (label != IGNORE):
all trained turns under loss_on=all_assistant, with the user turns between them; weight-0 turns
and system/user tokens before the first trained turn or after the last one are outside it.

- `prompt` (default): the window ends at the last supervised token (its end-of-turn token), so the
  final answer stays whole and the tokens before it fill the rest: the prompt is cut from the left,
  and tokens after the last supervised one (a trailing weight-0 or user turn) are cut too, since
  nothing after the last label can change the loss. When the supervised part fits, every
  supervised token stays (a prompt-cut). When it does not, the earlier trained turns are what is
  cut (an answer-cut): the final answer and as much context before it as fits are kept. Only when
  the last trained span (the last run of supervised tokens) alone is longer than max_seq_len does
  the window start at that span's start and cut its end. Under loss_on=all_tokens every token is
  supervised, so that run is the whole example and the window keeps its first max_seq_len tokens.
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
        start, stop = 0, max_seq_len
    elif not supervised:  # nothing to keep whole: the end, like a prompt
        start, stop = n - max_seq_len, n
    else:
        start, stop = _prompt_window(supervised, max_seq_len)
    lost = sum(1 for i in supervised if not start <= i < stop)
    return Cut(
        list(input_ids[start:stop]),
        list(labels[start:stop]),
        ANSWER_CUT if lost else PROMPT_CUT,
        left=start,
        right=n - stop,
        supervised_cut=lost,
    )


def _prompt_window(supervised: list[int], max_seq_len: int) -> tuple[int, int]:
    """[start, stop) for mode prompt: ending at the last supervised token + 1, unless the last run of
    supervised tokens alone is longer than max_seq_len (then from its start, its end cut)."""
    stop = supervised[-1] + 1
    start = max(0, stop - max_seq_len)
    last_span = len(supervised) - 1
    while last_span > 0 and supervised[last_span - 1] == supervised[last_span] - 1:
        last_span -= 1
    if supervised[last_span] < start:  # the final answer alone does not fit: keep its start
        start = supervised[last_span]
        stop = start + max_seq_len
    return start, stop
