"""Our Optuna 5 sweeper: asks the study for trials, keeps n_jobs of them running (a new one asked
the moment one ends, through our launchers; in batches through other Hydra launchers), and
tells the study what each became (COMPLETE, PRUNED by the trial itself while it trained, or
FAIL). The study lives in a storage (a journal file in the sweep folder by default), so running
the same command again continues it: finished trials are kept, numbers and job folders go on,
and a trial cut off by a dead sweep is run again under a new number."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sweep_sft_optuna.search_space import Param, parse
from sweep_sft.config.compose import task_overrides
from sweep_sft.errors import ConfigError
from sweep_sft.names import INTERRUPTED_TAG, MULTIRUN_FILE, OPTUNA_FILE, OPTUNA_JOURNAL
from sweep_sft.redact import redact, split_password
from sweep_sft.sweep import shared_study
from sweep_sft.sweep.dispatch import Job, check_settings, dispatch, warn_unless_possible
from sweep_sft.sweep.jobs import job_died, job_error, job_record, log_to_parent
from sweep_sft.sweep.preflight import check_jobs
from sweep_sft.sweep.study import (
    PRUNER_ATTR,
    Heartbeat,
    build,
    build_pruner,
    open_storage,
    pruner_record,
    resumed_sampler,
)

log = logging.getLogger(__name__)


class SweepFailed(RuntimeError):
    """More of the study's trials failed than hydra.sweeper.max_failure_rate allows."""


