"""The rows of bench/sweep_efficiency.py: from each arm's trials (their own start and end times,
steps, state, value) and the arm's wall time, the figures its table prints and `--json` writes.

- slot_busy = summed trial time / (slots x wall): the share of the slots' time spent inside trials
  (job start-up, scheduling and waiting on a batch's slowest trial are what it leaves out);
- trial_steps = optimizer steps summed over all trials (a pruned trial counts the steps it ran);
- best_value = the lowest final value of a COMPLETE trial (the study minimises);
- time_to_best_s = seconds from the arm's start (its controller or framework start-up included)
  to the end of the first trial whose value is within 1% of the row's best;
- time_to_run_best_s (extra) = the same to within 1% of the best of all rows of the run, so that
  an arm that settles early on a poorer value does not look fast (None: never reached).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TOLERANCE = 0.01
KEYS = ("dispatch", "pruner", "wall_s", "slot_busy", "trial_steps", "best_value", "time_to_best_s")


def slot_busy(trials: Sequence[dict], slots: int, wall_s: float) -> float:
    """Summed trial time over the slots' time (slots x wall_s)."""
    if slots < 1 or wall_s <= 0:
        raise ValueError(f"slot_busy needs slots >= 1 and wall_s > 0, got {slots} and {wall_s}")
    return sum(t["t_end"] - t["t_start"] for t in trials) / (slots * wall_s)


def best_value(trials: Sequence[dict]) -> float | None:
    """The lowest value of a COMPLETE trial; None when none completed."""
    values = [t["value"] for t in trials if t["state"] == "COMPLETE" and math.isfinite(t["value"])]
    return min(values) if values else None


def time_to_within(trials: Sequence[dict], origin: float, target: float | None, tol: float = TOLERANCE) -> float | None:
    """Seconds from origin to the end of the first COMPLETE trial with value <= target + tol x |target|."""
    if target is None:
        return None
    limit = target + tol * abs(target)
    ends = [t["t_end"] for t in trials if t["state"] == "COMPLETE" and t["value"] <= limit]
    return min(ends) - origin if ends else None


def make_row(dispatch: str, pruner: str, trials: Sequence[dict], origin: float, wall_s: float, slots: int) -> dict:
    """One row of the table (KEYS first, then the number of trials and how many were pruned)."""
    best = best_value(trials)
    return {
        "dispatch": dispatch,
        "pruner": pruner,
        "wall_s": wall_s,
        "slot_busy": slot_busy(trials, slots, wall_s),
        "trial_steps": sum(t["steps"] for t in trials),
        "best_value": best,
        "time_to_best_s": time_to_within(trials, origin, best),
        "trials": len(trials),
        "pruned": sum(t["state"] == "PRUNED" for t in trials),
    }


def add_run_best(rows: list[dict], trials_of: list[Sequence[dict]], origins: list[float]) -> float | None:
    """Set each row's time_to_run_best_s (to within 1% of the best of all rows); returns that best."""
    bests = [r["best_value"] for r in rows if r["best_value"] is not None]
    run_best = min(bests) if bests else None
    for row, trials, origin in zip(rows, trials_of, origins, strict=True):
        row["time_to_run_best_s"] = time_to_within(trials, origin, run_best)
    return run_best


def table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| dispatch | pruner | trials (pruned) | wall s | slot-busy | trial-steps | best value "
        "| to 1% of best s | to 1% of run best s |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['dispatch']} | {r['pruner']} | {r['trials']} ({r['pruned']}) | {r['wall_s']:.1f} | "
            f"{r['slot_busy']:.0%} | {r['trial_steps']} | {_num(r['best_value'], '.4f')} | "
            f"{_num(r['time_to_best_s'], '.1f')} | {_num(r.get('time_to_run_best_s'), '.1f')} |"
        )
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
