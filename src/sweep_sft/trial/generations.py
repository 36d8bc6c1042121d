"""What a trial keeps of its final evaluation's generations: every greedy generation in its
folder's generations.jsonl, the same file as a run artifact (the report reads either), and each
task_type's scorer as a run tag (sweep_sft.scorer.<task_type>)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sweep_sft.config.schema import EvalConfig
from sweep_sft.config.scorers import scorer_names
from sweep_sft.names import GENERATIONS_FILE, scorer_tag


def generations_text(generations: list[dict[str, Any]]) -> str:
    """The records as JSONL: one JSON object a line, non-ASCII text as it is."""
    return "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations)


def record_generations(out: Path, run, generations: list[dict[str, Any]], ev: EvalConfig, tasks: list[str]) -> None:
    """generations.jsonl into the trial folder and the run, the scorer of each task_type on the run."""
    for task, spec in scorer_names(ev.scorers, tasks).items():
        run.set_tag(scorer_tag(task), spec)
    if not ev.generate:
        return
    text = generations_text(generations)
    (out / GENERATIONS_FILE).write_text(text, encoding="utf-8")
    run.log_text(text, GENERATIONS_FILE)
