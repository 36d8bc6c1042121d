"""One Optuna study shared by its trials and by several controllers (Optuna's distributed pattern:
K `python -m sweep_sft -m hydra/sweeper=optuna5` processes on one database storage and study
name). What every controller must agree on lives in the study, never in one process's memory:
how many trials count towards n_trials, which failed trials were retried (and so do not count),
and whose turn it is to ask the next trial.

A trial failed because its process died (its job's death seen by its controller, or a stale
heartbeat seen by any controller) is retried with the same parameters by Optuna's
RetryFailedTrialCallback, which records the failed trial's number in the retry's
`retry_history`: a failed trial named there is history, not a trial of the study's count."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

from sweep_sft.names import INTERRUPTED_TAG

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def retried_numbers(trials: list) -> set[int]:
    """The numbers of failed trials that were run again (named in a retry's retry_history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def counted(trials: list) -> list:
    """The finished trials that count towards n_trials: each set of parameters once, a trial
    cut off by a dead sweep (requeued) or retried after its process died left out."""
    retried = retried_numbers(trials)
    return [
        t
        for t in trials
        if t.state.name in FINISHED and not t.user_attrs.get(INTERRUPTED_TAG) and t.number not in retried
    ]


def more_to_ask(study, n_trials: int) -> bool:
    """Whether a controller should ask the study for another trial: a queued one (a retry, a
    requeued trial) waits, or the counted and running trials of every controller are fewer
    than n_trials."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state.name == "WAITING" for t in trials):
        return True
    running = sum(t.state.name == "RUNNING" for t in trials)
    return len(counted(trials)) + running < n_trials


@contextlib.contextmanager
def asking(study) -> Iterator[None]:
    """Held while a controller counts the study's trials and asks the next, so that K controllers
    on one study never ask more than n_trials between them: on PostgreSQL a transaction-scoped
    advisory lock on the study (released at commit), on a SQLite file an flock beside it (its
    controllers share a machine). A journal is one controller's: unlocked."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in its cache
    engine = getattr(storage, "engine", None)
    dialect = engine.dialect.name if engine is not None else None
    if dialect == "postgresql":
        import sqlalchemy

        digest = hashlib.sha256(f"sweep_sft.ask:{study.study_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield
    elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        import fcntl

        with open(f"{engine.url.database}.sweep_sft-ask.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield


def fail_stale(study) -> None:
    """Optuna's fail_stale_trials: RUNNING trials whose heartbeat stopped for the grace period
    failed, and retried by the storage's RetryFailedTrialCallback (hydra.sweeper.retries)."""
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)


def retry_died(study, frozen: Any, retries: int) -> None:
    """A trial of ours whose process died (its job's death, seen by our launcher) run again with the
    same parameters, as the heartbeat path would: Optuna's RetryFailedTrialCallback, up to `retries`."""
    if retries <= 0:
        return
    from optuna.storages import RetryFailedTrialCallback

    RetryFailedTrialCallback(max_retry=retries)(study, frozen)


def finished_elsewhere(study, trial) -> bool:
    """Whether another controller already ended this trial (failed it as stale)."""
    return study._storage.get_trial(trial._trial_id).state.is_finished()
