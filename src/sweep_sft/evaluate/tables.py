"""The per-task_type table (with each task_type's scorer, unless all are exact) and the
general-probe line that a trial and standalone evaluation print."""

from __future__ import annotations

from sweep_sft.config.scorers import DEFAULT_SCORER, scorer_names
from sweep_sft.metrics import EXACT_MATCH, GENERAL_DROP, GENERAL_SCORE, TRAIN_RECALL, VAL_LOSS, pass_at, pass_ks


def task_table(
    metrics: dict[str, float],
    tasks: list[str],
    stats: dict[str, dict] | None = None,
    scorers: dict[str, str] | None = None,
) -> str:
    """Per task_type: training examples, val loss, exact match, and where measured pass@k and
    recall on trained prompts (recall high but exact match low: learned, not generalising).
    When `scorers` (eval.scorers) gives any task_type another scorer than exact, the column is
    the mean score ("score") and a last column names each task_type's scorer."""
    names = scorer_names(scorers or {}, tasks)
    scored = any(spec != DEFAULT_SCORER for spec in names.values())
    k = max(pass_ks(metrics), default=None)
    columns = [("val loss", VAL_LOSS, ".3f", 10), ("score" if scored else "exact match", EXACT_MATCH, ".2f", 13)]
    if k:
        columns.append((f"pass@{k}", pass_at(k), ".2f", 9))
    if TRAIN_RECALL in metrics:
        columns.append(("train recall", TRAIN_RECALL, ".2f", 14))
    head = f"{'task_type':<26}" + (f"{'train ex':>9}" if stats is not None else "")
    lines = ["", head + "".join(f"{name:>{width}}" for name, _, _, width in columns) + ("  scorer" if scored else "")]

    def cells(suffix: str) -> str:
        values = [(metrics.get(f"{key}{suffix}"), fmt, width) for _, key, fmt, width in columns]
        return "".join(f"{'-' if v is None else format(v, fmt):>{w}}" for v, fmt, w in values)

    for task in tasks:
        examples = f"{stats.get(task, {}).get('examples', 0):>9}" if stats is not None else ""
        lines.append(f"{task:<26}{examples}{cells('/' + task)}" + (f"  {names[task]}" if scored else ""))
    lines.append(f"{'all':<26}{'':>9}{cells('')}" if stats is not None else f"{'all':<26}{cells('')}")
    return "\n".join(lines)


def general_lines(m: dict[str, float]) -> list[str]:
    """The general probe's line (base -> trained score and the drop), when it was measured."""
    if GENERAL_DROP not in m:
        return []
    return [
        f"general probe: base {m['general/base_score']:.3f} -> trained {m[GENERAL_SCORE]:.3f} "
        f"(general_drop {m[GENERAL_DROP]:+.3f})"
    ]
