"""Run descriptions (MLflow's note, markdown) that the MLflow UI shows on a run's page: a trial's
final table, a sweep's best trial and where its report is. The text comes from the formatters the
terminal and the report use (sweep_sft.trial.tables, sweep_sft.report.numbers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweep_sft.report.numbers import sig3

if TYPE_CHECKING:
    from sweep_sft.report.data import Sweep


def trial_note(table: str) -> str:
    """A finished trial's description: the table it printed, as preformatted markdown."""
    return f"**Trial result**\n\n```\n{table}\n```\n"


def sweep_note(sweep: Sweep, report_path: str | None) -> str:
    """The sweep parent run's description: counts, the best trial and its values, the report."""
    lines = [
        f"**Sweep** ({sweep.sweeper}) over {', '.join(sweep.swept) or 'nothing swept'}: "
        f"{sweep.count('COMPLETE')} complete, {sweep.count('PRUNED')} pruned, {sweep.count('FAILED')} failed",
        "",
    ]
    best = sweep.best()
    if best is None:
        lines.append(f"No best trial (objective {sweep.objective or 'unknown'}).")
    else:
        lines.append(f"Best trial: **{best.label}**, {best.objective} = **{sig3(best.value)}** ({sweep.direction})")
        lines += ["", "| param | value |", "|---|---|"]
        lines += [f"| {key} | {sig3(value)} |" for key, value in best.params.items()]
    lines.append("")
    lines.append("Compare the child runs: select them in the runs table, then Compare.")
    if report_path:
        lines.append(f"Report: artifact `report.html` of this run (on disk: `{report_path}`).")
    return "\n".join(lines) + "\n"
