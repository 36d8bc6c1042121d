"""The training mix: source weights, per task_type repeats and shares, applied
deterministically from the seed.

Order: each source's examples are scaled by its `weight`; after tokenisation, each task_type
matched by `task_repeat` is scaled by its multiplier; then each group named in `task_ratio`
is scaled so that it forms exactly that share of the mix, measured in examples or in
supervised tokens (`ratio_of`). Tasks not named keep their relative proportions and fill
the rest; a share names a task_type (`reasoning.addition`) or a whole family (`reasoning`).

Scaling by m >= 0 repeats every item floor(m) times and adds a seeded sample (without
replacement, original order kept) of the fractional part: m=2.5 gives each item twice and
half of them a third time; m=0.3 keeps 30%.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

from sweep_sft.data.tokenize import IGNORE, Tokenized
from sweep_sft.errors import ConfigError

T = TypeVar("T")


def scale(items: Sequence[T], multiplier: float, rng: random.Random) -> list[T]:
    """items repeated `multiplier` times: whole copies plus a seeded sample for the fraction."""
    whole = math.floor(multiplier)
    extra = round((multiplier - whole) * len(items))
    picked = set(rng.sample(range(len(items)), extra)) if extra else set()
    return [item for i, item in enumerate(items) for _ in range(whole + (i in picked))]


def flatten_tree(tree: dict[str, Any] | None, key: str) -> dict[str, float]:
    """{"reasoning": {"addition": 0.3}} -> {"reasoning/addition": 0.3}, numbers checked."""
    out: dict[str, float] = {}
    for name, value in (tree or {}).items():
        path = f"{key}.{name}"
        if isinstance(value, dict):
            out.update({f"{name}/{k}": v for k, v in flatten_tree(value, path).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(f"{path} must be >= 0, got {value}")
            out[name] = float(value)
        else:
            raise ConfigError(f"{path} must be a number, got {value!r}")
    return out


def match_groups(names: dict[str, float], tasks: Sequence[str], key: str) -> dict[str, list[str]]:
    """Which task_types each name covers (itself, or a family by its first level)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        covered = [t for t in tasks if t == name or t.startswith(name + "/")]
        if not covered:
            raise ConfigError(
                f"{key}.{name.replace('/', '.')}: no task_type {name!r} in the training data; "
                f"task_types: {', '.join(sorted(set(tasks)))}"
            )
        groups[name] = covered
    seen: dict[str, str] = {}
    for name, covered in groups.items():
        for task in covered:
            if task in seen:
                raise ConfigError(f"{key}: {seen[task]!r} and {name!r} both set task_type {task!r}; name it once")
            seen[task] = name
    return groups


def apply_task_mix(
    rows: list[Tokenized],
    repeat: dict[str, Any],
    ratio: dict[str, Any],
    ratio_of: str,
    seed: int,
    only: str | None = None,
) -> list[Tokenized]:
    """The rows, each repeated as often as the mix asks, in their original order."""
    rng = random.Random(seed)
    tasks = sorted({r.task_type for r in rows})
    # Work on row indices per task, so the mixed rows keep their original order.
    by_task = {t: [i for i, r in enumerate(rows) if r.task_type == t] for t in tasks}
    if only:
        kept = set(match_groups({only: 1.0}, tasks, "data.mix.only")[only])
        by_task = {t: (indices if t in kept else []) for t, indices in by_task.items()}
    repeats = flatten_tree(repeat, "data.mix.task_repeat")
    for name, covered in match_groups(repeats, tasks, "data.mix.task_repeat").items():
        for task in covered:
            by_task[task] = scale(by_task[task], repeats[name], rng)
    shares = flatten_tree(ratio, "data.mix.task_ratio")
    if shares:
        _apply_shares(rows, by_task, shares, match_groups(shares, tasks, "data.mix.task_ratio"), ratio_of, rng)
    copies = Counter(i for indices in by_task.values() for i in indices)
    mixed = [row for i, row in enumerate(rows) for _ in range(copies[i])]
    if not mixed:
        raise ConfigError("data.mix: the mix leaves no training examples (every weight, repeat or ratio is 0)")
    return mixed


def _apply_shares(
    rows: list[Tokenized],
    by_task: dict[str, list[int]],
    shares: dict[str, float],
    groups: dict[str, list[str]],
    ratio_of: str,
    rng: random.Random,
) -> None:
    def amount(task: str) -> float:
        return float(sum(_measure(rows[i], ratio_of) for i in by_task[task]))

    named = {t for covered in groups.values() for t in covered}
    rest = sum(amount(t) for t in by_task if t not in named)
    total_share = sum(shares.values())
    if total_share > 1 + 1e-9 or (named == set(by_task) and abs(total_share - 1) > 1e-9):
        raise ConfigError(
            f"data.mix.task_ratio: shares sum to {total_share:g}; they must sum to at most 1 "
            "(exactly 1 when they name every task_type)"
        )
    # The unnamed tasks keep their size; named groups are scaled around them. With every
    # task named, the mix keeps its current total instead; shares summing to 1 leave the
    # unnamed tasks out and keep the named groups' total (task_ratio.x=1.0: x alone).
    if total_share >= 1 - 1e-9:
        total = sum(amount(t) for t in named)
        for task in set(by_task) - named:
            by_task[task] = []
    else:
        total = rest / (1 - total_share) if rest > 0 else sum(amount(t) for t in by_task)
    for name, covered in groups.items():
        have = sum(amount(t) for t in covered)
        if have == 0:
            continue
        multiplier = shares[name] * total / have
        for task in covered:
            by_task[task] = scale(by_task[task], multiplier, rng)


def _measure(row: Tokenized, ratio_of: str) -> int:
    if ratio_of == "examples":
        return 1
    return sum(label != IGNORE for label in row.labels[1:])


def realised_mix(rows: list[Tokenized]) -> dict[str, dict[str, float]]:
    """Examples and supervised tokens per task_type in the final mix, and their shares."""
    stats: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = stats.setdefault(row.task_type, {"examples": 0, "supervised_tokens": 0})
        entry["examples"] += 1
        entry["supervised_tokens"] += _measure(row, "supervised_tokens")
    n_examples = sum(s["examples"] for s in stats.values())
    n_tokens = sum(s["supervised_tokens"] for s in stats.values())
    for entry in stats.values():
        entry["example_share"] = entry["examples"] / max(n_examples, 1)
        entry["token_share"] = entry["supervised_tokens"] / max(n_tokens, 1)
    return dict(sorted(stats.items()))
