"""Sweeps through our launchers dispatch job by job (sweep_sft.sweep.dispatch): a job starts the
moment a slot frees, not when the batch's slowest job ends; `hydra.sweeper.dispatch=batch` keeps
Hydra's batches. Job 0 of the synthetic curve sleeps (SLOW_JOB=0); which jobs ran while it slept
tells the two apart, with no timing assertion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

# long enough for job 1 to end and job 2 to start meanwhile, even on a loaded 2-core machine
SLOW = {"SLOW_JOB": "0", "SLOW_S": "10"}
LAUNCHER = ("hydra/launcher=sweep_sft_local", "hydra.launcher.poll_s=0.2")

SLURM = (
    "hydra/launcher=sweep_sft_slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.poll_s=0.5",
    "hydra.launcher.sacct_interval_s=1",
    "hydra.launcher.result_grace_s=1",
)

pytestmark = pytest.mark.sweep_app("synthetic_curve.py", "optuna5")


def spans(tmp_path: Path) -> dict[int, tuple[float, float]]:
    out = {}
    for record in (tmp_path / "sweep").glob("*/metrics.json"):
        r = json.loads(record.read_text())
        out[int(record.parent.name)] = (r["started"], r["ended"])
    return out


@pytest.mark.parametrize(
    "launcher", [LAUNCHER, pytest.param(SLURM, marks=pytest.mark.slurm)], ids=["local_jobs", "slurm"]
)
def test_optuna_asks_the_next_trial_as_soon_as_a_slot_frees(tmp_path, sweep, launcher):
    proc = sweep(
        "x=tag(log,interval(1e-6,1e-1))", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", *launcher, env=SLOW
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = spans(tmp_path)
    assert sorted(t) == [0, 1, 2]
    assert t[2][0] < t[0][1], t  # trial 2 took trial 1's slot while trial 0 still ran
    result = json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())
    assert result["states"] == {"COMPLETE": 3}


def test_batch_dispatch_waits_for_the_slowest_of_each_batch(tmp_path, sweep):
    proc = sweep(
        "x=tag(log,interval(1e-6,1e-1))",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.dispatch=batch",
        *LAUNCHER,
        env=SLOW,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = spans(tmp_path)
    assert sorted(t) == [0, 1, 2]
    assert t[2][0] > t[0][1], t  # the second batch waited for trial 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs"),
        ("hydra.sweeper.dispatch=eager", "hydra.sweeper.dispatch"),
        ("hydra/sweeper=grid hydra.sweeper.max_in_flight=0", "hydra.sweeper.max_in_flight"),
        (
            "hydra.sweeper.metrics=[val/loss,general_drop] hydra.sweeper.direction=[minimize,minimize] "
            "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner",
        ),
    ],
)
def test_bad_dispatch_settings_are_refused_before_anything_runs(tmp_path, override, key):
    sweeper = [] if "hydra/sweeper=" in override else ["hydra/sweeper=optuna5"]
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    proc = run_cli("-m", *sweeper, *override.split(), "lr=1e-4,1e-3", sweep_dir, cwd=tmp_path)
    assert proc.returncode == 1
    assert key in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
    assert not (tmp_path / "sweep").exists()


def test_async_with_a_batch_only_launcher_warns_once_naming_the_key(tmp_path, sweep):
    proc = sweep(
        "x=tag(log,interval(1e-6,1e-1))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.dispatch=async",
        "hydra/launcher=basic",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "hydra.sweeper.dispatch=async" in line]
    assert len(warnings) == 1 and "batches" in warnings[0], warnings


def test_successive_halving_across_independent_jobs_is_asha(tmp_path, sweep):
    proc = sweep(
        "x=tag(log,interval(1e-6,1e-1))",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/pruner=successive_halving",
        "hydra.sweeper.pruner.min_resource=5",
        "hydra.sweeper.pruner.reduction_factor=3",
        *LAUNCHER,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())
    assert len(result["trials"]) == 8
    pruned = [t for t in result["trials"] if t["state"] == "PRUNED"]
    # each pruned trial stopped at a rung (step 5 * 3^k) of its own, decided when it got there
    assert pruned and all(t["steps"] in (5, 15, 45) for t in pruned), result["trials"]
    assert result["best"]["number"] not in {t["number"] for t in pruned}


def test_the_grid_keeps_max_in_flight_jobs_running(tmp_path):
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    proc = run_cli(
        "-m", "hydra/sweeper=grid", "x=1e-3,1e-4,1e-5", "hydra.sweeper.max_in_flight=2", sweep_dir, *LAUNCHER,
        app="synthetic_curve.py", cwd=tmp_path, env=SLOW,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = spans(tmp_path)
    assert sorted(t) == [0, 1, 2]
    assert t[2][0] < t[0][1], t  # job 2 took job 1's slot while job 0 still ran
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert summary["states"]["COMPLETE"] == 3 and [j["number"] for j in summary["jobs"]] == [0, 1, 2]
