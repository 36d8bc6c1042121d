"""A trial compared with `eval.baseline_run_id` (an MLflow run id or a trial folder): the same
per-task_type table as `python -m sweep_sft.compare`, printed at the end of the trial and
recorded on its run (comparison.txt, `compare.*` tags, `compare/*` metrics). A task_type the
two scored with different scorers, or a general probe on different sets, is marked not comparable
and neither flagged nor given a `compare/delta` metric."""

from __future__ import annotations

import math
from pathlib import Path

from sweep_sft.compare import Comparison, Side, Tolerances, compare_runs, load_side, table
from sweep_sft.config.schema import Config
from sweep_sft.errors import ConfigError, UserInputError
from sweep_sft.metrics import COMPARE_DELTA, COMPARE_REGRESSIONS
from sweep_sft.tracking.client import tracking_uri

COMPARISON_FILE = "comparison.txt"


def load_baseline(config: Config, store: str | None = None) -> Side | None:
    """The baseline's final metrics and what measured them, read before training so a wrong id
    fails at once; a run id is looked up in `store`, else in the trial's tracking.uri."""
    ref = config.eval.baseline_run_id
    if ref is None:
        return None
    try:
        return load_side(ref, store or tracking_uri(config.tracking))
    except UserInputError as exc:
        raise ConfigError(f"eval.baseline_run_id={ref}: {exc}") from exc


def compare_with_baseline(config: Config, baseline: Side, measured: Side) -> Comparison:
    """The trial's (or evaluation's) side against the baseline's, with the trial's eval tolerances."""
    ev = config.eval
    return compare_runs(baseline, measured, Tolerances(ev.em_tolerance, ev.loss_tolerance, ev.general_tolerance))


def comparison_metrics(comparison: Comparison) -> dict[str, float]:
    """Deltas (trial - baseline) per task_type and the number of regressions, as metrics."""
    out = {COMPARE_REGRESSIONS: float(len(comparison.regressions))}
    for row in comparison.rows:
        em_delta = row.em_b - row.em_a if row.comparable else math.nan  # scored differently: no delta
        for name, delta in (("exact_match", em_delta), ("val_loss", row.loss_b - row.loss_a)):
            if not math.isnan(delta):
                out[f"{COMPARE_DELTA}/{name}/{row.task}"] = delta
    return out


def record(config: Config, baseline: Side, measured: Side, out: Path, run) -> dict[str, float]:
    """Print the comparison, write it beside metrics.json and onto the run; its metrics returned
    for the trial to log with its other final values."""
    ref = config.eval.baseline_run_id
    comparison = compare_with_baseline(config, baseline, measured)
    text = table(comparison, baseline, measured, (f"baseline {ref}", f"this trial {out}"))
    print(f"\ncomparison with the baseline (eval.baseline_run_id):\n{text}")
    (out / COMPARISON_FILE).write_text(text + "\n")
    run.log_text(text, COMPARISON_FILE)
    run.set_tag("compare.baseline", str(ref))
    run.set_tag("compare.regressions", ", ".join(comparison.regressions) or "none")
    return comparison_metrics(comparison)
