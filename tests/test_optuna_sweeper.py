"""Our Optuna sweeper (hydra/sweeper=optuna5) on a synthetic training curve with a known best
x = 10^-3.5 (tests/apps/synthetic_curve.py), run as a user runs it: a Hydra multirun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

SPACE = "x=tag(log,interval(1e-6,1e-1))"


@pytest.fixture
def sweep(run_app, tmp_path):
    def run(*overrides: str, env: dict | None = None):
        common = ["hydra/sweeper=optuna5", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
        return run_app("synthetic_curve.py", tmp_path, *common, *overrides, env=env)

    return run


def result(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())


def load_study(tmp_path: Path):
    import optuna

    from sweep_sft.study import open_storage

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
