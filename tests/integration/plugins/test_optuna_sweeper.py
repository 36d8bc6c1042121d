"""Our Optuna sweeper (hydra/sweeper=optuna5) on a synthetic training curve with a known best
x = 10^-3.5 (tests/apps/synthetic_curve.py), run as a user runs it: a Hydra multirun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import run_cli

SPACE = "x=tag(log,interval(1e-6,1e-1))"


pytestmark = pytest.mark.sweep_app("synthetic_curve.py", "optuna5")


def result(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())


def load_study(tmp_path: Path):
    import optuna

    from sweep_sft.sweep.study import open_storage

    return optuna.load_study(study_name="sweep", storage=open_storage(str(tmp_path / "sweep" / "optuna.journal")))


def test_tpe_finds_the_optimum_region(tmp_path, sweep):
    proc = sweep(SPACE, "hydra.sweeper.n_trials=25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(tmp_path)
    assert r["states"] == {"COMPLETE": 25}
    # within 10^0.1 (26%) of the optimum over a range of 10^5
    assert abs(math.log10(r["best"]["params"]["x"]) + 3.5) < 0.1
    # found by TPE's model, not by its 10 random start-up trials
    err = [abs(math.log10(t["params"]["x"]) + 3.5) for t in r["trials"]]
    assert min(err[10:]) < min(err[:10]) / 2


def test_pruning_stops_bad_trials_early_and_records_them(tmp_path, sweep):
    proc = sweep(
        SPACE, "hydra.sweeper.n_trials=16", "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=4"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(tmp_path)
    pruned = [t for t in r["trials"] if t["state"] == "PRUNED"]
    assert pruned and r["states"]["COMPLETE"] + len(pruned) == 16
    # stopped early: fewer steps than a full trial, and recorded in the study as PRUNED
    assert all(t["steps"] < 60 for t in pruned)
    assert r["trial_steps"] < 16 * 60
    from optuna.trial import TrialState

    study = load_study(tmp_path)
    assert sum(t.state == TrialState.PRUNED for t in study.trials) == len(pruned)
    # the pruner only stops trials worse than the median: the best one ran to the end
    assert r["best"]["number"] not in {t["number"] for t in pruned}
    for t in pruned:  # each pruned trial's job folder says so too
        record = json.loads((tmp_path / "sweep" / str(t["number"]) / "metrics.json").read_text())
        assert record["state"] == "PRUNED"


def test_failed_trials_are_told_fail_and_the_sweep_goes_on(tmp_path, sweep):
    proc = sweep(SPACE, "hydra.sweeper.n_trials=12", "hydra.sweeper.max_failure_rate=0.9", env={"FAIL_ABOVE": "1e-2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(tmp_path)
    failed = [t for t in r["trials"] if t["state"] == "FAIL"]
    assert failed and all(t["params"]["x"] > 1e-2 and "diverged" in t["error"] for t in failed)
    assert len(r["trials"]) == 12


def test_too_many_failures_stop_the_sweep_keeping_finished_trials(tmp_path, sweep):
    proc = sweep(
        "x=choice(1e-4,1e-3,0.5)",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.max_failure_rate=0",
        env={"FAIL_ABOVE": "0.1"},
    )
    assert proc.returncode != 0
    assert "max_failure_rate" in proc.stderr and "diverged at x=0.5" in proc.stderr
    r = result(tmp_path)
    assert r["states"]["FAIL"] == 1  # stopped at the first failure; what finished before is kept
    assert len(r["trials"]) == 1 + r["states"].get("COMPLETE", 0)


def test_resume_after_the_sweep_process_dies(tmp_path, sweep):
    args = (SPACE, "hydra.sweeper.n_trials=8")
    killed = sweep(*args, env={"KILL_ONCE": str(tmp_path / "killed"), "KILL_AT": "3"})
    assert killed.returncode != 0 and (tmp_path / "killed").exists()
    first = {n: (tmp_path / "sweep" / str(n) / "metrics.json").stat().st_mtime_ns for n in range(3)}
    resumed = sweep(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    r = result(tmp_path)
    assert r["states"] == {"COMPLETE": 8}
    numbers = [t["number"] for t in r["trials"]]
    assert numbers == [0, 1, 2, 4, 5, 6, 7, 8]  # 3 was cut off: redone as 4, numbering went on
    # finished trials were not redone, and their folders not overwritten
    assert {n: (tmp_path / "sweep" / str(n) / "metrics.json").stat().st_mtime_ns for n in range(3)} == first
    study = load_study(tmp_path)
    assert study.trials[4].params == study.trials[3].params  # the cut-off trial's point, done again
    assert not (tmp_path / "sweep" / "3" / "metrics.json").exists()


def test_grid_sampler_visits_each_point_once(tmp_path, sweep):
    proc = sweep("x=1e-4,1e-3,1e-2", "hydra/sweeper/sampler=grid")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(tmp_path)
    assert sorted(t["params"]["x"] for t in r["trials"]) == [1e-4, 1e-3, 1e-2]


def test_multi_objective_writes_the_pareto_front(tmp_path, sweep):
    proc = sweep(
        SPACE,
        "hydra/sweeper/sampler=nsga2",
        "hydra.sweeper.sampler.population_size=4",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.direction=[minimize,maximize]",
        "hydra.sweeper.metrics=[val/loss,x_error]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(tmp_path)
    assert "best" not in r and r["pareto_front"]
    assert all(len(p["values"]) == 2 for p in r["pareto_front"])


@pytest.mark.parametrize("sampler", ["random", "cmaes", "gp", "qmc"])
@pytest.mark.slow
def test_other_samplers_run(tmp_path, sweep, sampler):
    proc = sweep(SPACE, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result(tmp_path)["states"] == {"COMPLETE": 3}


def test_bad_sampler_argument_names_the_key(tmp_path, sweep):
    proc = sweep(SPACE, "hydra/sweeper/pruner=percentile", "hydra.sweeper.pruner.percentile=150")
    assert proc.returncode != 0
    assert "hydra.sweeper.pruner" in proc.stderr and "percentile" in proc.stderr


def test_search_space_follows_hydra_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.sweep_sft_optuna.search_space import parse

    space, fixed = parse(
        ["epochs=range(1,4)", "lr=tag(log,interval(1e-5,1e-2))", "name=a,b", "seed=3"],
        {"grad_accum": "choice(16,32,64,128)", "epochs": "range(1,9)"},
    )
    by_key = {p.key: p for p in space}
    assert fixed == ["seed=3"]
    assert by_key["epochs"].distribution == IntDistribution(1, 3)  # Hydra's range excludes its end
    assert by_key["lr"].distribution == FloatDistribution(1e-5, 1e-2, log=True)
    assert by_key["grad_accum"].distribution == CategoricalDistribution([16, 32, 64, 128])
    assert by_key["name"].override("b") == "name=b"
    assert by_key["lr"].override(3e-4) == "lr=0.0003"


def _study_with_pruner(tmp_path: Path, record) -> str:
    """A study in a journal whose stored pruner is `record`, with one trial asked."""
    import optuna

    from sweep_sft.sweep.study import PRUNER_ATTR, open_storage

    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(storage))
    study.set_user_attr(PRUNER_ATTR, record)
    study.ask()
    return storage


@pytest.mark.slow
def test_a_trial_refuses_a_hostile_pruner_in_the_study_storage_without_running_it(tmp_path):
    """Whoever can write the shared journal must not run code in every trial: a `_target_`
    stored where the pruner goes is refused, one line, before training, and never called."""
    marker = tmp_path / "marker"
    # Hydra's own block-list refuses builtins.exec, not this: Path(marker).write_text("ran").
    path = {"_target_": "pathlib.Path", "_args_": [str(marker)]}
    hostile = {"_target_": "pathlib.Path.write_text", "_args_": [path, "ran"]}
    storage = _study_with_pruner(tmp_path, hostile)
    link = [f"study.storage={storage}", "study.study_name=s", "study.trial_number=0", "study.metric=val/loss"]
    tiny = ["data.max_train_examples=16", "data.max_val_per_task=1", "trainer.max_steps=1", "trainer.num_threads=1",
            "trainer.progress=false", "tracking.enabled=false", "eval.generate=false", "eval.general_probe=false"]
    proc = run_cli(*tiny, *link, f"output_dir={tmp_path / 'trial'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert not marker.exists(), "the stored _target_ was called"
    assert "sweep_sft.pruner: expected a pruner record {name, kwargs}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "trial" / "metrics.json").exists()


@pytest.mark.parametrize(
    "record",
    [
        {"name": "exec", "kwargs": {}},
        {"name": "builtins.exec", "kwargs": {}},
        {"name": "MedianPruner", "kwargs": {"_target_": "builtins.exec"}},
        {"name": "PatientPruner", "kwargs": {"patience": 1, "wrapped_pruner": {"_target_": "builtins.exec"}}},
        {"name": "PatientPruner", "kwargs": {"patience": 1, "wrapped_pruner": {"name": "exec", "kwargs": {}}}},
        {"name": "ThresholdPruner", "kwargs": {"upper": [1.0]}},
    ],
)
def test_only_optunas_pruners_with_plain_arguments_are_rebuilt(tmp_path, record):
    from sweep_sft.errors import ConfigError
    from sweep_sft.sweep.study import Reporter

    storage = _study_with_pruner(tmp_path, record)
    with pytest.raises(ConfigError, match=f"study s in {storage}: sweep_sft.pruner.*(not one of|record|plain)"):
        Reporter(storage, "s", 0, "val/loss")


def test_the_sweepers_pruner_is_stored_as_a_name_and_arguments_and_rebuilt(tmp_path):
    import optuna
    from omegaconf import OmegaConf

    from hydra_plugins.sweep_sft_optuna.config import PatientPrunerConf
    from sweep_sft.sweep.study import Reporter, pruner_record

    record = pruner_record(OmegaConf.to_container(OmegaConf.structured(PatientPrunerConf)))
    assert record == {
        "name": "PatientPruner",
        "kwargs": {
            "patience": 3,
            "min_delta": 0.0,
            "wrapped_pruner": {
                "name": "MedianPruner",
                "kwargs": {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
            },
        },
    }
    pruner = Reporter(_study_with_pruner(tmp_path, record), "s", 0, "val/loss").trial.study.pruner
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner) and pruner._patience == 3


def test_a_pruner_trials_could_not_rebuild_is_refused_when_the_sweep_starts(tmp_path, sweep):
    proc = sweep(SPACE, "hydra/sweeper/pruner=median", "hydra.sweeper.pruner._target_=builtins.print")
    assert proc.returncode != 0
    assert "hydra.sweeper.pruner._target_=builtins.print: trials rebuild the pruner from the study storage" in (
        proc.stderr
    )
    assert not (tmp_path / "sweep" / "0").exists()
