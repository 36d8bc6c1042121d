"""The "general" corpus the embedded base model is pretrained on, and its probe set.

Plain text, no chat template: counting, the alphabet, weekdays, months and a table of
opposites. The probe asks the model to continue such text; SFT on the chat tasks at a high
learning rate makes the model forget it, which is what `general_drop` measures.
"""

from __future__ import annotations

import random

NUMBERS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = ("january february march april may june july august september october november december").split()
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("old", "new"),
    ("wet", "dry"),
    ("high", "low"),
    ("rich", "poor"),
    ("near", "far"),
    ("loud", "quiet"),
    ("thick", "thin"),
    ("strong", "weak"),
    ("happy", "sad"),
    ("long", "short"),
    ("clean", "dirty"),
]
SEQUENCES = {"count": NUMBERS, "letters": LETTERS, "days": DAYS, "months": MONTHS}


def _sequence_item(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(SEQUENCES))
    items = SEQUENCES[name]
    cyclic = name in ("days", "months")
    length = rng.randint(5, 7)
    start = rng.randrange(len(items) if cyclic else len(items) - length + 1)
    window = [items[(start + i) % len(items)] for i in range(length)]
    return f"{name}: {' '.join(window[:2])}", " " + " ".join(window[2:])


def _opposite_item(rng: random.Random) -> tuple[str, str]:
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    return f"the opposite of {a} is", f" {b}."


def probe_items(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs; the continuation is what a general model should say."""
    rng = random.Random(seed)
    makers = (_sequence_item, _sequence_item, _opposite_item)
    return [rng.choice(makers)(rng) for _ in range(n)]


def corpus(n: int, seed: int) -> list[str]:
    """Plain-text documents for pretraining: the probe's distribution, whole."""
    return [prompt + continuation for prompt, continuation in probe_items(n, seed)]
