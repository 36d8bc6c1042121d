"""A tiny trial run as a user runs it, tracking on with tracking.uri unset: its run lands in the
store and experiment MLflow's own variables name, and its output repeats no line (a library
warning printed per generate() call, per batch) beyond the progress bars, which show every phase
of the final evaluation."""

from __future__ import annotations

import re
import shutil
from collections import Counter

import pytest

from helpers import run_cli

TINY = [
    "data.max_train_examples=16",
    "data.max_val_per_task=2",
    "trainer.max_steps=2",
    "trainer.batch_size=8",
    "trainer.num_threads=1",
    "eval.max_new_tokens=4",
    "eval.pass_k_examples=1",
    "eval.train_recall_examples=1",
]
# A tqdm bar's redraws ("title:  50%|#####     | 4/8 [00:01<00:01, ...]"): one per update, by design.
BAR = re.compile(r"^[^|]*\d+%\|.*\| *\d+/\d+ \[")
PHASES = ("validation loss over", "exact match over", "pass@4 over", "train recall over", "general probe over")


@pytest.mark.slow
def test_a_tracked_trial_honours_mlflow_variables_and_repeats_no_line(tmp_path, empty_store):
    store = tmp_path / "elsewhere" / "store.db"
    store.parent.mkdir()
    shutil.copy(empty_store, store)  # a migrated store: MLflow's first-run migration takes seconds
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "MLFLOW_EXPERIMENT_NAME": "from-env"}
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'trial'}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    assert not (tmp_path / "mlflow.db").exists()  # not the local default
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("from-env").experiment_id])
    assert run.info.status == "FINISHED" and "val/loss" in run.data.metrics

    lines = [line.strip() for line in re.split(r"[\r\n]+", proc.stdout + proc.stderr) if line.strip()]
    repeated = {line: n for line, n in Counter(lines).items() if n > 1 and not BAR.match(line)}
    assert repeated == {}
    assert not [line for line in lines if "min_new_tokens" in line or "Setting accelerator" in line]
    for phase in PHASES:  # trainer.progress is on: a bar per phase of the final evaluation
        assert any(line.startswith(phase) and BAR.match(line) for line in lines), phase
