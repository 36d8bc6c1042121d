"""The default trial, exactly as `python -m sweep_sft` runs it: the embedded default
learns some task types and not others, and the validation loss at least halves."""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT, run_cli

README_TABLE_INTRO = "ends with a per-task_type table:"


def readme_table() -> list[str]:
    """The per-task_type table the README shows for `make run`: its header and rows, before `...`."""
    text = (ROOT / "README.md").read_text()
    block = text.split(README_TABLE_INTRO, 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip() and line.strip() != "..."]


def shape(line: str) -> list[str]:
    """A table line's shape: the words as they are, each number as its format (0.508 -> 9.999)."""
    return [re.sub(r"\d", "9", field) if re.fullmatch(r"[\d.]+", field) else field for field in line.split()]


def assert_readme_table_printed(stdout: str) -> None:
    """The README's table has the printed table's header, and each of its rows has the shape of
    the printed row of that task_type (same columns, same number formats)."""
    header, *rows = readme_table()
    printed = stdout.splitlines()
    assert header in printed, f"README header {header!r} is not printed:\n{stdout[-2000:]}"
    start = printed.index(header)
    by_task = {line.split()[0]: line for line in printed[start + 1 :] if line.split()}
    assert rows, "the README shows no rows"
    for row in rows:
        task = row.split()[0]
        assert task in by_task, f"README row {task} is not printed"
        assert shape(row) == shape(by_task[task]), f"README: {row!r}\nprinted: {by_task[task]!r}"


@pytest.mark.slow
def test_default_trial_learns_three_task_types(tmp_path):
    proc = run_cli("trainer.progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = tmp_path.glob("outputs/*/*/metrics.json")
    saved = json.loads(metrics_file.read_text())
    metrics = saved["metrics"]
    exact = {k.removeprefix("task/exact_match/"): v for k, v in metrics.items() if k.startswith("task/exact_match/")}
    assert len(exact) == 8
    assert sum(v >= 0.9 for v in exact.values()) >= 3, exact
    assert min(exact.values()) <= 0.5, exact
    val = saved["series"]["val/loss"]
    assert val[0][0] == 0 and val[-1][1] < 0.5 * val[0][1]
    # the per-task table is printed, and one MLflow run is in the local store
    assert "classification/sentiment" in proc.stdout and "exact match" in proc.stdout
    assert_readme_table_printed(proc.stdout)  # the README shows what this command prints
    assert (tmp_path / "mlflow.db").exists()
    # the final evaluation: a line per phase, no library warning (transformers gave 22), every generation kept
    assert "final evaluation: pass@4 over 512 prompts x 4 samples in" in proc.stdout
    assert "min_new_tokens" not in proc.stdout + proc.stderr
    generations = (metrics_file.parent / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 512 + 8 * 32  # every validation prompt, eval.train_recall_examples per task_type

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val/loss"] == pytest.approx(metrics["val/loss"])
    assert run.data.tags["sweep_sft.scorer.format/json"] == "exact"
    assert "generations.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_general_drop_grows_with_learning_rate(tiny_overrides):
    """Forgetting grows with lr: the monotone prior the sandwich search relies on."""
    from sweep_sft.config.compose import compose
    from sweep_sft.trial.run import run_trial

    shared = [o for o in tiny_overrides if not o.startswith(("data.max_train_examples", "trainer.max_steps"))]
    drops = []
    for lr in ("1e-4", "1e-3", "1e-2"):
        cfg = compose(shared + [f"lr={lr}", "trainer.max_steps=60", "trainer.batch_size=32", "eval.generate=false"])
        drops.append(run_trial(cfg).metrics["general_drop"])
    assert drops[0] < drops[1] < drops[2], drops
    assert drops[2] - drops[0] > 0.1, drops