class OptunaSweeper(Sweeper):
    """hydra/sweeper=optuna5: an Optuna study whose trials are the sweep's jobs, resumable from its storage."""

    def __init__(self, **conf: Any) -> None:
        self.conf = OmegaConf.create(conf)
        directions = conf["direction"]
        self.directions = [directions] if isinstance(directions, str) else list(directions)
        for d in self.directions:
            if d not in ("minimize", "maximize"):
                raise ConfigError(f"hydra.sweeper.direction: expected minimize or maximize, got {d!r}")
        self.metrics = list(conf["metrics"])
        if len(self.directions) > 1 and len(self.metrics) != len(self.directions):
            raise ConfigError(
                f"hydra.sweeper.metrics: a study with {len(self.directions)} directions needs as many metrics; "
                f"got {self.metrics}"
            )
        self.pruning = not str(self.conf.pruner._target_).endswith("NopPruner")
        if len(self.directions) > 1 and self.pruning:
            raise ConfigError("hydra.sweeper.pruner: Optuna prunes single-objective studies only; use pruner=none")
        check_settings(str(self.conf.dispatch), conf["n_jobs"], "hydra.sweeper.n_jobs")
        beat = conf.get("heartbeat_s")
        self.heartbeat = Heartbeat(beat, conf.get("grace_s"), conf.get("retries", 0)) if beat else None
        self.retries = int(conf.get("retries", 0))
        if self.retries < 0:
            raise ConfigError(f"hydra.sweeper.retries: expected an integer >= 0, got {self.retries}")
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the sweep's config and build its launcher (as Hydra's sweepers do)."""
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def preflight(self, config: DictConfig, config_loader) -> None:
        """Before the study opens (sweep_sft.sweep.preflight): the fixed overrides, and each searched
        parameter at both ends of its range (or at each of its values), composed and validated."""
        warn_unless_possible(config, str(self.conf.dispatch))
        space, fixed = parse(task_overrides(config.hydra), dict(self.conf.params or {}))
        jobs, names = [fixed], ["the fixed overrides"]
        for p in space:
            values = getattr(p.distribution, "choices", None) or (p.distribution.low, p.distribution.high)
            jobs += [[*fixed, p.override(v)] for v in values]
            names += [f"the search space of {p.key}"] * len(values)
        check_jobs(config_loader, config, jobs, names)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Ask the study for trials, keep n_jobs of them in flight (the next asked the moment one
        ends, or in batches with other launchers) and tell the study each outcome."""
        import optuna

        assert self.config is not None and self.launcher is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        c = self.conf
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / MULTIRUN_FILE).write_text(redact(OmegaConf.to_yaml(self.config)))
        space, fixed = parse(arguments, dict(c.params))
        storage_url = c.storage or str((sweep_dir / OPTUNA_JOURNAL).resolve())
        study, n_trials = self._open_study(space, storage_url)
        prune_metric = self._prune_metric()
        link_url = _link_storage(storage_url)
        distributions = {p.key: p.distribution for p in space}
        flying: dict[int, Any] = {}

        def next_job() -> Job | None:
            if self.heartbeat is not None:  # trials of dead processes (any controller's) failed and retried
                shared_study.fail_stale(study)
            with shared_study.asking(study):
                if not shared_study.more_to_ask(study, n_trials):
                    return None
                trial = study.ask(distributions)
            overrides = self._overrides(trial, space, fixed, link_url, prune_metric)
            self.validate_batch_is_legal([overrides])
            flying[trial.number] = trial
            return Job(overrides, trial.number, trial)

        def on_done(job: Job, result: JobReturn) -> bool:
            self._tell_job(study, flying.pop(job.num), result)
            return not self._too_many_failed(self._write_result(study, sweep_dir, storage_url, n_trials), space)

        returns = dispatch(self.launcher, c.dispatch, c.n_jobs, next_job, on_done)
        result = self._write_result(study, sweep_dir, storage_url, n_trials)
        if self._too_many_failed(result, space):
            raise SweepFailed(
                f"{result['states']['FAIL']} of {len(shared_study.counted(study.get_trials(deepcopy=False)))} "
                "trials failed, more than "
                f"hydra.sweeper.max_failure_rate={c.max_failure_rate} of {n_trials}; finished trials are kept in "
                f"{redact(storage_url)} and {sweep_dir / OPTUNA_FILE}. Errors: "
                + "; ".join(
                    t.user_attrs.get("error", "?")
                    for t in shared_study.counted(study.get_trials(deepcopy=False))
                    if _failed(t)
                )[:2000]
            )
        self._log_parent(sweep_dir, result)
        return returns

    def _too_many_failed(self, result: dict[str, Any], space: list[Param]) -> bool:
        # With nothing to search the sweep is one plain run: its job's outcome is recorded, as
        # Hydra's basic sweeper would run it, without a failure-rate verdict.
        return bool(space) and result["states"].get("FAIL", 0) > self.conf.max_failure_rate * result["n_trials"]

    def _open_study(self, space: list[Param], storage_url: str):
        """The study (created, or continued from its storage) and how many trials it is to finish."""
        import optuna

        c = self.conf
        grid = {p.key: p.grid for p in space} if all(p.grid is not None for p in space) else None
        n_trials = c.n_trials
        if not space:
            log.warning("nothing to search (no sweep in the overrides or hydra.sweeper.params): one trial")
            n_trials = 1
        sampler_spec = OmegaConf.to_container(c.sampler, resolve=True)
        # Stored on the study as a name and plain arguments: trials rebuild it from data, not code.
        pruner = pruner_record(OmegaConf.to_container(c.pruner, resolve=True))
        extra = {}
        if sampler_spec["_target_"].endswith("GridSampler"):
            if grid is None:
                raise ConfigError(
                    "hydra/sweeper/sampler=grid needs every searched parameter discrete (a list, choice or range); "
                    f"continuous: {', '.join(p.key for p in space if p.grid is None)}"
                )
            extra = {"search_space": grid}
            n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
        study = optuna.create_study(
            study_name=c.study_name,
            storage=open_storage(storage_url, heartbeat=self.heartbeat),
            sampler=build("sampler", sampler_spec, **extra),
            pruner=build_pruner(pruner, "hydra.sweeper.pruner"),
            directions=self.directions,
            load_if_exists=True,
        )
        held = len(study.get_trials(deepcopy=False))
        if held:  # continued: a sampler seeded as in the first process would propose its points again
            study.sampler = build("sampler", resumed_sampler(sampler_spec, held), **extra)
        stored = [d.name.lower() for d in study.directions]
        if stored != self.directions:
            raise ConfigError(
                f"hydra.sweeper.direction={self.directions}: study {c.study_name!r} in {redact(storage_url)} "
                f"exists with direction(s) {stored}; use those, or another hydra.sweeper.study_name"
            )
        # Trials rebuild this pruner from the study: one source of truth across processes.
        study.set_user_attr(PRUNER_ATTR, pruner)
        if self.heartbeat is None:  # with a heartbeat, only trials whose beat stopped are failed (fail_stale)
            _requeue_interrupted(study)
        return study, n_trials

    def _prune_metric(self) -> str | None:
        if not self.pruning:
            return None
        metric = self.conf.prune_metric or (
            self.metrics[0] if self.metrics else OmegaConf.select(self.config, "objective")
        )
        if not metric:
            raise ConfigError(
                "hydra.sweeper.prune_metric: name the metric trials report while training (e.g. val/loss)"
            )
        return metric

    def _overrides(self, trial, space: list[Param], fixed: list[str], storage: str, metric: str | None) -> list[str]:
        chosen = [p.override(trial.params[p.key]) for p in space]
        link = []
        if metric is not None or self.heartbeat is not None:  # the trial reports or beats to the study
            link = [
                f"study.storage='{storage}'",
                f"study.study_name='{self.conf.study_name}'",
                f"study.trial_number={trial.number}",
            ]
        if metric is not None:  # so the pruner can stop it
            link.append(f"study.metric='{metric}'")
        if self.heartbeat is not None:  # so a controller sees when its process dies
            link.append(f"study.heartbeat_s={self.heartbeat.interval_s}")
        return [*fixed, *chosen, *link]

    def _tell_job(self, study, trial, job: JobReturn) -> None:
        from optuna.trial import TrialState

        if shared_study.finished_elsewhere(study, trial):
            log.warning(
                f"trial {trial.number} was failed by another controller (its heartbeat stopped for longer than "
                "hydra.sweeper.grace_s) and retried; its job's outcome stays in its folder"
            )
            return
        record = job_record(job)
        if record is None and job_error(job) is None and not self.metrics:
            record = {"metrics": {}}  # a plain Hydra app: its return value is the objective
        if record is None:
            frozen = study._storage.get_trial(trial._trial_id)  # before our error attr: the retry's copy
            error = job_error(job) or "the job produced no metrics.json"
            trial.set_user_attr("error", error)
            _tell(study, trial, state=TrialState.FAIL)
            log.warning(f"trial {trial.number} failed: {error}")
            if job_died(job):  # its process died: the same parameters again
                shared_study.retry_died(study, frozen, self.retries)
            return
        trial.set_user_attr("steps", record.get("steps"))
        trial.set_user_attr("output_dir", record.get("output_dir"))
        if record.get("state") == "PRUNED":
            _tell(study, trial, state=TrialState.PRUNED)
            return
        metrics = record["metrics"]
        try:
            values = [metrics[m] for m in self.metrics] if self.metrics else [job.return_value]
        except KeyError as exc:
            trial.set_user_attr("error", f"metric {exc} not in the trial's metrics.json")
            _tell(study, trial, state=TrialState.FAIL)
            return
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            trial.set_user_attr("error", f"non-finite objective {values}")
            _tell(study, trial, state=TrialState.FAIL)
            return
        _tell(study, trial, values if len(values) > 1 else values[0])

    def _write_result(self, study, sweep_dir: Path, storage: str, n_trials: int) -> dict[str, Any]:
        result = summarize(study, n_trials)
        result["storage"] = redact(storage)
        (sweep_dir / OPTUNA_FILE).write_text(json.dumps(result, indent=1, default=str))
        return result

    def _log_parent(self, sweep_dir: Path, result: dict[str, Any]) -> None:
        metrics = {f"optuna/{state.lower()}": n for state, n in result["states"].items()}
        metrics["optuna/trial_steps"] = result["trial_steps"]
        tags = {}
        if result.get("best"):
            metrics["optuna/best_value"] = result["best"]["value"]
            tags = {f"optuna.best.{k}": str(v) for k, v in result["best"]["params"].items()}
            tags["optuna.best.trial"] = str(result["best"]["number"])
        log_to_parent(sweep_dir, OPTUNA_FILE, result, metrics, tags)


