"""Shared fixtures: the embedded default (built once, cached) and a shrunken trial config."""

from __future__ import annotations

import os

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
