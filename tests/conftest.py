"""Shared fixtures: the embedded default (built once, cached) and a shrunken trial config."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_model_path():
    from sweep_sft.embedded.build import embedded_model

    return embedded_model()


@pytest.fixture(scope="session")
def embedded_data_path():
    from sweep_sft.embedded.build import embedded_data

    return embedded_data()


@pytest.fixture(scope="session")
def tokenizer(embedded_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


@pytest.fixture
def tiny_overrides(tmp_path):
    """A real trial, shrunk: few examples, few steps, one thread, nothing logged to MLflow."""
    return [
        "data.max_train_examples=128",
        "data.max_val_per_task=4",
        "trainer.max_steps=4",
        "trainer.batch_size=16",
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "trainer.num_threads=1",
        "trainer.progress=false",
        "eval.max_new_tokens=8",
        "eval.train_recall_examples=4",
        "tracking.enabled=false",
        f"output_dir={tmp_path / 'trial'}",
    ]


@pytest.fixture
def run_app():
    """Run one of tests/apps/ as a Hydra multirun in a subprocess (as a user would)."""
    import subprocess
    import sys
    from pathlib import Path

    apps = Path(__file__).parent / "apps"

    def run(app: str, cwd, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
        args = [sys.executable, str(apps / app), "-m", *overrides]
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})

    return run


@pytest.fixture(scope="session")
def slurm_cluster():
    """Fail (not skip): a CI run without the local cluster must not pass silently."""
    script = Path(__file__).resolve().parent.parent / "launchers" / "slurm_cluster.sh"
    status = subprocess.run([script, "status"], capture_output=True, text=True)
    if status.returncode != 0 or shutil.which("sbatch") is None:
        pytest.fail(
            f"the local Slurm cluster is not up (`{script} status` exited {status.returncode}); "
            f"start it with `make slurm-up`:\n{status.stdout}{status.stderr}"
        )


@pytest.fixture(autouse=True)
def _slurm_marked_needs_the_cluster(request):
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
