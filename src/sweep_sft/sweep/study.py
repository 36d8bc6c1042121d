"""Optuna pieces shared by the Optuna sweeper (the controller) and the trials (which report
their evaluations to the study, so a pruner can stop them while they train).

Trials run in other processes, possibly on other machines: the study's storage is the
channel between them. The pruner is stored on the study (a user attribute), so a trial
rebuilds the very pruner the sweeper was configured with. What is stored is data, not code:
an Optuna pruner's class name and its plain arguments, and a trial builds only the pruners of
PRUNERS from it, so whoever can write the storage can change how trials are pruned but cannot
make them run anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from sweep_sft.errors import ConfigError
from sweep_sft.redact import redact
from sweep_sft.train.distributed import DistEnv

log = logging.getLogger(__name__)
PRUNER_ATTR = "sweep_sft.pruner"
# The only classes a pruner record may name (optuna.pruners.<name>).
PRUNERS = (
    "NopPruner",
    "MedianPruner",
    "PercentilePruner",
    "SuccessiveHalvingPruner",
    "HyperbandPruner",
    "ThresholdPruner",
    "PatientPruner",
    "WilcoxonPruner",
)
NESTED = "wrapped_pruner"  # PatientPruner's argument that is itself a pruner
NOP = {"name": "NopPruner", "kwargs": {}}


class TrialPruned(Exception):
    """Raised inside a trial when the study's pruner stops it."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"pruned at step {step} ({value:.4g})")
        self.step, self.value = step, value


def open_storage(url: str, key: str = "hydra.sweeper.storage", heartbeat: Heartbeat | None = None):
    """A journal file (Optuna's choice for many processes on a shared file system) for a path
    ending in .journal, else a database URL (sqlite:///..., postgresql://...), with Optuna's
    heartbeat and retry callback when `heartbeat` is given (databases only). A database that
    cannot be reached or refuses the login is a ConfigError naming `key`, the password masked."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.endswith(".journal") and "://" not in url:
        if heartbeat is not None:
            raise ConfigError(
                f"hydra.sweeper.heartbeat_s: Optuna's heartbeat needs a database storage, not the journal {url}; "
                f"set {key}=postgresql://... (or sqlite:///... on one machine)"
            )
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        kwargs = {"heartbeat_interval": heartbeat.interval_s, "grace_period": heartbeat.grace_s}
        if heartbeat.retries:
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=heartbeat.retries)
    try:
        return optuna.storages.RDBStorage(with_driver(url), **kwargs)
    except Exception as exc:  # SQLAlchemy's OperationalError and the like: unreachable, wrong password
        cause = redact(str(getattr(exc, "orig", None) or exc)).strip().splitlines()
        raise ConfigError(
            f"{key}={redact(url)}: cannot open the study storage: {type(exc).__name__}: {' '.join(cause)[:500]}"
        ) from None


def with_driver(url: str) -> str:
    """A bare postgresql:// URL with the driver that is installed: SQLAlchemy 2.1 reads it as
    psycopg 3, while our postgres extra installs psycopg2 (libpq)."""
    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


class Heartbeat:
    """Optuna's heartbeat settings of a study: a trial's process records one every `interval_s`;
    a RUNNING trial without one for `grace_s` is failed by whichever controller looks next and, up
    to `retries` times, run again with the same parameters (RetryFailedTrialCallback)."""

    def __init__(self, interval_s: int, grace_s: int | None = None, retries: int = 0) -> None:
        if interval_s < 1 or (grace_s is not None and grace_s <= interval_s) or retries < 0:
            raise ConfigError(
                "hydra.sweeper.heartbeat_s / grace_s / retries: expected heartbeat_s >= 1, grace_s > heartbeat_s "
                f"(or null: 2 x heartbeat_s), retries >= 0; got {interval_s}, {grace_s}, {retries}"
            )
        self.interval_s, self.grace_s, self.retries = int(interval_s), grace_s, int(retries)


def start_heartbeat(link) -> threading.Thread | None:
    """In a trial's process: record the study's heartbeat for its trial every study.heartbeat_s
    seconds, from a daemon thread, so the trial reads as alive exactly while its process lives
    (a killed process stops beating; a controller then fails the trial and retries it)."""
    if link is None or not getattr(link, "heartbeat_s", None):
        return None
    store = open_storage(link.storage, "study.storage")
    study_id = store.get_study_id_from_name(link.study_name)
    trial_id = store.get_trial_id_from_study_id_trial_number(study_id, link.trial_number)

    def beat() -> None:
        while True:
            try:
                store.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - an outage costs a beat, not the trial
                log.warning(f"study heartbeat of trial {link.trial_number}: {type(exc).__name__}: {redact(str(exc))}")
            time.sleep(link.heartbeat_s)

    store.record_heartbeat(trial_id)  # beating before training starts, or failing here
    thread = threading.Thread(target=beat, name="study-heartbeat", daemon=True)
    thread.start()
    return thread


def build(kind: str, spec: dict[str, Any], **extra: Any):
    """A sampler from the sweeper's own config (`_target_` and arguments): config, never storage."""
    try:
        return instantiate(spec, **extra)
    except Exception as exc:  # Hydra wraps the constructor's TypeError/ValueError
        cause = exc.__cause__ or exc
        raise ConfigError(f"hydra.sweeper.{kind} ({spec.get('_target_')}): {cause}") from exc


