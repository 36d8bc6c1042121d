"""The report's plots as PNG bytes (matplotlib, Agg backend). Each returns None, or a
`Missing` note, when the sweep lacks its data: the report prints the note instead."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sweep_sft.metrics import EXACT_MATCH, GENERAL_DROP, TRAIN_LOSS, VAL_LOSS
from sweep_sft.report.data import Sweep, Trial, is_finite_number, task_types
from sweep_sft.report.numbers import sig3

MAX_LEGEND = 20  # more trials than this: no legend (unreadable), the tables name them
STATE_MARKERS = {"COMPLETE": "o", "PRUNED": "x", "FAILED": "s"}


@dataclass
class Missing:
    """A plot that could not be drawn, and why (shown in its place)."""

    note: str  # one line: why the plot is not there


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


F = TypeVar("F", bound=Callable[..., Any])
# Every plot is drawn as wide as the page (the report's 1200 px body): PLOT_WIDTH inches at DPI,
# shown at the page width (html.STYLE), so its text stays the size it was drawn at.
PLOT_WIDTH, DPI = 12.0, 100


def _plain_text(plot: F) -> F:
    """Labels are task_types, swept values, trial names: text from users, drawn as it is. A `$`
    would start matplotlib's mathtext (and a backslash inside it fail the whole report)."""

    @functools.wraps(plot)
    def wrapped(*args, **kwargs):
        with _pyplot().rc_context({"text.parse_math": False, "text.usetex": False}):
            return plot(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _colors(trials: list[Trial]) -> dict[int, Any]:
    cmap = _pyplot().get_cmap("tab10" if len(trials) <= 10 else "viridis")
    n = max(len(trials) - 1, 1)
    return {t.number: cmap(i if len(trials) <= 10 else i / n) for i, t in enumerate(trials)}


def _legend(ax, n: int, **kwargs) -> None:
    if 0 < n <= MAX_LEGEND:
        ax.legend(fontsize=7, **kwargs)


def is_log_axis(values: list[float]) -> bool:
    """Positive values spanning at least a factor 10: a log axis."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


@_plain_text
def loss_curves(sweep: Sweep) -> dict[str, bytes | Missing]:
    """train/loss and val/loss of every trial, one plot each."""
    out: dict[str, bytes | Missing] = {}
    colors = _colors(sweep.trials)
    for metric in (TRAIN_LOSS, VAL_LOSS):
        trials = [t for t in sweep.trials if t.series.get(metric)]
        if not trials:
            out[metric] = Missing(f"no trial logged {metric}")
            continue
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(PLOT_WIDTH, 4.5))
        for t in trials:
            steps, values = zip(*t.series[metric], strict=True)
            style = "--" if t.state != "COMPLETE" else "-"
            marker = "o" if len(steps) <= 12 else None
            label = f"{t.label} ({t.state.lower()})"
            ax.plot(steps, values, style, marker=marker, ms=3, color=colors[t.number], label=label)
        ax.set(xlabel="step", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        _legend(ax, len(trials), loc="center left", bbox_to_anchor=(1.01, 0.5))
        out[metric] = _png(fig)
    return out


@_plain_text
def channel_losses(sweep: Sweep) -> bytes | Missing:
    """val/loss/<task_type>: a small plot per task_type, a line per trial."""
    tasks = [
        task for task in task_types(sweep, (VAL_LOSS,)) if any(t.series.get(f"{VAL_LOSS}/{task}") for t in sweep.trials)
    ]
    if not tasks:
        return Missing("no trial logged per-task_type validation losses (val/loss/<task_type>)")
    plt = _pyplot()
    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PLOT_WIDTH, 3.0 * rows), squeeze=False)
    colors = _colors(sweep.trials)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for t in sweep.trials:
            points = t.series.get(f"{VAL_LOSS}/{task}")
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, "-o", ms=2.5, lw=1.2, color=colors[t.number], label=t.label)
        ax.set_title(task, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if 0 < len(handles) <= MAX_LEGEND:
        fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("val/loss per task_type", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


@_plain_text
def objective_vs_params(sweep: Sweep) -> bytes | Missing:
    """The objective of every complete trial against each swept parameter."""
    done = [
        t
        for t in sweep.trials
        if t.state == "COMPLETE" and t.objective == sweep.objective and is_finite_number(t.value)
    ]
    if not sweep.objective or not done:
        return Missing("no complete trial with a finite objective value")
    params = [p for p in sweep.swept if any(p in t.params for t in done)]
    if not params:
        return Missing("the sweep varies no parameter (nothing to plot the objective against)")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(params), figsize=(max(4.5 * len(params), PLOT_WIDTH), 4.0), squeeze=False)
    best = sweep.best()
    for ax, param in zip(axes[0], params, strict=True):
        trials = [t for t in done if param in t.params]
        xs, ys = [t.params[param] for t in trials], [t.value for t in trials]
        if _numeric(xs):
            if is_log_axis(xs):
                ax.set_xscale("log")
            _value_ticks(ax, xs)
        else:  # categorical: positions in first-seen order, labelled with the values
            cats = list(dict.fromkeys(map(str, xs)))
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=7)
            xs = [cats.index(str(x)) for x in xs]
        ax.scatter(xs, ys, s=28, zorder=3, color="tab:blue")
        for t, x, y in zip(trials, xs, ys, strict=True):
            ax.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if best is not None and t.number == best.number:
                ax.scatter([x], [y], s=120, facecolors="none", edgecolors="tab:red", zorder=4, label="best")
        ax.margins(0.12)  # room for the labels of the outermost points
        ax.set(xlabel=param, ylabel=sweep.objective)
        ax.grid(alpha=0.3)
        if best is not None and best in trials:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _value_ticks(ax, xs: list[float]) -> None:
    """Few distinct values (a grid): a tick at each, labelled with it, and no minor labels,
    which crowd each other on a log axis spanning under a decade or two."""
    from matplotlib.ticker import NullFormatter

    values = sorted(set(xs))
    if len(values) <= 8:
        ax.set_xticks(values, [sig3(v) for v in values], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())


# The gain measures of "learn vs forget", the first that every plotted trial has: one unit on x.
EXACT_MATCH_LABEL = "task/exact_match (mean over task_types)"
VAL_REDUCTION = "val/loss reduction from the first evaluation"


def exact_match(trial: Trial) -> float | None:
    """task/exact_match (evaluate.py's mean over task_types), or that mean of the per-task ones."""
    if is_finite_number(trial.metrics.get(EXACT_MATCH)):
        return trial.metrics[EXACT_MATCH]
    per_task = [v for k, v in trial.metrics.items() if k.startswith(f"{EXACT_MATCH}/") and is_finite_number(v)]
    return sum(per_task) / len(per_task) if per_task else None


def val_reduction(trial: Trial) -> float | None:
    """How far val/loss fell from the first evaluation to the last (every complete trial has it)."""
    val = trial.series.get(VAL_LOSS) or []
    return val[0][1] - val[-1][1] if len(val) >= 2 else None


def learn_points(sweep: Sweep) -> tuple[str, list[tuple[Trial, float, float]], list[Trial]]:
    """The gain measure, the (trial, gain, general_drop) points, and the trials with a
    general_drop left out for lacking that measure. Exact match when every trial with a
    general_drop and a gain has it; otherwise the val/loss reduction, for all of them."""
    trials = [
        t
        for t in sweep.trials
        if is_finite_number(t.metrics.get(GENERAL_DROP)) and (exact_match(t), val_reduction(t)) != (None, None)
    ]
    if all(exact_match(t) is not None for t in trials):
        measure, gain = EXACT_MATCH_LABEL, exact_match
    else:
        measure, gain = VAL_REDUCTION, val_reduction
    points = [(t, gain(t), t.metrics[GENERAL_DROP]) for t in trials if gain(t) is not None]
    return measure, points, [t for t in trials if gain(t) is None]


@_plain_text
def learn_vs_forget(sweep: Sweep) -> bytes | Missing:
    """general_drop (forgetting) against task gain (learning), a labelled point per trial."""
    measure, points, left_out = learn_points(sweep)
    if not points:
        return Missing("no trial has both general_drop and a task gain (task/exact_match or a val/loss series)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH, 5.0))
    for t, gain, drop in points:
        ax.scatter([gain], [drop], marker=STATE_MARKERS.get(t.state, "o"), s=30, color="tab:purple")
        ax.annotate(f"#{t.number}", (gain, drop), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.margins(0.12)
    ax.set(xlabel=f"{measure}  (learned →)", ylabel="general_drop  (forgot ↑)")
    title = "learn vs forget: up is worse, right is better"
    if left_out:
        title += f"\nleft out (no {measure}): " + ", ".join(f"#{t.number}" for t in left_out)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


@_plain_text
def sandwich(sweep: Sweep) -> bytes | None:
    """The sandwich search: each probe on the param axis (its round on y), green passing, red
    failing, the final bracket shaded. None when the sweep is no sandwich search."""
    result = sweep.sandwich
    if not result:
        return None
    probes = [p for p in result.get("probes", []) if is_finite_number(p.get("value"))]
    bracket = result.get("bracket") or {}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH, 3.2 + 0.25 * len(probes)))
    values = [p["value"] for p in probes] + [v for v in bracket.values() if is_finite_number(v)]
    if is_log_axis(values):
        ax.set_xscale("log")
    _value_ticks(ax, [p["value"] for p in probes])
    ax.margins(x=0.12)  # room for the rightmost probe's label
    if is_finite_number(bracket.get("passing")) and is_finite_number(bracket.get("failing")):
        lo, hi = sorted((bracket["passing"], bracket["failing"]))
        ax.axvspan(lo, hi, color="gold", alpha=0.35, label="final bracket")
    constraint = result.get("constraint") or {}
    metric = constraint.get("metric")
    for p in probes:
        color = "tab:green" if p.get("passed") else "tab:red"
        ax.scatter([p["value"]], [p.get("round", 0)], color=color, s=50, zorder=3)
        got = [r.get(metric) for r in p.get("results") or [] if isinstance(r, dict)]
        text = ", ".join(sig3(v) for v in got if is_finite_number(v)) or "failed"
        ax.annotate(
            f"{sig3(p['value'])}: {text}",  # the metric is in the title
            (p["value"], p.get("round", 0)),
            textcoords="offset points",
            xytext=(6, -4),
            fontsize=7,
        )
    ax.scatter([], [], color="tab:green", label="passes")
    ax.scatter([], [], color="tab:red", label="fails")
    rounds = [p.get("round", 0) for p in probes]
    if rounds:
        ax.set_ylim(max(rounds) + 0.7, min(rounds) - 0.7)  # round 1 on top
        ax.set_yticks(sorted(set(rounds)))
    rule = f"{metric} {constraint.get('op', '')} {constraint.get('threshold', '')}" if metric else ""
    ax.set(xlabel=result.get("param", "param"), ylabel="round", title=f"sandwich search: {rule}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)
