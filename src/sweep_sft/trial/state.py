"""What one trial's phases share: its loaded data sources, the state the phases build up in order
(one object, handed from phase to phase), and the result a trial returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig

from sweep_sft.compare import Side
from sweep_sft.config.schema import Config
from sweep_sft.data.pipeline import PreparedData
from sweep_sft.data.records import Example, task_types
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.train.distributed import DistEnv


@dataclass
class TrialResult:
    """A finished (or pruned) trial: its objective and value, final metrics and series; what metrics.json holds."""

    objective: str
    value: float
    metrics: dict[str, float]
    output_dir: str
    run_id: str | None = None
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    # COMPLETE, or PRUNED when the study's pruner stopped it (at `steps`).
    state: str = "COMPLETE"
    steps: int = 0
    # Loss-curve findings (sweep_sft.diagnostics.findings.Finding as dicts) of a completed trial.
    diagnostics: list[dict] = field(default_factory=list)
    # What the final metrics were measured with (names.SCORERS_FIELD, names.GENERAL_SOURCE_FIELD):
    # each task_type's scorer, and the general probe's set (None: no probe), for comparisons.
    scorers: dict[str, str] = field(default_factory=dict)
    general_source: str | None = None


class Sources(NamedTuple):
    """A trial's examples as read from its data sources, before mixing and tokenising."""

    by_source: dict[str, list[Example]]  # training examples per source
    val: list[Example]  # the validation examples of all sources

    def task_types(self) -> list[str]:
        """Every task_type of the training and validation examples, sorted."""
        return sorted(
            {e.task_type for examples in self.by_source.values() for e in examples} | set(task_types(self.val))
        )


@dataclass
class TrialState:
    """One trial as its phases see it: what it was given, what the checks before the model loads
    found, then what each phase sets (model and data, the run and checkpoints, the base probe) and
    the series it logs."""

    cfg: DictConfig | Config  # as given: its resolved form is what the run records
    config: Config
    out: Path
    run_name: str | None
    parent_run_id: str | None
    preemption: Any  # a train.preemption.Preemption
    started: float  # time.perf_counter() at the start
    # Set by the checks before the model loads.
    checkpointable: bool = True
    resume_from: Path | None = None
    sources: Sources | None = None
    baseline: Side | None = None  # eval.baseline_run_id's metrics and what measured them
    dist_env: DistEnv | None = None
    # Set by the phases, in order.
    evaluator: Evaluator | None = None
    data: PreparedData | None = None
    resolved: dict[str, Any] | None = None  # the config as recorded (record.resolved)
    run: Any = None  # a tracking.runs.Run
    reopened: bool = False  # the interrupted attempt's run, its params and artifacts delivered
    study: Any = None  # the pruning study's reporter, on the rank that reports
    checkpoints: Any = None  # a train.checkpoint.Checkpoints when the trial is checkpointable
    base_probe: dict[str, float] | None = None
    series: dict[str, list[list[float]]] = field(default_factory=dict)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Metrics at `step` into the trial's series (metrics.json, checkpoints) and its run."""
        for key, value in metrics.items():
            self.series.setdefault(key, []).append([step, value])
        self.run.log_metrics(metrics, step)
