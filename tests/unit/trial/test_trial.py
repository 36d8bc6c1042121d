"""Trials as a user runs them: bad input fails clearly before training, a tiny trial
records what it should, a model without a pad token gets one and resized embeddings."""

from __future__ import annotations

import json
import re

import pytest

from helpers import write_jsonl
from sweep_sft.config.compose import compose
from sweep_sft.errors import ConfigError, DataError
from sweep_sft.trial.run import run_trial

GOOD = {
    "task_type": "qa/simple",
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
}


def user_data(tmp_path, records):
    train = write_jsonl(tmp_path / "train.jsonl", records)
    val = write_jsonl(tmp_path / "val.jsonl", [GOOD])
    return ["data=jsonl", f"data.mix.sources.files.train={train}", f"data.mix.sources.files.val={val}"]


BAD_INPUTS = [
    ([GOOD, "{not json"], r"train.jsonl:2: .*JSON"),
    ([GOOD, {"messages": GOOD["messages"]}], r"train.jsonl:2: .*task_type"),
    ([{"task_type": "a", "foo": 1}], r"train.jsonl:1: .*messages"),
    (
        [{"task_type": "a", "messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}],
        r"train.jsonl:1: .*robot",
    ),
    (
        [{"task_type": "a", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}],
        r"train.jsonl:1: .*empty",
    ),
    (
        [
            {
                "task_type": "a",
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                    {"role": "user", "content": "z"},
                ],
            }
        ],
        r"train.jsonl:1: .*assistant",
    ),
]


@pytest.mark.parametrize("records,message", BAD_INPUTS)
def test_bad_data_fails_before_training(tmp_path, tiny_overrides, records, message):
    with pytest.raises(DataError, match=message):
        run_trial(compose(tiny_overrides + user_data(tmp_path, records)))
    assert not (tmp_path / "trial" / "metrics.json").exists()


def test_data_that_tokenises_to_nothing_fails_before_the_model_loads(tmp_path, tiny_overrides, monkeypatch):
    """Tokenising needs only the tokenizer: a data error must not wait for (a large) model to load."""
    from sweep_sft import modeling

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(modeling, "load_model", no_model)
    overrides = ["data.max_seq_len=8", "data.truncation=drop", f"output_dir={tmp_path / 'trial'}"]
    with pytest.raises(DataError, match="dropped"):
        run_trial(compose(tiny_overrides + overrides))


def test_missing_data_file(tmp_path, tiny_overrides):
    overrides = [
        "data=jsonl",
        f"data.mix.sources.files.train={tmp_path / 'nope.jsonl'}",
        f"data.mix.sources.files.val={tmp_path / 'v.jsonl'}",
    ]
    with pytest.raises(DataError, match="nope.jsonl.*not found"):
        run_trial(compose(tiny_overrides + overrides))


def test_unknown_objective_lists_the_metrics(tiny_overrides):
    with pytest.raises(ConfigError, match=r"objective: unknown metric 'val/acc'.*val/loss/transform/copy"):
        run_trial(compose(tiny_overrides + ["objective=val/acc"]))


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (["objective=task/train_recall", "eval.train_recall_examples=0"], "eval.train_recall_examples=0"),
        (["objective=task/exact_match/classification/topic", "eval.generate=false"], "eval.generate=false"),
        (["objective=task/pass_at_4", "eval.pass_k=0"], "eval.pass_k=0"),
        (["objective=task/pass_at_8", "eval.pass_k=4"], "eval.pass_k=4 (it measures task/pass_at_4)"),
        (["objective=general_drop", "eval.general_probe=false"], "eval.general_probe=false"),
    ],
)
def test_an_objective_its_eval_settings_switch_off_fails_before_training(tiny_overrides, tmp_path, overrides, why):
    with pytest.raises(ConfigError, match=re.escape(f"not measured with {why}")):
        run_trial(compose(tiny_overrides + overrides))
    assert not (tmp_path / "trial" / "dataset_stats.json").exists()  # stopped before the data was prepared


