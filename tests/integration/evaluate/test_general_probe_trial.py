"""The general probe in a trial and in standalone evaluation: the set it used is printed and logged,
`general_drop` is base minus trained on that set, and `python -m sweep_sft.evaluate` scores the
same set (from the cache) to the trial's own numbers."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from mlflow.tracking import MlflowClient

from sweep_sft.config.compose import compose
from sweep_sft.evaluate.__main__ import main
from sweep_sft.trial.run import run_trial


def tracked(tiny_overrides, tmp_path, empty_store) -> tuple[list[str], str]:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return [o for o in tiny_overrides if not o.startswith("tracking.")] + [f"tracking.uri={uri}"], uri


def source_param(uri: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.data.params["general.source"]


@pytest.mark.slow
def test_base_answers_in_a_trial_and_again_in_standalone_evaluation(tiny_overrides, tmp_path, empty_store, capsys):
    overrides, uri = tracked(tiny_overrides, tmp_path, empty_store)
    general = ["eval.general.source=base_answers", "eval.general.max_items=3", "eval.general.max_new_tokens=6"]
    result = run_trial(compose(overrides + general + ["eval.generate=false"]))
    m = result.metrics
    assert "general probe: base_answers (3 items), base score" in capsys.readouterr().out
    assert m["general_drop"] == pytest.approx(m["general/base_score"] - m["general/score"])
    assert m["general_drop"] != 0  # four steps at the embedded default's lr move the model
    assert source_param(uri) == "base_answers"

    assert main([str(tmp_path / "trial"), "eval.generate=false"]) == 0
    path = re.search(r"results in (\S+) ", capsys.readouterr().out).group(1)
    evaluated = json.loads(open(path).read())
    assert evaluated["general_source"] == "base_answers"
    for key in ("general_drop", "general/score", "general/base_score", "general/base_exact_match"):
        assert evaluated["metrics"][key] == pytest.approx(m[key], abs=1e-6), key


@pytest.mark.slow
def test_a_users_general_set_in_a_trial(tiny_overrides, tmp_path, empty_store):
    overrides, uri = tracked(tiny_overrides, tmp_path, empty_store)
    general = tmp_path / "general.jsonl"
    chat = [{"role": "user", "content": "count: one two"}, {"role": "assistant", "content": "three four five"}]
    records = [{"text": "months: january february march april"}, {"messages": chat}]
    general.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_trial(compose(overrides + [f"eval.general.source={general}", "eval.generate=false"]))
    m = result.metrics
    assert 0 < m["general/base_score"] < 1 and m["general_drop"] != 0
    assert source_param(uri) == str(general)
