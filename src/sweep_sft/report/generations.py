"""The report's generations section: a few validation generations per task_type (from each
trial's generations.jsonl or its run artifact), the best trial's shown, every other complete
trial's folded away; every text escaped, long ones cut."""

from __future__ import annotations

from html import escape
from typing import Any

from sweep_sft.config.scorers import DEFAULT_SCORER
from sweep_sft.report.data import Sweep, Trial, scorers_of
from sweep_sft.report.numbers import sig3

# Characters of a prompt or an answer shown; the rest is in generations.jsonl.
SHOWN_CHARS = 400
STYLE = "td.text { white-space: pre-wrap; max-width: 28em; overflow-wrap: anywhere; }"


def _cut(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " [...]"


def _prompt(messages: Any) -> str:
    """The last turn of the prompt, and how many came before it."""
    if not isinstance(messages, list) or not messages:
        return _cut(messages)
    last = messages[-1] if isinstance(messages[-1], dict) else {"content": messages[-1]}
    earlier = len(messages) - 1
    before = f"(+{earlier} earlier turn{'s' if earlier > 1 else ''}) " if earlier else ""
    return before + _cut(last.get("content"))


def _score(value: Any) -> str:
    return sig3(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def generations_table(trial: Trial) -> str:
    """The trial's shown generations, a row each: task_type, scorer, prompt, reference, generated, score."""
    head = "".join(f"<th>{h}</th>" for h in ("task_type", "scorer", "prompt", "reference", "generated", "score"))
    rows = []
    for g in sorted(trial.generations, key=lambda g: str(g.get("task_type"))):  # stable: file order within a task
        cells = [g.get("task_type"), g.get("scorer", DEFAULT_SCORER)]
        texts = [_prompt(g.get("prompt")), _cut(g.get("reference")), _cut(g.get("generated"))]
        rows.append(
            "<tr>"
            + "".join(f"<td>{escape(str(c))}</td>" for c in cells)
            + "".join(f"<td class=text>{escape(t)}</td>" for t in texts)
            + f"<td class=num>{_score(g.get('score'))}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def generations_section(sweep: Sweep) -> str:
    """The best trial's generations (or the first complete trial's), then every other trial's in a fold."""
    shown = [t for t in sweep.trials if t.generations]
    if not shown:
        return '<p class="note">no trial recorded its generations (generations.jsonl; eval.generate=false?)</p>'
    best = sweep.best()
    first = best if best is not None and best.generations else shown[0]
    which = "best trial" if first is best else "first trial with generations"
    out = [f"<h3>{escape(first.label)} ({which})</h3>", _scorer_note(first), generations_table(first)]
    for trial in shown:
        if trial is not first:
            out.append(f"<details><summary>{escape(trial.label)}</summary>{generations_table(trial)}</details>")
    return "".join(out)


def _scorer_note(trial: Trial) -> str:
    scorers = scorers_of(trial)
    if all(s == DEFAULT_SCORER for s in scorers.values()):
        return ""
    named = ", ".join(f"{task}: {spec}" for task, spec in sorted(scorers.items()))
    return f'<p class="note">task/exact_match is the mean score under each task_type\'s scorer ({escape(named)})</p>'
