"""What K controllers of one study agree on, read from the study: which trials count."""

from __future__ import annotations

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from sweep_sft.names import INTERRUPTED_TAG
from sweep_sft.sweep.shared_study import asking, counted, more_to_ask, retried_numbers


def _study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")


def test_a_retried_failure_and_a_requeued_trial_do_not_count(tmp_path):
    study = _study(tmp_path)
    for _ in range(2):
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(t, 1.0)
    died = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(died, state=TrialState.FAIL)
    cut = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    cut.set_user_attr(INTERRUPTED_TAG, True)
    study.tell(cut, state=TrialState.FAIL)
    assert len(counted(study.get_trials())) == 3  # the failure counts until it is retried
    RetryFailedTrialCallback(max_retry=1)(study, study.get_trials()[died.number])
    trials = study.get_trials()
    assert retried_numbers(trials) == {died.number}
    assert [t.number for t in counted(trials)] == [0, 1]
    assert more_to_ask(study, 3)  # the retry waits: ask it, whatever the count
    retry = study.ask()
    assert retry.params == trials[died.number].params
    assert not more_to_ask(study, 3)  # 2 counted + the retry running
    assert more_to_ask(study, 4)


def test_asking_holds_a_lock_beside_a_sqlite_study(tmp_path):
    study = _study(tmp_path)
    with asking(study):
        assert (tmp_path / "s.db.sweep_sft-ask.lock").exists()
