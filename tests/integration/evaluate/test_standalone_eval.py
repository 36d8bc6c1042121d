"""`python -m sweep_sft.evaluate`: a trial's saved model, one of its checkpoints, or its MLflow
run's logged model evaluated again gives the trial's own final numbers; and a trial compared
with `eval.baseline_run_id` records the comparison."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from helpers import load_embedded, run_cli
from sweep_sft.config.compose import compose
from sweep_sft.errors import ConfigError
from sweep_sft.evaluate.__main__ import main
from sweep_sft.trial.run import run_trial

PER_TASK = (
    "val/loss/",
    "val/answer_logprob/",
    "task/exact_match/",
    "task/pass_at_4/",
    "task/sample_match/",
    "task/train_recall/",
)


@pytest.fixture(scope="module")
def greedy_data(tmp_path_factory, embedded_model_path, embedded_data_path):
    """Train and validation files from the embedded default whose every other reference is the
    base model's own 2-token greedy answer, so a barely trained model gets those right: exact
    match, pass@k and train recall are neither 0 nor 1, and a standalone evaluation that sampled
    other prompts or seeds would disagree with the trial."""
    import torch

    from sweep_sft.config.schema import EvalConfig
    from sweep_sft.data.records import first_per_task, load_jsonl
    from sweep_sft.evaluate.evaluator import Evaluator
    from sweep_sft.evaluate.generation import generate_answers

    torch.set_num_threads(1)
    model, tokenizer = load_embedded(embedded_model_path)
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    greedy = Evaluator(model, tokenizer, torch.device("cpu"), eot, EvalConfig(max_new_tokens=2, batch_size=64))
    root = tmp_path_factory.mktemp("greedy-data")
    files = {}
    for split, per_task in (("train", 16), ("validation", 4)):
        examples = first_per_task(load_jsonl(embedded_data_path / f"{split}.jsonl"), per_task)
        answers = generate_answers(greedy, examples)
        lines = []
        for i, (example, (answer,)) in enumerate(zip(examples, answers, strict=True)):
            messages = [dict(m) for m in example.messages]
            if i % 2 == 0 and answer:
                messages[-1]["content"] = answer
            lines.append(json.dumps({"task_type": example.task_type, "messages": messages}))
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("\n".join(lines) + "\n")
    return files


def overrides(folder, uri: str, data: dict, *extra: str) -> list[str]:
    return [
        "data=jsonl",
        f"data.mix.sources.files.train={data['train']}",
        f"data.mix.sources.files.val={data['validation']}",
        "lr=1e-9",  # the base model's greedy answers stay its answers
        "trainer.max_steps=4",
        "trainer.batch_size=16",
        "trainer.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.num_threads=1",
        "trainer.progress=false",
        "eval.max_new_tokens=2",
        "eval.temperature=1.5",
        "eval.train_recall_examples=6",
        "tracking.log_model=true",
        f"tracking.uri={uri}",
        f"output_dir={folder}",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, greedy_data):
    root = tmp_path_factory.mktemp("standalone")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_trial(compose(overrides(root / "trial", uri, greedy_data)))
    return root, uri, result, greedy_data


def evaluation(capsys, *args: str) -> dict:
    assert main(list(args)) == 0, capsys.readouterr().err
    path = re.search(r"results in (\S+) ", capsys.readouterr().out).group(1)
    record = json.loads(open(path).read())
    assert record["precision"] == "fp32"  # trainer.precision=auto, evaluated on CPU
    return record["metrics"]


def assert_same(evaluated: dict, final: dict, prefixes=PER_TASK, extra=("general_drop",)) -> None:
    keys = [k for k in final if k.startswith(prefixes)] + list(extra)
    assert len(keys) >= 8 * len(prefixes)  # every task_type of the embedded default
    for key in keys:
        assert evaluated[key] == pytest.approx(final[key], abs=1e-5), key


def test_the_trial_records_pass_at_k_and_train_recall_per_task(trained):
    _, _, result, _ = trained
    tasks = [k.removeprefix("val/loss/") for k in result.metrics if k.startswith("val/loss/")]
    for task in tasks:
        for prefix in PER_TASK:
            assert 0 <= result.metrics[f"{prefix}{task}"] <= 1 or prefix.startswith("val/")
    for prefix in ("task/exact_match/", "task/pass_at_4/", "task/sample_match/", "task/train_recall/"):
        values = [v for k, v in result.metrics.items() if k.startswith(prefix)]
        assert len(values) == 8 and 0 < sum(values) < 8, prefix  # neither all wrong nor all right
    assert (trained[0] / "trial" / "model" / "config.json").is_file()


def test_the_trial_folder_evaluates_to_the_trials_own_numbers(trained, capsys):
    root, _, result, _ = trained
    assert_same(evaluation(capsys, str(root / "trial")), result.metrics)


def test_a_checkpoint_evaluates_to_the_loss_logged_at_its_step(trained, capsys):
    root, _, result, _ = trained
    metrics = evaluation(capsys, str(root / "trial" / "checkpoints" / "step-2"), "--out", str(root / "step2.json"))
    at_step_2 = {
        key: dict((int(s), v) for s, v in points)[2]
        for key, points in result.series.items()
        if key.startswith("val/loss") and any(int(s) == 2 for s, _ in points)
    }
    assert len(at_step_2) == 9  # overall and 8 task_types
    for key, value in at_step_2.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_overrides_change_the_evaluation(trained, capsys):
    root, _, _, _ = trained
    metrics = evaluation(
        capsys, str(root / "trial"), "eval.pass_k=2", "eval.general_probe=false", "--out", str(root / "k2.json")
    )
    assert "task/pass_at_2" in metrics and "task/pass_at_4" not in metrics and "general_drop" not in metrics


def test_a_run_id_evaluates_its_logged_model_when_the_folder_is_gone(trained, capsys, monkeypatch, tmp_path):
    root, uri, result, _ = trained
    moved = root / "moved-away"
    (root / "trial").rename(moved)
    try:
        monkeypatch.chdir(tmp_path)
        metrics = evaluation(capsys, result.run_id, "--tracking-uri", uri)
        assert (tmp_path / "evaluation.json").is_file()
        from sweep_sft.cache import cache_root

        specs = [json.loads(p.read_text()) for p in cache_root().glob("run-model-*/spec.json")]
        assert {"run_id": result.run_id, "tracking_uri": uri} in specs  # downloaded once, kept
        again = evaluation(capsys, result.run_id, "--tracking-uri", uri)  # from the cache: same numbers
        assert again == {**metrics, "time/eval_s": again["time/eval_s"]}
    finally:
        moved.rename(root / "trial")
    assert_same(metrics, result.metrics)


def test_bad_targets_are_named(trained, capsys, tmp_path):
    root, uri, _, _ = trained
    assert main([str(tmp_path / "nowhere-and-not-a-run"), "--tracking-uri", uri]) == 2
    assert "nowhere-and-not-a-run: neither a folder nor a run" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text((root / "trial" / "config.yaml").read_text())
    assert main([str(tmp_path)]) == 2
    assert "no model to evaluate: the trial saved no model/ (it failed" in capsys.readouterr().err
    config = (root / "trial" / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(config.replace("save_model: true", "save_model: false"))
    assert main([str(tmp_path)]) == 2
    assert "the trial ran with trainer.save_model=false and left no checkpoint" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text(config.replace("deepspeed: null", "deepspeed:\n  zero_stage: 3"))
    assert main([str(tmp_path)]) == 2
    assert "the trial ran under DeepSpeed ZeRO-3" in capsys.readouterr().err
    assert main([str(root / "trial"), "eval.pass_k=-1", "--out", str(tmp_path / "x.json")]) == 2
    assert "eval.pass_k must be >= 0" in capsys.readouterr().err


def test_a_trial_with_a_baseline_records_the_comparison(trained, capsys):
    root, uri, _, data = trained
    baseline = run_trial(compose(overrides(root / "learned", uri, data, "lr=3e-3")))
    # The same trial at a learning rate too small to learn: its losses rise against the baseline.
    candidate = run_trial(
        compose(overrides(root / "cand", uri, data, "lr=1e-9", f"eval.baseline_run_id={baseline.run_id}"))
    )
    out = capsys.readouterr().out
    assert "comparison with the baseline (eval.baseline_run_id)" in out
    text = (root / "cand" / "comparison.txt").read_text()
    assert f"baseline {baseline.run_id}" in text and "regressions:" in text
    run = MlflowClient(tracking_uri=uri).get_run(candidate.run_id)
    assert run.data.tags["compare.baseline"] == baseline.run_id
    regressed = run.data.tags["compare.regressions"]
    assert regressed != "none" and "val loss" in text
    assert candidate.metrics["compare/regressions"] == len(regressed.split(", "))
    task = "classification/sentiment"
    delta = candidate.metrics[f"compare/delta/val_loss/{task}"]
    assert delta == pytest.approx(candidate.metrics[f"val/loss/{task}"] - baseline.metrics[f"val/loss/{task}"])
    assert delta > 0
    # Standalone evaluation against a baseline: exit 1 on the regression.
    assert main([str(root / "cand"), f"eval.baseline_run_id={root / 'learned'}", "--out", str(root / "c.json")]) == 1
    assert "regressions:" in capsys.readouterr().out


def test_an_unknown_baseline_fails_before_training(tmp_path, greedy_data):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match="eval.baseline_run_id=0123abc: .*neither a trial folder nor a run"):
        run_trial(compose(overrides(tmp_path / "t", uri, greedy_data, "eval.baseline_run_id=0123abc")))
    assert not (tmp_path / "t" / "metrics.json").exists()


EVIL = '''from pathlib import Path
Path({marker!r}).write_text("ran")  # what any code in a model folder could do, once imported
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    model_type = "evil_llama"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
'''


def _remote_code_trial(trained, tmp_path, model_type: str):
    """A copy of the trial whose config.yaml says trust_remote_code=true and whose model's
    config.json maps the Auto classes to its own evil.py, which writes a marker when imported."""
    import shutil

    root = trained[0]
    folder = tmp_path / f"trial-{model_type}"
    shutil.copytree(root / "trial" / "model", folder / "model")
    config = (root / "trial" / "config.yaml").read_text()
    assert "trust_remote_code: false" in config
    (folder / "config.yaml").write_text(config.replace("trust_remote_code: false", "trust_remote_code: true"))
    marker = tmp_path / f"marker-{model_type}"
    (folder / "model" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    model_config = json.loads((folder / "model" / "config.json").read_text())
    model_config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    model_config["model_type"] = model_type
    (folder / "model" / "config.json").write_text(json.dumps(model_config))
    return folder, marker


def _evaluate_cli(tmp_path, *args: str, env: dict | None = None):
    # transformers copies a model's code into its modules cache before importing it: one per test.
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1", **(env or {})}
    quick = ["eval.generate=false", "eval.general_probe=false", "trainer.num_threads=1"]
    return run_cli(*args, *quick, module="sweep_sft.evaluate", cwd=tmp_path, env=env)


@pytest.mark.slow
def test_a_models_own_code_runs_only_when_this_command_line_trusts_it(trained, tmp_path):
    """The trial's config.yaml (a folder or a run anyone could write) saying trust_remote_code=true
    does not make the evaluating machine import the model's Python."""
    # A known model type with an auto_map: loaded with transformers' own Llama, evil.py untouched.
    folder, marker = _remote_code_trial(trained, tmp_path, "llama")
    proc = _evaluate_cli(tmp_path, str(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), "the model's own code ran"
    assert "says model.trust_remote_code=true; the model's own code runs only when this command says so" in (
        proc.stderr
    )
    # A model that cannot load without its code: a clear error, still nothing run.
    folder, marker = _remote_code_trial(trained, tmp_path, "evil_llama")
    proc = _evaluate_cli(tmp_path, str(folder))
    assert proc.returncode == 2 and not marker.exists()
    assert f"error: {folder / 'model'}: the model needs its own Python code to load" in proc.stderr
    assert "(model.trust_remote_code=true)" in proc.stderr and "Traceback" not in proc.stderr
    # Asked for on the command line: allowed.
    proc = _evaluate_cli(tmp_path, str(folder), "model.trust_remote_code=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.read_text() == "ran"


def test_a_hub_kernel_named_by_the_trials_config_is_not_fetched(trained, capsys, tmp_path):
    root = trained[0]
    config = (root / "trial" / "config.yaml").read_text()
    assert "attn_implementation: sdpa" in config
    hub = config.replace("attn_implementation: sdpa", "attn_implementation: evil/kernel")
    (tmp_path / "config.yaml").write_text(hub)
    (tmp_path / "model").symlink_to(root / "trial" / "model")
    assert main([str(tmp_path), "--out", str(tmp_path / "e.json")]) == 2
    assert "model.attn_implementation=evil/kernel names a kernel on the hub" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_whose_logged_config_trusts_remote_code_does_not_run_it(trained, tmp_path):
    """The same through an MLflow run (anyone who can log to an unauthenticated server): its
    config.yaml and model/ artifacts say to run the model's code; evaluating the run id does not."""
    import mlflow

    folder, marker = _remote_code_trial(trained, tmp_path, "evil_llama")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("planted"))
    client.log_artifact(run.info.run_id, str(folder / "config.yaml"))
    client.log_artifacts(run.info.run_id, str(folder / "model"), "model")
    client.set_terminated(run.info.run_id)
    assert mlflow.get_tracking_uri() != uri  # nothing above changed the process's default store
    proc = _evaluate_cli(tmp_path, run.info.run_id, "--tracking-uri", uri, env={"SWEEP_SFT_CACHE": str(tmp_path)})
    assert proc.returncode == 2 and not marker.exists(), proc.stderr[-3000:]
    assert "the model needs its own Python code to load" in proc.stderr and "Traceback" not in proc.stderr
