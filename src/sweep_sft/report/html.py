"""The sweep report: one self-contained HTML file (PNG plots as data URIs, no CSS, JS or fonts
from elsewhere) of a sweep folder or an MLflow parent run.

    python -m sweep_sft.report multirun/2026-01-01/12-00-00
    python -m sweep_sft.report <parent run id> --tracking-uri sqlite:///./mlflow.db
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from sweep_sft.metrics import EXACT_MATCH, GENERAL_DROP, GENERAL_SCORE, TRAIN_LOSS, TRAIN_WEIGHT_SHARE, VAL_LOSS
from sweep_sft.report import plots
from sweep_sft.report.data import Sweep, task_types
from sweep_sft.report.generations import STYLE as GENERATIONS_STYLE
from sweep_sft.report.generations import generations_section
from sweep_sft.report.load import load
from sweep_sft.report.numbers import sig3
from sweep_sft.report.plots import Missing

REPORT_FILE = "report.html"
# Per-task metric families left out of the per-task table: the mix, not the trial's outcome.
MIX_PREFIXES = ("data/", TRAIN_WEIGHT_SHARE)
# Final metrics every trial's line in the summary shows (those any trial has).
SUMMARY_METRICS = (VAL_LOSS, EXACT_MATCH, GENERAL_DROP, GENERAL_SCORE)
SECTIONS = (
    ("summary", "Sweep"),
    ("loss", "Loss curves"),
    ("channels", "Channel losses"),
    ("objective", "Objective vs swept parameters"),
    ("forgetting", "Learn vs forget"),
    ("sandwich", "Sandwich search"),
    ("failed", "Failed and pruned trials"),
    ("diagnostics", "Diagnostics"),
    ("tasks", "Final per-task metrics"),
    ("generations", "Generations"),
)
STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { width: 100%; height: auto; display: block; margin: 0.5em 0; }
.note { color: #777; font-style: italic; } code { font-size: 0.9em; }
""" + GENERATIONS_STYLE
# Records whether every plot decoded (the browser test reads it; a person sees it in the title).
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  if (ok < imgs.length) document.title += ' (' + (imgs.length - ok) + ' plots failed to load)';
});
"""


def _img(png: bytes | Missing | None, alt: str) -> str:
    if png is None:
        return ""
    if isinstance(png, Missing):
        return f'<p class="note">{escape(png.note)}</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    # Long metric names may wrap after a slash, not inside a word.
    head = "".join(f"<th>{escape(h).replace('/', '/<wbr>')}</th>" for h in header) if any(header) else ""
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{escape(sig3(c))}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else ""


def summary_section(sweep: Sweep) -> str:
    best = sweep.best()
    direction = sweep.direction or "unknown"
    if sweep.direction and not sweep.direction_known:
        direction += " (assumed from the name)"
    rows = [
        ["source", sweep.source],
        ["sweep folder", str(sweep.sweep_dir) if sweep.sweep_dir else "(gone: rebuilt from the MLflow child runs)"],
        ["sweeper", sweep.sweeper],
        ["swept", ", ".join(sweep.swept) or "(nothing varies)"],
        ["objective", f"{sweep.objective or 'unknown'}, {direction}"],
        [
            "trials",
            f"{len(sweep.trials)}: {sweep.count('COMPLETE')} complete, {sweep.count('PRUNED')} pruned, "
            f"{sweep.count('FAILED')} failed",
        ],
        ["best trial", f"{best.label}: {sweep.objective} = {sig3(best.value)}" if best else "none"],
    ]
    if sweep.parent_run_id:
        rows.append(["MLflow parent run", f"{sweep.parent_run_id} ({sweep.tracking_uri})"])
    return _table(["", ""], rows) + trials_table(sweep)


def trials_table(sweep: Sweep) -> str:
    """Every trial in one line: swept values, state, objective, forgetting, steps."""
    extra = [k for k in SUMMARY_METRICS if k != sweep.objective and any(k in t.metrics for t in sweep.trials)]
    header = ["#", *sweep.swept, "state", sweep.objective or "objective", *extra, "steps"]
    rows = [
        [
            t.number,
            *(t.params.get(k) for k in sweep.swept),
            t.state,
            t.value,
            *(t.metrics.get(k) for k in extra),
            t.steps,
        ]
        for t in sweep.trials
    ]
    numeric = {0, *range(len(sweep.swept) + 2, len(header))}
    return _table(header, rows, numeric)


def failed_section(sweep: Sweep) -> str:
    bad = [t for t in sweep.trials if t.state in ("FAILED", "PRUNED")]
    if not bad:
        return '<p class="note">no failed or pruned trial</p>'
    rows = [[t.number, " ".join(t.overrides), t.state, t.steps, _first_line(t.error)] for t in bad]
    return _table(["#", "overrides", "state", "step", "error (first line)"], rows, numeric={0, 3})


def diagnostics_section(sweep: Sweep) -> str:
    rows = [
        [t.number, f.get("sign", ""), f.get("severity", ""), f.get("step"), f.get("evidence", "")]
        for t in sweep.trials
        for f in t.diagnostics
    ]
    if not rows:
        return '<p class="note">no loss-curve diagnostic finding in any trial</p>'
    return _table(["trial", "sign", "severity", "step", "evidence"], rows, numeric={0, 3})


def per_task_tables(sweep: Sweep) -> str:
    """One table per per-task metric family (val/loss/<task>, task/pass@1/<task>, ...): a row per
    trial, a column per task_type. Generic over whatever families the trials logged."""
    tasks = task_types(sweep)
    longest_first = sorted(tasks, key=len, reverse=True)  # "val/loss/a/b" is task a/b, not b of "val/loss/a"
    families: dict[str, None] = {}
    for t in sweep.trials:
        for key in t.metrics:
            task = next((task for task in longest_first if key.endswith("/" + task)), None)
            if task and not key.startswith(MIX_PREFIXES):
                families[key[: -len(task) - 1]] = None
    if not families:
        return '<p class="note">no per-task_type metric in any trial</p>'
    out = []
    for family in sorted(families):
        present = sorted(task for task in tasks if any(f"{family}/{task}" in t.metrics for t in sweep.trials))
        rows = [
            [t.label, *(t.metrics.get(f"{family}/{task}") for task in present)]
            for t in sweep.trials
            if any(f"{family}/{task}" in t.metrics for task in present)
        ]
        out.append(f"<h3>{escape(family)}</h3>")
        out.append(_table(["trial", *present], rows, numeric=set(range(1, len(present) + 1))))
    return "".join(out)


def render(sweep: Sweep) -> str:
    """The whole report page: every section, plots inlined as PNG."""
    loss = plots.loss_curves(sweep)
    body = {
        "summary": summary_section(sweep),
        "loss": _img(loss[TRAIN_LOSS], "train/loss of every trial")
        + _img(loss[VAL_LOSS], "val/loss of every trial"),
        "channels": _img(plots.channel_losses(sweep), "val/loss per task_type"),
        "objective": _img(plots.objective_vs_params(sweep), "objective against each swept parameter"),
        "forgetting": _img(plots.learn_vs_forget(sweep), "general_drop against task gain"),
        "sandwich": _img(plots.sandwich(sweep), "sandwich bracket and probes"),
        "failed": failed_section(sweep),
        "diagnostics": diagnostics_section(sweep),
        "tasks": per_task_tables(sweep),
        "generations": generations_section(sweep),
    }
    sections = []
    for key, title in SECTIONS:
        if key == "sandwich" and not sweep.sandwich:
            continue
        sections.append(f'<section id="{key}"><h2>{escape(title)}</h2>{body[key]}</section>')
    title = f"sweep report: {sweep.sweep_dir.name if sweep.sweep_dir else sweep.source}"
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style><script>{CHECK_SCRIPT}</script></head>"
        f"<body><h1>{escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def write_report(target: str | Path, out: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """The report of a sweep folder or parent run id, written to `out` (default: the sweep
    folder's report.html, or ./report-<run id>.html for a sweep rebuilt from MLflow)."""
    sweep = load(str(target), tracking_uri)
    if out is None:
        out = sweep.sweep_dir / REPORT_FILE if sweep.sweep_dir else Path(f"report-{sweep.parent_run_id}.html")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(sweep), encoding="utf-8")
    return out
