"""Optuna pieces shared by the Optuna sweeper (the controller) and the trials (which report
their evaluations to the study, so a pruner can stop them while they train).

Trials run in other processes, possibly on other machines: the study's storage is the
channel between them. The pruner is stored on the study (a user attribute), so a trial
rebuilds the very pruner the sweeper was configured with.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sweep_sft.errors import ConfigError

PRUNER_ATTR = "sweep_sft.pruner"


class TrialPruned(Exception):
    """Raised inside a trial when the study's pruner stops it."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"pruned at step {step} ({value:.4g})")
        self.step, self.value = step, value


def open_storage(url: str):
    """A journal file (Optuna's choice for many processes on a shared file system) for a path
    ending in .journal, else a database URL (sqlite:///..., postgresql://...)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.endswith(".journal") and "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    return optuna.storages.RDBStorage(url)


def build(kind: str, spec: dict[str, Any], **extra: Any):
    """A sampler or pruner from its config (`_target_` and arguments, nested for patient)."""
    from hydra.utils import instantiate

    try:
        return instantiate(spec, **extra)
    except Exception as exc:  # Hydra wraps the constructor's TypeError/ValueError
        cause = exc.__cause__ or exc
        raise ConfigError(f"hydra.sweeper.{kind} ({spec.get('_target_')}): {cause}") from exc


class Reporter:
    """A trial's side of pruning: report the metric at each evaluation, raise TrialPruned when
    the study's pruner says stop."""

    def __init__(self, storage: str, study_name: str, trial_number: int, metric: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = open_storage(storage)
        study_id = store.get_study_id_from_name(study_name)
        spec = store.get_study_user_attrs(study_id).get(PRUNER_ATTR, {"_target_": "optuna.pruners.NopPruner"})
        study = optuna.load_study(study_name=study_name, storage=store, pruner=build("pruner", spec))
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.metric = metric

    def report(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise TrialPruned(step, value)


def reporter(link) -> Reporter | None:
    """The Reporter for a trial's `study` config node, or None when it reports nowhere."""
    if link is None or link.metric is None:
        return None
    return Reporter(link.storage, link.study_name, link.trial_number, link.metric)
