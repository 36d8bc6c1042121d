"""Shared fixtures: the embedded default (built once, cached), a shrunken trial config, an empty MLflow
store, the `sweep` runner of tests/apps/, the checks that the Slurm cluster and PostgreSQL are up,
and a fresh PostgreSQL database per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import ROOT, run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A user's MLflow variables would send the tests' runs to their store (tracking.uri unset honours them).
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
    os.environ.pop(_var, None)


def pytest_configure(config):
    """The tests' own cache (the embedded default, general-probe sets) in a temporary folder,
    never the user's ~/.cache/sweep_sft or $SWEEP_SFT_CACHE. Set by the process that starts the
    session: pytest-xdist's workers inherit it, so they build each entry once between them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    config.sweep_sft_cache = tempfile.mkdtemp(prefix="sweep-sft-test-cache-")
    os.environ["SWEEP_SFT_CACHE"] = config.sweep_sft_cache


def pytest_unconfigure(config):
    cache = getattr(config, "sweep_sft_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped, not failed, where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch  # here, not at the top: collecting config-only tests must not import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


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


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty, migrated SQLite MLflow store: creating one takes MLflow about 7 s, once."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracked_overrides(tiny_overrides, tmp_path, empty_store):
    """tiny_overrides with MLflow on (a SQLite store in the sweep's cwd) and Hydra's job folders."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return [o for o in tiny_overrides if not o.startswith(("tracking.", "output_dir="))]


@pytest.fixture
def sweep(request, tmp_path):
    """sweep(*overrides, cwd=tmp_path, env=None): the app of the test's `sweep_app(app, sweeper,
    *overrides)` marker run as a Hydra multirun under that sweeper into <cwd>/sweep, as a user would."""
    marker = request.node.get_closest_marker("sweep_app")
    if marker is None:
        pytest.fail("the sweep fixture needs a @pytest.mark.sweep_app(app, sweeper, *overrides) marker")
    app, sweeper, *fixed = marker.args

    def run(*overrides: str, cwd: Path = tmp_path, env: dict | None = None) -> subprocess.CompletedProcess:
        sweep_dir = f"hydra.sweep.dir={cwd / 'sweep'}"
        return run_cli("-m", f"hydra/sweeper={sweeper}", sweep_dir, *fixed, *overrides, app=app, cwd=cwd, env=env)

    return run


def _fail_unless_up(script: str, what: str, make_target: str) -> None:
    """Fail (not skip): a CI run without the local infrastructure must not pass silently."""
    path = ROOT / "launchers" / script
    status = subprocess.run([path, "status"], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail(
            f"{what} is not up (`{path} status` exited {status.returncode}); "
            f"start it with `make {make_target}`:\n{status.stdout}{status.stderr}"
        )


@pytest.fixture(scope="session")
def slurm_cluster():
    _fail_unless_up("slurm_cluster.sh", "the local Slurm cluster", "slurm-up")
    if shutil.which("sbatch") is None:
        pytest.fail("the local Slurm cluster is not up (no sbatch on PATH); start it with `make slurm-up`")


@pytest.fixture(scope="session")
def postgres_server():
    _fail_unless_up("postgres.sh", "the local PostgreSQL server", "postgres-up")


@pytest.fixture
def postgres_database(postgres_server):
    """The URL (no password in it) of a new, empty database of its own, dropped after the test."""
    from servers import fresh_database

    with fresh_database() as url:
        yield url


# marker -> the session fixture that fails the test when that infrastructure is down
_INFRA = {"slurm": "slurm_cluster", "postgres": "postgres_server"}


@pytest.fixture(autouse=True)
def _marked_tests_need_their_infra(request):
    for marker, fixture in _INFRA.items():
        if request.node.get_closest_marker(marker) is not None:
            request.getfixturevalue(fixture)
