"""Compare two trials per task_type: `python -m sweep_sft.compare A B`.

A and B are trial output folders (their metrics.json), evaluation.json files written by
`python -m sweep_sft.evaluate`, or MLflow run ids (`--tracking-uri`, default $MLFLOW_TRACKING_URI,
else the local ./mlflow.db). B is the candidate, A the baseline: every delta is B - A, and a task_type
whose exact match drops or whose validation loss rises beyond the tolerances is flagged as a
regression, and so is a general-ability drop (forgetting) beyond A's. Where exact match drops and
both runs measured pass@k (`eval.pass_k`), pass@k and the share of right samples tell a
fluctuation (greedy decoding flipped, but the right answer is sampled as often as before: not a
regression) from a real drop.
A task_type whose final metrics A and B scored with different scorers (eval.scorers), or a
general_drop measured on different general sets (eval.general.source), is not comparable: the
table says so (n/c and a note naming both), and no regression is flagged on it (val loss, which
no scorer touches, still is). A run that does not say (one written before either existed) is
taken as comparable.
Exit status 1 when anything regressed, so CI can gate on it; 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sweep_sft.errors import UserInputError
from sweep_sft.metrics import EXACT_MATCH, GENERAL_DROP, SAMPLE_MATCH, VAL_LOSS, pass_at, pass_ks
from sweep_sft.names import GENERAL_SOURCE_FIELD, GENERAL_SOURCE_PARAM, METRICS_FILE, SCORER_TAG, SCORERS_FIELD
from sweep_sft.tracking.client import find_run

EM, LOSS = f"{EXACT_MATCH}/", f"{VAL_LOSS}/"


@dataclass
class Row:
    """One task_type of A and B: val loss, exact match, pass@k, and what regressed."""

    task: str
    loss_a: float
    loss_b: float
    em_a: float
    em_b: float
    regressed: list[str]
    # pass@k of A and B (nan when either run lacks it), and the verdict on an exact-match drop.
    pass_a: float = math.nan
    pass_b: float = math.nan
    notes: list[str] = field(default_factory=list)
    # False when A and B scored this task_type with different scorers: its exact match is not compared.
    comparable: bool = True


@dataclass
class Tolerances:
    """How far B may fall behind A before a drop counts as a regression."""

    em: float = 0.05
    loss: float = 0.05
    general: float = 0.02


@dataclass
class Side:
    """One run as compared: its final metrics and what they were measured with, each task_type's
    scorer and the general probe's set (absent or None: unknown, a run written before they were
    recorded)."""

    metrics: dict[str, float]
    scorers: dict[str, str] = field(default_factory=dict)
    general_source: str | None = None


@dataclass
class Comparison:
    """Per-task_type rows, the general-ability verdict, and the k of pass@k both runs report;
    what A and B measured differently (task_type -> note, and the general probe's note)."""

    rows: list[Row]
    general: str | None
    k: int | None
    incomparable: dict[str, str] = field(default_factory=dict)
    general_note: str | None = None

    @property
    def regressions(self) -> list[str]:
        """The task_types that regressed, and general ability when it did."""
        return [r.task for r in self.rows if r.regressed] + (["general ability"] if self.general else [])


def load_side(ref: str, tracking_uri: str | None = None) -> Side:
    """A trial's final metrics and what measured them: a folder with metrics.json, an
    evaluation.json, or an MLflow run id (its scorer tags and general.source param)."""
    path = Path(ref)
    if path.is_dir() or path.suffix == ".json":
        file = path / METRICS_FILE if path.is_dir() else path
        if not file.exists():
            raise UserInputError(f"{file}: no metrics.json (expected a trial's output folder or an MLflow run id)")
        try:
            record = json.loads(file.read_text())
            metrics = dict(record["metrics"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserInputError(f"{file}: not a metrics file with a 'metrics' mapping ({exc})") from exc
        scorers, source = record.get(SCORERS_FIELD), record.get(GENERAL_SOURCE_FIELD)
        # Anything else than what a trial writes there is taken as not said.
        scorers = {str(t): str(s) for t, s in scorers.items()} if isinstance(scorers, dict) else {}
        return Side(metrics, scorers, source if isinstance(source, str) else None)
    run = find_run(ref, tracking_uri, "a trial folder")[1]
    prefix = f"{SCORER_TAG}."
    scorers = {key[len(prefix) :]: value for key, value in run.data.tags.items() if key.startswith(prefix)}
    return Side(dict(run.data.metrics), scorers, run.data.params.get(GENERAL_SOURCE_PARAM))


def load_metrics(ref: str, tracking_uri: str | None = None) -> dict[str, float]:
    """The final metrics of a trial: a folder with metrics.json, or an MLflow run id."""
    return load_side(ref, tracking_uri).metrics


def differences(a: Side, b: Side) -> tuple[dict[str, str], str | None]:
    """What A and B measured differently, where both say: task_type -> a note naming both
    scorers, and a note naming both general sets (None when the same or unknown)."""
    tasks = {
        task: f"not comparable: scorer {a.scorers[task]} (A) vs {b.scorers[task]} (B)"
        for task in sorted(a.scorers.keys() & b.scorers.keys())
        if a.scorers[task] != b.scorers[task]
    }
    ga, gb = a.general_source, b.general_source
    general = f"not comparable: general probe {ga} (A) vs {gb} (B)" if ga and gb and ga != gb else None
    return tasks, general


def common_k(a: dict[str, float], b: dict[str, float]) -> int | None:
    """The largest k both runs report pass@k for."""
    return max(pass_ks(a) & pass_ks(b), default=None)


def compare(
    a: dict[str, float],
    b: dict[str, float],
    em_tolerance: float,
    loss_tolerance: float,
    incomparable: dict[str, str] | None = None,
) -> list[Row]:
    """One row per task_type either run reports, with what regressed in B against A; a task_type
    in `incomparable` (its note) gets no exact-match verdict, its val loss still is compared."""
    incomparable = incomparable or {}
    tasks = sorted({k[len(p) :] for m in (a, b) for k in m for p in (EM, LOSS) if k.startswith(p)})
    k = common_k(a, b)
    rows = []
    for task in tasks:
        loss_a, loss_b, em_a, em_b = (m.get(f"{p}{task}", math.nan) for p in (LOSS, EM) for m in (a, b))
        pass_a, pass_b = (m.get(f"{pass_at(k)}/{task}", math.nan) for m in (a, b))
        row = Row(task, loss_a, loss_b, em_a, em_b, [], pass_a, pass_b, comparable=task not in incomparable)
        if not row.comparable:
            row.notes.append(incomparable[task])
        elif row.em_a - row.em_b > em_tolerance:
            text, real = drop_verdict(task, a, b, k, row.em_a - row.em_b, em_tolerance)
            (row.regressed if real else row.notes).append(text)
        if row.loss_b - row.loss_a > loss_tolerance * abs(row.loss_a):
            row.regressed.append(f"val loss +{(row.loss_b - row.loss_a) / abs(row.loss_a):.0%}")
        rows.append(row)
    return rows


def drop_verdict(
    task: str, a: dict[str, float], b: dict[str, float], k: int | None, drop: float, tolerance: float
) -> tuple[str, bool]:
    """An exact-match drop, told apart with the sampled metrics: a fluctuation (not a regression)
    when pass@k and the share of right samples both held, so the right answer is as likely as
    before and greedy decoding flipped between near-ties; a real drop when either fell. pass@k
    alone saturates (near 1 for any answer the model still gives sometimes); the sample share
    does not. Without pass@k in both runs, every drop counts."""
    text = f"exact match -{drop:.2f}"
    keys = {f"pass@{k}": f"{pass_at(k)}/{task}", "sample match": f"{SAMPLE_MATCH}/{task}"}
    measured = {name: (a[key], b[key]) for name, key in keys.items() if key in a and key in b}
    if k is None or f"pass@{k}" not in measured:
        return text, True
    moves = ", ".join(f"{name} {va:.2f}->{vb:.2f}" for name, (va, vb) in measured.items())
    if any(va - vb > tolerance for va, vb in measured.values()):
        return f"{text}, {moves}: real drop", True
    return f"{text} but {moves} held: fluctuation", False


def compare_runs(a: Side, b: Side, tolerances: Tolerances) -> Comparison:
    """B against A, per task_type and in general ability, where both measured alike."""
    tasks, general_note = differences(a, b)
    rows = compare(a.metrics, b.metrics, tolerances.em, tolerances.loss, tasks)
    general = None if general_note else general_regression(a.metrics, b.metrics, tolerances.general)
    return Comparison(rows, general, common_k(a.metrics, b.metrics), tasks, general_note)


def _num(x: float, width: int, fmt: str) -> str:
    """`x` right-aligned in `width` with `fmt` (".3f", "+.2f"); a metric a run lacks shows as -."""
    sign, rest = ("+", fmt[1:]) if fmt.startswith("+") else ("", fmt)
    return f"{'-':>{width}}" if math.isnan(x) else f"{x:>{sign}{width}{rest}}"


def general_regression(a: dict[str, float], b: dict[str, float], tolerance: float) -> str | None:
    """Forgetting: B's general-ability drop (against the base model) beyond A's by more than `tolerance`."""
    rise = b.get(GENERAL_DROP, math.nan) - a.get(GENERAL_DROP, math.nan)
    return f"general_drop +{rise:.3f}" if rise > tolerance else None


def table(comparison: Comparison, side_a: Side, side_b: Side, names: tuple[str, str]) -> str:
    """The comparison as the terminal table `python -m sweep_sft.compare` prints."""
    k, a, b = comparison.k, side_a.metrics, side_b.metrics
    pass_head = f"{f'pass@{k} A':>10}{'B':>6}" if k else ""
    head = (
        f"{'task_type':<26}{'val loss A':>11}{'B':>8}{'delta':>8}{'exact A':>9}{'B':>6}{'delta':>7}{pass_head}"
        "  regression"
    )
    lines = [f"A = {names[0]}", f"B = {names[1]}", "", head]
    for r in comparison.rows:
        passes = f"{_num(r.pass_a, 10, '.2f')}{_num(r.pass_b, 6, '.2f')}" if k else ""
        em_delta = _num(r.em_b - r.em_a, 7, "+.2f") if r.comparable else f"{NOT_COMPARABLE:>7}"
        lines.append(
            f"{r.task:<26}{_num(r.loss_a, 11, '.3f')}{_num(r.loss_b, 8, '.3f')}{_num(r.loss_b - r.loss_a, 8, '+.3f')}"
            f"{_num(r.em_a, 9, '.2f')}{_num(r.em_b, 6, '.2f')}{em_delta}{passes}"
            f"  {'; '.join(r.regressed + r.notes) or '-'}"
        )
    for key in (VAL_LOSS, EXACT_MATCH, GENERAL_DROP):
        if key in a or key in b:
            va, vb = a.get(key, math.nan), b.get(key, math.nan)
            flag, delta = _summary_flag(comparison, key), _num(vb - va, 8, "+.3f")
            if flag.startswith("not comparable"):
                delta = f"{NOT_COMPARABLE:>8}"
            values = f"{_num(va, 11, '.3f')}{_num(vb, 8, '.3f')}{delta}"
            lines.append(f"{key:<26}{values}{'':>{22 + len(pass_head)}}  {flag}")
    lines.append("")
    regressed = comparison.regressions
    lines.append(f"regressions: {', '.join(regressed)}" if regressed else "no regression beyond the tolerances")
    unlike = list(comparison.incomparable) + (["general ability"] if comparison.general_note else [])
    if unlike:
        lines.append(f"not compared (A and B measured them differently, {NOT_COMPARABLE} above): {', '.join(unlike)}")
    return "\n".join(lines)


NOT_COMPARABLE = "n/c"  # the delta of a metric A and B measured differently


def _summary_flag(comparison: Comparison, key: str) -> str:
    """The last column of an overall line: general_drop's verdict or note; the overall exact
    match, a mean over task_types, is not comparable when any task_type's scorer differs."""
    if key == GENERAL_DROP:
        return comparison.general_note or comparison.general or "-"
    if key == EXACT_MATCH and comparison.incomparable:
        return f"not comparable: the scorers of {len(comparison.incomparable)} task_type(s) differ"
    return "-"


def main(argv: list[str] | None = None) -> int:
    """`python -m sweep_sft.compare A B`: the table; exit 1 on a regression, 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m sweep_sft.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="trial output folder or MLflow run id (A)")
    parser.add_argument("candidate", help="trial output folder or MLflow run id (B)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store holding run ids (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument("--em-tolerance", type=float, default=Tolerances.em, help="exact-match drop still accepted")
    parser.add_argument(
        "--loss-tolerance", type=float, default=Tolerances.loss, help="relative val-loss rise still accepted"
    )
    parser.add_argument(
        "--general-tolerance", type=float, default=Tolerances.general, help="general_drop rise still accepted"
    )
    args = parser.parse_args(argv)
    try:
        a = load_side(args.baseline, args.tracking_uri)
        b = load_side(args.candidate, args.tracking_uri)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    comparison = compare_runs(a, b, Tolerances(args.em_tolerance, args.loss_tolerance, args.general_tolerance))
    if not comparison.rows:
        print(
            "error: neither run reports per-task_type metrics (val/loss/<task>, task/exact_match/<task>)",
            file=sys.stderr,
        )
        return 2
    print(table(comparison, a, b, (args.baseline, args.candidate)))
    return 1 if comparison.regressions else 0


if __name__ == "__main__":
    sys.exit(main())
