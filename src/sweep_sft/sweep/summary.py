"""What a grid sweep leaves behind: one entry per job (number, overrides, state COMPLETE /
FAILED / PRUNED, objective value, error) in `sweep_summary.json`, a table of them, and the
failure-rate verdict (the same rule as the optuna5 sweeper's)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from sweep_sft.names import SUMMARY_FILE
from sweep_sft.sweep.jobs import job_error, job_record

STATES = ("COMPLETE", "PRUNED", "FAILED")


def job_entry(number: int, job: JobReturn) -> dict[str, Any]:
    """One job's line of the summary."""
    overrides = list(job.overrides or [])
    if job.status != JobStatus.COMPLETED:
        return {"number": number, "overrides": overrides, "state": "FAILED", "value": None, "error": job_error(job)}
    record = job_record(job) or {}
    state = record.get("state", "COMPLETE")
    value = job.return_value
    value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if value is not None and not math.isfinite(value):
        return {
            "number": number,
            "overrides": overrides,
            "state": "FAILED",
            "value": value,
            "error": f"non-finite objective {value}",
        }
    entry = {"number": number, "overrides": overrides, "state": state, "value": value, "error": None}
    if record.get("objective"):
        entry["objective"] = record["objective"]
    return entry


def summarize(entries: list[dict[str, Any]], n_jobs: int, max_failure_rate: float) -> dict[str, Any]:
    """The summary: the jobs' entries (by job number), counts per state and the failure-rate verdict."""
    entries = sorted(entries, key=lambda e: e["number"])
    states = {s: sum(e["state"] == s for e in entries) for s in STATES}
    return {
        "n_jobs": n_jobs,
        "launched": len(entries),
        "states": states,
        "max_failure_rate": max_failure_rate,
        "too_many_failed": too_many_failed(states["FAILED"], n_jobs, max_failure_rate),
        "jobs": entries,
    }


def too_many_failed(failed: int, n_jobs: int, max_failure_rate: float) -> bool:
    """More than max_failure_rate of all the sweep's jobs failed (as optuna5 counts: of the
    planned total, so the verdict can be reached before the last batch)."""
    return failed > max_failure_rate * n_jobs


def write(sweep_dir: str | Path, summary: dict[str, Any]) -> Path:
    """The summary written to the sweep folder's sweep_summary.json; its path."""
    path = Path(sweep_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=1, default=str))
    return path


def table(summary: dict[str, Any], width: int = 60) -> str:
    """The jobs as text, failed ones with their error's first line; a job's overrides wrapped at
    `width` between overrides (one longer than `width` stays whole), never cut."""
    lines = [f"{'#':>4}  {'state':<9}{'value':>12}  overrides"]
    for e in summary["jobs"]:
        value = "-" if e["value"] is None else f"{e['value']:.4g}"
        wrapped = textwrap.wrap(" ".join(e["overrides"]), width, break_long_words=False, break_on_hyphens=False)
        first, *more = wrapped or [""]
        lines.append(f"{e['number']:>4}  {e['state']:<9}{value:>12}  {first}")
        lines += [" " * 27 + line for line in more]
    s = summary["states"]
    lines.append(
        f"{summary['launched']} of {summary['n_jobs']} jobs: {s['COMPLETE']} complete, {s['PRUNED']} pruned, "
        f"{s['FAILED']} failed"
    )
    for e in summary["jobs"]:
        if e["state"] == "FAILED":
            first = (e["error"] or "").strip().splitlines()[:1]
            lines.append(f"  failed #{e['number']}: {first[0][:200] if first else '?'}")
    return "\n".join(lines)
