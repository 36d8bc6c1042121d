"""Running a sweep's command again in the same sweep folder (after a SIGKILLed controller, or
to extend it) goes on exactly: no point proposed twice, finished jobs never redone, one MLflow
parent run per sweep folder, the dead controller's cut-off runs ended KILLED."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPACE = "x=tag(log,interval(1e-6,1e-1))"


def optuna_trials(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "sweep" / "optuna_result.json").read_text())["trials"]


@pytest.mark.sweep_app("synthetic_curve.py", "optuna5")
def test_an_extended_study_proposes_new_points_and_a_fresh_one_is_unchanged(tmp_path, sweep):
    first = sweep(SPACE, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = [t["params"]["x"] for t in optuna_trials(tmp_path)]
    extended = sweep(SPACE, "hydra.sweeper.n_trials=4")
    assert extended.returncode == 0, extended.stderr[-3000:]
    xs = [t["params"]["x"] for t in optuna_trials(tmp_path)]
    assert xs[:2] == before and len(set(xs)) == 4  # trials 2 and 3 are new points
    # a fresh study in another folder proposes what it always did (the seed as configured)
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    assert sweep(SPACE, "hydra.sweeper.n_trials=2", cwd=fresh_dir).returncode == 0
    assert [t["params"]["x"] for t in optuna_trials(fresh_dir)] == before