def test_tiny_trial_writes_metrics_and_returns_objective(tiny_overrides, tmp_path):
    result = run_trial(compose(tiny_overrides + ["objective=task/exact_match/classification/topic"]))
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["objective"] == "task/exact_match/classification/topic"
    assert saved["value"] == result.value == result.metrics["task/exact_match/classification/topic"]
    names = set(saved["metrics"])
    for expected in (
        "train/loss",
        "train/grad_norm",
        "train/lr",
        "train/tokens_per_s",
        "val/loss",
        "val/loss/format/json",
        "train/loss/format/json",
        "general/score",
        "general/base_score",
        "general_drop",
        "task/exact_match/transform/copy",
    ):
        assert expected in names, expected
    assert [step for step, _ in saved["series"]["val/loss"]] == [0, 4]
    assert saved["metrics"]["general_drop"] == pytest.approx(
        saved["metrics"]["general/base_score"] - saved["metrics"]["general/score"]
    )
    stats = json.loads((tmp_path / "trial" / "dataset_stats.json").read_text())
    assert sum(s["examples"] for s in stats.values()) == 128
    # What measured the metrics, for comparisons: the default scorer, the probe `auto` chose.
    tasks = {name[len("task/exact_match/") :] for name in names if name.startswith("task/exact_match/")}
    assert saved["scorers"] == dict.fromkeys(sorted(tasks), "exact") and len(tasks) == 8
    assert saved["general_source"] == "embedded"


def test_added_pad_and_special_tokens_resize_embeddings(tmp_path, embedded_model_path, tiny_overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweep_sft import modeling
    from sweep_sft.config.validate import validate

    base = AutoTokenizer.from_pretrained(embedded_model_path)
    base.pad_token = None
    base.save_pretrained(tmp_path / "nopad")
    AutoModelForCausalLM.from_pretrained(embedded_model_path).save_pretrained(tmp_path / "nopad")
    cfg = validate(
        compose(
            tiny_overrides
            + [
                f"model.name_or_path={tmp_path / 'nopad'}",
                "model.pad_token='<|newpad|>'",
                "model.add_special_tokens=['<|tool|>']",
            ]
        )
    )
    tokenizer = modeling.load_tokenizer(cfg.model, str(tmp_path / "nopad"))
    assert tokenizer.pad_token == "<|newpad|>" and "<|tool|>" in tokenizer.get_vocab()
    model = modeling.load_model(cfg.model, str(tmp_path / "nopad"), tokenizer, "cpu")
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == len(base) + 2
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    result = run_trial(
        compose(
            tiny_overrides
            + [f"model.name_or_path={tmp_path / 'nopad'}", "model.pad_token='<|newpad|>'", "eval.generate=false"]
        )
    )
    assert result.metrics["val/loss"] > 0


def test_bf16_autocast_trains(tiny_overrides):
    result = run_trial(compose(tiny_overrides + ["trainer.precision=bf16", "eval.generate=false"]))
    losses = [value for _, value in result.series["train/loss"]]
    assert len(losses) == 4 and all(0 < value < 20 for value in losses)


def test_a_model_that_cannot_be_saved_leaves_the_trial_recorded(tiny_overrides, tmp_path, monkeypatch, capsys):
    """A full disk at the end (the model is the largest file a trial writes) costs the model, not
    the trial's results: metrics.json, the final metrics and a FINISHED run with the reason."""
    from mlflow.tracking import MlflowClient
    from transformers import PreTrainedModel

    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", no_space)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")] + [f"tracking.uri={uri}"]
    result = run_trial(compose(overrides))
    assert "No space left on device" in capsys.readouterr().err
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["metrics"]["val/loss"] == result.metrics["val/loss"]
    assert "task/exact_match" in saved["metrics"]
    run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert "No space left on device" in run.data.tags["sweep_sft.save_model_error"]
    assert not (tmp_path / "trial" / "model" / "config.json").exists()
