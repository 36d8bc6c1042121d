"""The sandwich sweeper as a Hydra plugin (hydra/sweeper=sandwich), on a synthetic trial."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).parent / "apps" / "synthetic_trial.py"


def sweep(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=sandwich",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.passing=1e-6",
        "hydra.sweeper.failing=1e-2",
        "hydra.sweeper.precision=1.25",
        *overrides,
    ]
    import os

    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_sweeper_brackets_the_known_threshold(tmp_path):
    proc = sweep(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    bracket = result["bracket"]
    assert bracket["passing"] <= 3.7e-4 < bracket["failing"] <= bracket["passing"] * 1.25
    assert result["rounds"] <= math.ceil(math.log2(math.log(1e4) / math.log(1.25))) + 1
    assert len([d for d in (tmp_path / "sweep").iterdir() if d.is_dir()]) == result["trials"]
    # a diverged (failed) trial counted as a violation, and the sweep went on
    assert any(p["results"] == [None] and not p["passed"] for p in result["probes"])


def test_seeds_and_parallel_probes(tmp_path):
    proc = sweep(tmp_path, "hydra.sweeper.seeds=2", "hydra.sweeper.probes_per_round=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    assert all(len(p["results"]) == 2 for p in result["probes"])
    assert result["trials"] == 2 * 3 * result["rounds"]
    # rule "all": seed 1 adds 0.001 to the drop, so the bracket sits just below the seed-0 threshold
    assert result["bracket"]["passing"] <= 3.7e-4


def test_resume_after_the_sweep_process_dies(tmp_path):
    killed = sweep(tmp_path, env={"KILL_ONCE": str(tmp_path / "killed")})
    assert killed.returncode != 0 and (tmp_path / "killed").exists()
    state = json.loads((tmp_path / "sweep" / "sandwich_state.json").read_text())
    done_before = state["trials"]
    assert done_before >= 1 and not state["done"]
    resumed = sweep(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sandwich_result.json").read_text())
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    full = json.loads((sweep(fresh).returncode == 0 and (fresh / "sweep" / "sandwich_result.json")).read_text())
    assert result["bracket"] == full["bracket"]
    # finished probes were not redone: every probe value appears once
    values = [p["value"] for p in result["probes"]]
    assert len(values) == len(set(values)) == len(full["probes"])