def summarize(study, n_trials: int) -> dict[str, Any]:
    """The study as JSON: every trial, counts per state, trial-steps, the best or the Pareto front."""
    from optuna.trial import TrialState

    # read only: no copy of every trial at every trial's end (1,000-trial sweeps)
    held = study.get_trials(deepcopy=False)
    retried = shared_study.retried_numbers(held)
    trials = [t for t in held if not t.user_attrs.get(INTERRUPTED_TAG) and t.number not in retried]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    result: dict[str, Any] = {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "n_trials": n_trials,
        "states": states,
        "trial_steps": sum(t.user_attrs.get("steps") or 0 for t in trials),
        # failed because their process died, then run again with the same parameters: not counted
        "retried": sorted(retried),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "values": t.values,
                "steps": t.user_attrs.get("steps"),
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
            }
            for t in trials
        ],
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(study.directions) == 1:
        best = study.best_trial
        result["best"] = {"number": best.number, "params": best.params, "value": best.value}
    elif complete:
        result["pareto_front"] = [
            {"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials
        ]
    return result


def _tell(study, trial, *args, **kwargs) -> None:
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as exc:
        # The grid sampler calls study.stop() once the grid is done, which Optuna refuses
        # outside study.optimize(); the trial is stored by then, and our loop stops itself.
        if "Study.stop" not in str(exc):
            raise


def _failed(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL


def _requeue_interrupted(study) -> None:
    """Trials left RUNNING by a sweep that died: closed as FAIL (marked, not counted) and their
    parameters queued again, so they are redone rather than lost or double-counted."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if t.state == TrialState.WAITING:
            continue  # already queued: the next ask() takes it
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED_TAG, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params)
        log.info(f"trial {t.number} was cut off by the previous sweep; queued again")


def _link_storage(url: str) -> str:
    """The storage URL trials are given: a PostgreSQL password moves to $PGPASSWORD, which the
    jobs inherit (locally and through Slurm) and libpq reads, so no command line, trial config or
    MLflow param holds it."""
    bare, password = split_password(url)
    if password is not None:
        os.environ.setdefault("PGPASSWORD", password)
    return bare
