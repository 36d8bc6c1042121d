"""The table a finished trial prints to the terminal."""

from __future__ import annotations

from sweep_sft.evaluate.tables import general_lines, task_table
from sweep_sft.metrics import TOTAL_TIME, TRAIN_TIME, VAL_LOSS
from sweep_sft.trial.state import TrialResult


def summary_table(
    result: TrialResult, tasks: list[str], stats: dict[str, dict[str, int]], scorers: dict[str, str] | None = None
) -> str:
    """The table a finished trial prints: per task_type, the loss curve's ends, the general probe,
    the objective; `scorers` (eval.scorers) names each task_type's scorer unless all are exact."""
    m = result.metrics
    first_val = result.series.get(VAL_LOSS, [[0, float("nan")]])[0][1]
    lines = [task_table(m, tasks, stats, scorers)]
    lines.append(
        f"val/loss {first_val:.3f} at step 0 -> {m.get(VAL_LOSS, float('nan')):.3f}; "
        f"train {m.get(TRAIN_TIME, 0):.1f}s, total {m.get(TOTAL_TIME, 0):.1f}s"
    )
    lines += general_lines(m)
    lines.append(
        f"objective {result.objective} = {result.value:.4f}; outputs in {result.output_dir}"
        + (f"; mlflow run {result.run_id}" if result.run_id else "")
    )
    return "\n".join(lines)
