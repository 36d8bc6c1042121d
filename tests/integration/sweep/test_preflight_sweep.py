"""A sweep whose output_dir holds Hydra's job values, run for real (two tiny trials): what the
preflight (tests/unit/sweep/test_sweep_preflight.py) accepts is what the jobs do."""

from __future__ import annotations

import json

import pytest

from helpers import mlflow_runs, run_cli


@pytest.mark.slow
def test_a_sweep_with_hydra_values_in_output_dir_trains_each_job_there(tmp_path):
    # Two tiny real trials: the preflight accepts them and each writes where its output_dir says.
    tiny = ["data.max_train_examples=32", "data.max_val_per_task=2", "trainer.max_steps=1", "trainer.eval_every=0",
            "trainer.num_threads=1", "trainer.progress=false", "eval.max_new_tokens=4",
            "eval.train_recall_examples=2", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    keep = ",".join(a.split("=")[0] for a in [*tiny, "output_dir=x"])
    args = [*tiny, f"hydra.sweep.dir={tmp_path / 's'}", f"hydra.job.config.override_dirname.exclude_keys=[{keep}]",
            "lr=1e-4,1e-3", f"output_dir={tmp_path}/runs/${{hydra:job.num}}/${{hydra:job.override_dirname}}"]
    proc = run_cli("-m", *args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # Neither the check nor the parent run's callback failed on them (Hydra would warn, and go on without them).
    assert "on_multirun_start raised" not in out, out[-3000:]
    for num, lr in [(0, "0.0001"), (1, "0.001")]:
        metrics = json.loads((tmp_path / "runs" / str(num) / f"lr={lr}" / "metrics.json").read_text())
        assert metrics["state"] == "COMPLETE"
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("sweep_sft.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r.data.tags.get("mlflow.parentRunId") for r in runs if r not in parents]
    assert children == [parents[0].info.run_id] * 2
