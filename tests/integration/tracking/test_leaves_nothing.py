"""A tracked trial run from the checkout, as a user runs one there with their store elsewhere,
writes nothing into the checkout: its MLflow artifacts lie beside the store, its outputs in its
run folder (the suite once left 15 orphan run folders in the checkout's mlruns/)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import ROOT, run_cli


def checkout_state() -> set[str]:
    """`git status` of the checkout, ignored files included: what a run could have added."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # pytest's and ruff's own caches change under any test run
    return {line for line in out.splitlines() if not line[3:].startswith((".pytest_cache", ".ruff_cache", ".venv"))}


@pytest.mark.slow
def test_a_tracked_trial_run_in_the_checkout_leaves_it_as_it_was(tmp_path, tiny_overrides, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    before = checkout_state()
    args = [o for o in tiny_overrides if not o.startswith(("tracking.", "output_dir="))]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkout_state() - before == set()
    assert list(tmp_path.glob("mlruns/sweep-sft/*/artifacts/*"))  # its artifacts, beside the store
