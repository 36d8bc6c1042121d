"""Config of our Optuna sweeper, registered as hydra/sweeper=optuna5, with its samplers
(hydra/sweeper/sampler=tpe|random|grid|cmaes|nsga2|gp|qmc) and pruners
(hydra/sweeper/pruner=none|median|percentile|successive_halving|hyperband|threshold|patient|wilcoxon)
as typed groups, so `hydra.sweeper.pruner.n_startup_trials=3` is checked like any key.

(No `from __future__ import annotations` here: Hydra's plugin scan builds these dataclasses
into configs and needs real types.)"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

S = "optuna.samplers."
P = "optuna.pruners."


@dataclass
class TPESamplerConf:
    _target_: str = S + "TPESampler"
    seed: int | None = 0
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    # Trials still running count as if they had the worst value seen: parallel trials are asked
    # away from the points already being tried.
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    _target_: str = S + "RandomSampler"
    seed: int | None = 0


@dataclass
class GridSamplerConf:
    # The grid is the search space itself (every parameter discrete); filled in by the sweeper.
    _target_: str = S + "GridSampler"
    seed: int | None = 0


@dataclass
class CmaEsSamplerConf:
    _target_: str = S + "CmaEsSampler"
    seed: int | None = 0
    sigma0: float | None = None
    n_startup_trials: int = 1
    popsize: int | None = None
    restart_strategy: str | None = None


@dataclass
class NSGAIISamplerConf:
    _target_: str = S + "NSGAIISampler"
    seed: int | None = 0
    population_size: int = 50
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GPSamplerConf:
    _target_: str = S + "GPSampler"
    seed: int | None = 0
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class QMCSamplerConf:
    _target_: str = S + "QMCSampler"
    seed: int | None = 0
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class NopPrunerConf:
    _target_: str = P + "NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = P + "MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = P + "PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = P + "SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = P + "HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConf:
    _target_: str = P + "ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class PatientPrunerConf:
    # Stops a trial after `patience` evaluations without improving by min_delta, or earlier
    # when the wrapped pruner (a median pruner by default) says so.
    _target_: str = P + "PatientPruner"
    wrapped_pruner: Any = field(default_factory=MedianPrunerConf)
    patience: int = 3
    min_delta: float = 0.0


@dataclass
class WilcoxonPrunerConf:
    _target_: str = P + "WilcoxonPruner"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.sweep_sft_optuna.optuna_sweeper.OptunaSweeper"
    # The sweeper builds sampler and pruner itself (the grid sampler needs the search space).
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    # Trials report `prune_metric` at each evaluation and stop when the pruner says so.
    pruner: Any = MISSING
    # minimize or maximize, or one per metric for a multi-objective study.
    direction: Any = "minimize"
    # Metrics (names in each trial's metrics.json) the study optimises; empty: the value the
    # job returns (a sweep_sft trial returns its `objective`).
    metrics: list[str] = field(default_factory=list)
    # Metric reported during training for pruning; null: the first of `metrics`, else the
    # trial's `objective`.
    prune_metric: str | None = None
    study_name: str = "sweep"
    # A journal file (*.journal) or a database URL; null: <sweep dir>/optuna.journal.
    # Running the same command with the same storage and study name resumes the study.
    storage: str | None = None
    # Trials the study should hold when done (complete, pruned and failed ones count; a trial
    # retried after its process died counts once).
    n_trials: int = 20
    # Optuna's heartbeat (database storages): each trial's process records one every heartbeat_s
    # seconds; a RUNNING trial silent for grace_s (null: 2 x heartbeat_s) is failed by whichever
    # controller of the study looks next. Set it to run several controllers on one study: they
    # then share the sweep folder too. grace_s must exceed the time a launcher takes to collect a
    # finished job (Slurm: sacct_interval_s + result_grace_s).
    heartbeat_s: int | None = None
    grace_s: int | None = None
    # A trial whose process died (its job's death, or its heartbeat stopped) is run again with
    # the same parameters up to this many times (Optuna's RetryFailedTrialCallback).
    retries: int = 0
    # Trials running at once (in parallel when the launcher can).
    n_jobs: int = 1
    # auto: through our launchers (local_jobs, the Slurm profiles) the next trial is asked the
    # moment one ends, so no slot waits for the slowest trial; through others, in batches of
    # n_jobs. async: the same, warning when the launcher can only do batches. batch: batches.
    dispatch: str = "auto"
    # Stop the sweep once more than this share of n_trials has failed.
    max_failure_rate: float = 0.25
    # The search space in Hydra's override grammar, e.g. lr: tag(log, interval(1e-5, 1e-2));
    # the command line adds to it and wins for the same key.
    params: dict[str, str] = field(default_factory=dict)


SAMPLERS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "grid": GridSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsga2": NSGAIISamplerConf,
    "gp": GPSamplerConf,
    "qmc": QMCSamplerConf,
}
PRUNERS = {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "threshold": ThresholdPrunerConf,
    "patient": PatientPrunerConf,
    "wilcoxon": WilcoxonPrunerConf,
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna5", node=OptunaSweeperConf, provider="sweep_sft")
for name, node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="sweep_sft")
for name, node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="sweep_sft")