def resumed_sampler(spec: dict[str, Any], n_held: int) -> dict[str, Any]:
    """The sampler config for a study that already holds `n_held` trials: its seed derived from
    the configured one and `n_held`. A seeded sampler rebuilt in a new process starts its random
    stream over, so a resumed or extended study would propose its first trials' points again;
    a fresh study (n_held 0), an unseeded sampler and QMC (its points are indexed by the study's
    trials, and its seed is its scrambling) keep their config as is."""
    seed = spec.get("seed")
    if n_held == 0 or seed is None or str(spec.get("_target_", "")).endswith("QMCSampler"):
        return spec
    digest = hashlib.sha256(f"sweep_sft.sampler:{seed}:{n_held}".encode()).digest()
    return {**spec, "seed": int.from_bytes(digest[:4], "big")}


def pruner_record(spec: dict[str, Any], key: str = "hydra.sweeper.pruner") -> dict[str, Any]:
    """The sweeper's pruner config (`_target_` and arguments) as the record stored on the study:
    {"name": <one of PRUNERS>, "kwargs": {...}}, PatientPruner's wrapped pruner a record too."""
    target = str(spec.get("_target_", ""))
    module, _, name = target.rpartition(".")
    if module != "optuna.pruners" or name not in PRUNERS:
        raise ConfigError(
            f"{key}._target_={target}: trials rebuild the pruner from the study storage, which holds only Optuna's "
            f"pruners: one of {', '.join('optuna.pruners.' + n for n in PRUNERS)}"
        )
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    if isinstance(kwargs.get(NESTED), dict):
        kwargs[NESTED] = pruner_record(kwargs[NESTED], f"{key}.{NESTED}")
    return {"name": name, "kwargs": kwargs}


def build_pruner(record: Any, where: str):
    """An Optuna pruner from a stored record; anything but one of PRUNERS with plain arguments
    is refused before a constructor is looked up, so a hostile storage runs nothing."""
    import optuna

    _check_record(record, where)
    kwargs = dict(record["kwargs"])
    if isinstance(kwargs.get(NESTED), dict):
        kwargs[NESTED] = build_pruner(kwargs[NESTED], f"{where}.{NESTED}")
    try:
        return getattr(optuna.pruners, record["name"])(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {record['name']}: {exc}") from exc


def _check_record(record: Any, where: str) -> None:
    if not (isinstance(record, dict) and set(record) == {"name", "kwargs"} and isinstance(record["kwargs"], dict)):
        raise ConfigError(
            f"{where}: expected a pruner record {{name, kwargs}}, got {str(record)[:200]}; refusing to build it "
            "(a sweep of an older sweep_sft stored a _target_: run the sweep again to store a record)"
        )
    if record["name"] not in PRUNERS:
        name = str(record["name"])[:100]
        raise ConfigError(f"{where}: {name!r} is not one of Optuna's pruners ({', '.join(PRUNERS)}); not built")
    for name, value in record["kwargs"].items():
        plain = value is None or isinstance(value, (bool, int, float, str))
        nested = name == NESTED and isinstance(value, dict)  # checked as a record when built
        if not isinstance(name, str) or name.startswith("_") or not (plain or nested):
            raise ConfigError(f"{where}: argument {str(name)[:100]!r}={str(value)[:100]} is not a plain value")


class Reporter:
    """A trial's side of pruning: report the metric at each evaluation, raise TrialPruned when
    the study's pruner says stop."""

    def __init__(self, storage: str, study_name: str, trial_number: int, metric: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = open_storage(storage, "study.storage")
        study_id = store.get_study_id_from_name(study_name)
        record = store.get_study_user_attrs(study_id).get(PRUNER_ATTR, NOP)
        pruner = build_pruner(record, f"study {study_name} in {storage}: {PRUNER_ATTR}")
        study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.metric = metric

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """The metric at `step` told to the study; TrialPruned if its pruner says stop."""
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


class RankZeroReporter:
    """The Optuna reporter on rank 0 only; its prune decision is broadcast so that every rank
    stops at the same step (a rank left training alone would wait forever in a collective)."""

    def __init__(self, inner, env: DistEnv) -> None:
        self.inner, self.env = inner, env

    def report(self, step: int, metrics: dict[str, float]) -> None:
        import torch.distributed as dist

        decision: list = [None]
        if self.inner is not None:
            try:
                self.inner.report(step, metrics)
            except TrialPruned as pruned:
                decision = [(pruned.step, pruned.value)]
        if self.env.distributed:
            dist.broadcast_object_list(decision, src=0)
        if decision[0] is not None:
            raise TrialPruned(*decision[0])


def trial_reporter(link, env: DistEnv) -> Reporter | RankZeroReporter | None:
    """The trial's study reporter (None when it reports nowhere), rank 0 reporting for all."""
    if link is None or link.metric is None:
        return None
    inner = reporter(link) if env.is_main else None
    return inner if not env.distributed else RankZeroReporter(inner, env)
