"""A finished (or interrupted) sweep as one typed model for the report: its trials with
overrides, swept values, state, objective, final metrics, series and diagnostics, read from
the sweep folder (here) or rebuilt from the MLflow parent run and its child runs (report/from_mlflow.py)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweep_sft.config.scorers import DEFAULT_SCORER
from sweep_sft.errors import UserInputError
from sweep_sft.metrics import EXACT_MATCH, TRAIN_LOSS, VAL_LOSS
from sweep_sft.names import (
    GENERATIONS_FILE,
    METRICS_FILE,
    MULTIRUN_FILE,
    OPTUNA_FILE,
    PARENT_FILE,
    SANDWICH_FILE,
    SUMMARY_FILE,
)
from sweep_sft.report.numbers import sig3

SWEEP_FILES = (PARENT_FILE, SUMMARY_FILE, OPTUNA_FILE, SANDWICH_FILE, MULTIRUN_FILE)
# Objectives a lower value of which is better, when no sweeper recorded a direction.
LOWER_IS_BETTER = ("loss", "drop", "perplexity", "error")
# Optuna's trial states in the report's words (the others keep their own).
OPTUNA_STATES = {"FAIL": "FAILED"}
# Metric families whose `<family>/<task_type>` keys name the sweep's task_types.
TASK_FAMILIES = (VAL_LOSS, TRAIN_LOSS, EXACT_MATCH)
# Generations the report shows per task_type of a trial.
GENERATIONS_SHOWN = 3
# The error of a job folder without metrics.json that no sweeper file explains (yet).
NO_RECORD = "no metrics.json in its job folder (the trial failed, or is still running)"


class ReportInputError(UserInputError):
    """The report's input is not a sweep folder or a sweep's parent run."""


@dataclass
class Trial:
    """One trial of a sweep as the report shows it."""

    number: int  # the job number (= the trial folder's name and the MLflow child run's prefix)
    overrides: list[str]  # the job's Hydra overrides
    params: dict[str, Any]  # the swept keys' values in this trial (numbers where they parse)
    state: str  # COMPLETE, PRUNED or FAILED
    value: float | None = None  # the objective (a pruned trial: the metric it was judged on)
    objective: str | None = None  # the metric `value` is
    metrics: dict[str, float] = field(default_factory=dict)  # final value of every metric
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # sweep_sft.diagnostics.findings.Finding as dicts
    error: str | None = None  # a failed trial's exception text
    steps: int | None = None  # optimizer steps the trial ran
    # The first few validation generations of each task_type (generations.jsonl records).
    generations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """`#3 lr=0.001` for legends and tables."""
        values = " ".join(f"{k.rsplit('.', 1)[-1]}={sig3(v)}" for k, v in self.params.items())
        return f"#{self.number} {values}".strip()


@dataclass
class Sweep:
    """A sweep as the report shows it: its trials, swept keys, objective and sweeper results."""

    source: str  # what the report was asked for: a folder or a run id
    sweep_dir: Path | None  # None when rebuilt from MLflow alone
    sweeper: str  # grid, optuna5, sandwich or the sweeper's class path
    swept: list[str]  # config keys the sweep varies
    trials: list[Trial]
    objective: str | None = None
    direction: str | None = None  # "minimize" / "maximize"
    direction_known: bool = False  # False: inferred from the objective's name
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    sandwich: dict[str, Any] | None = None  # sandwich_result.json
    optuna: dict[str, Any] | None = None  # optuna_result.json
    summary: dict[str, Any] | None = None  # sweep_summary.json

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def best(self) -> Trial | None:
        done = [
            t
            for t in self.trials
            if t.state == "COMPLETE" and is_finite_number(t.value) and t.objective == self.objective
        ]
        if not done or self.direction is None:
            return None
        pick = min if self.direction == "minimize" else max
        return pick(done, key=lambda t: t.value)


def is_finite_number(value: Any) -> bool:
    """Whether value is a real, finite number (not a bool, nan or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def task_types(sweep: Sweep, families: tuple[str, ...] = TASK_FAMILIES) -> list[str]:
    """The task_types named by a `<family>/<task_type>` metric (final or series) of any trial."""
    heads = tuple(f + "/" for f in families)
    keys = {k for t in sweep.trials for k in (*t.series, *t.metrics)}
    return sorted({k[len(h) :] for k in keys for h in heads if k.startswith(h) and len(k) > len(h)})


def sample_generations(text: str, per_task: int = GENERATIONS_SHOWN) -> list[dict[str, Any]]:
    """The first `per_task` validation records of each task_type in a generations.jsonl text
    (a line that is no JSON object, as in a file cut short, is skipped)."""
    shown: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("split", "validation") != "validation":
            continue
        task = str(record.get("task_type"))
        counts[task] = counts.get(task, 0) + 1
        if counts[task] <= per_task:
            shown.append(record)
    return shown


def scorers_of(trial: Trial) -> dict[str, str]:
    """Each task_type's scorer, as the trial's generations record it."""
    return {str(g.get("task_type")): str(g.get("scorer", DEFAULT_SCORER)) for g in trial.generations}


def parse_value(text: str) -> Any:
    """An override's value as a number where it is one (so it can be plotted), else the text."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if re.fullmatch(r"[+-]?\d+", text.strip()) else number


def split_override(override: str) -> tuple[str, str] | None:
    """(key, value) of a `key=value` override (+/~ prefixes dropped); None for a bare one."""
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    return key.lstrip("+~"), value


# -- from the sweep folder ------------------------------------------------------------------------


def is_sweep_dir(path: Path) -> bool:
    """Whether path looks like a sweep folder: a sweeper's file or trial job folders."""
    return path.is_dir() and (any((path / f).exists() for f in SWEEP_FILES) or bool(_job_dirs(path)))


def _job_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not valid JSON ({exc})") from exc


def load_sweep_dir(path: str | Path, source: str | None = None) -> Sweep:
    """Every trial of the sweep folder, merged with what the sweeper recorded of it."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: no such folder (expected a sweep folder, e.g. multirun/<date>/<time>)")
    if not is_sweep_dir(path):
        raise ReportInputError(
            f"{path} is not a sweep folder: it has none of {', '.join(SWEEP_FILES)} and no numbered job folders"
        )
    parent = _read_json(path / PARENT_FILE) or {}
    summary, optuna, sandwich = (_read_json(path / f) for f in (SUMMARY_FILE, OPTUNA_FILE, SANDWICH_FILE))
    trials = merge_sweeper_records({int(d.name): _trial_from_dir(d) for d in _job_dirs(path)}, summary, optuna)
    multirun = _multirun(path)
    sweep = Sweep(
        source=source or str(path),
        sweep_dir=path.resolve(),
        sweeper=sweeper_name(multirun, optuna, sandwich, summary),
        swept=[],
        trials=trials,
        parent_run_id=parent.get("run_id"),
        tracking_uri=parent.get("tracking_uri"),
        sandwich=sandwich,
        optuna=optuna,
        summary=summary,
    )
    declared = list(parent.get("swept") or []) + ([sandwich["param"]] if sandwich else [])
    finish(sweep, declared, optuna_direction(multirun, optuna))
    return sweep


def _trial_from_dir(job: Path) -> Trial:
    overrides = _overrides(job / ".hydra" / "overrides.yaml")
    record = _read_json(job / METRICS_FILE)
    if record is None:  # the trial died before writing its record (a sweeper's file may say why)
        return Trial(int(job.name), overrides, {}, "FAILED", error=NO_RECORD)
    return Trial(
        number=int(job.name),
        overrides=overrides,
        params={},
        state=record.get("state", "COMPLETE"),
        value=record.get("value"),
        objective=record.get("objective"),
        metrics=record.get("metrics") or {},
        series={k: [(float(s), float(v)) for s, v in pts] for k, pts in (record.get("series") or {}).items()},
        diagnostics=list(record.get("diagnostics") or []),
        steps=record.get("steps"),
        generations=_generations(job / GENERATIONS_FILE),
    )


def _generations(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return sample_generations(path.read_text(encoding="utf-8", errors="replace"))


def _overrides(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def merge_sweeper_records(trials: dict[int, Trial], summary: dict | None, optuna: dict | None) -> list[Trial]:
    """The trials (by job number) with what the sweeper recorded of every job (sweep_summary.json,
    optuna_result.json): the errors of failed ones, and the jobs that left no trial record at
    all (a config error, a job killed before the trial started), in job order."""
    for entry in (summary or {}).get("jobs", []):
        _merge_entry(trials, entry["number"], entry.get("overrides") or [], entry.get("state"), entry.get("error"))
    for t in (optuna or {}).get("trials", []):
        state = OPTUNA_STATES.get(t.get("state"), t.get("state"))
        overrides = [f"{k}={v}" for k, v in (t.get("params") or {}).items()]
        _merge_entry(trials, t["number"], overrides, state, t.get("error"))
    return [trials[n] for n in sorted(trials)]


def _merge_entry(trials: dict[int, Trial], number: int, overrides: list[str], state: str | None, error: str | None):
    """What a sweeper recorded of a job: the error of a failed one, or a job without a folder."""
    trial = trials.get(number)
    if trial is None:
        trials[number] = Trial(number, list(overrides), {}, state or "FAILED", error=error)
        return
    if not trial.overrides:
        trial.overrides = list(overrides)
    if error and trial.error in (None, NO_RECORD):
        trial.error = error
    if state == "FAILED" and trial.state != "FAILED":  # e.g. a non-finite objective
        trial.state = "FAILED"


def _multirun(path: Path) -> dict[str, Any]:
    file = path / MULTIRUN_FILE
    if not file.exists():
        return {}
    try:
        return yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError:
        return {}


def sweeper_name(multirun: dict, optuna, sandwich, summary) -> str:
    """The sweeper's short name, from multirun.yaml or else from which result file it left."""
    target = ((multirun.get("hydra") or {}).get("sweeper") or {}).get("_target_", "")
    for name, hint in (("optuna5", "optuna"), ("sandwich", "sandwich"), ("grid", "grid"), ("basic", "BasicSweeper")):
        if hint in target:
            return name
    if optuna:
        return "optuna5"
    if sandwich:
        return "sandwich"
    if summary:
        return "grid"
    return target or "unknown"


def optuna_direction(multirun: dict, optuna) -> str | None:
    """The Optuna study's direction (from its result file or multirun.yaml); None for other sweepers."""
    directions = (optuna or {}).get("directions")
    if directions:
        return directions[0]
    direction = ((multirun.get("hydra") or {}).get("sweeper") or {}).get("direction")
    if isinstance(direction, list):
        direction = direction[0] if direction else None
    return direction if "optuna" in str((multirun.get("hydra") or {}).get("sweeper") or {}) else None


def finish(sweep: Sweep, declared: list[str], direction: str | None) -> None:
    """Swept keys (declared, or varying across trials), each trial's values of them, objective
    and direction."""
    keyed = [dict(filter(None, map(split_override, t.overrides))) for t in sweep.trials]
    varying = {k for k in set().union(*keyed) if len({d.get(k) for d in keyed}) > 1} if keyed else set()
    sweep.swept = sorted(set(declared) | varying)
    for trial, overrides in zip(sweep.trials, keyed, strict=True):
        trial.params = {k: parse_value(overrides[k]) for k in sweep.swept if k in overrides}
    objectives = [t.objective for t in sweep.trials if t.state == "COMPLETE" and t.objective]
    sweep.objective = max(set(objectives), key=objectives.count) if objectives else None
    sweep.direction, sweep.direction_known = direction, direction is not None
    if direction is None and sweep.objective:
        lower = any(word in sweep.objective for word in LOWER_IS_BETTER)
        sweep.direction = "minimize" if lower else "maximize"
