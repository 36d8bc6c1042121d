"""A LoRA trial end to end on the embedded model: only the adapters train, the adapter is saved
and evaluates to the trial's own validation loss, checkpoints hold the adapter alone, and a
killed trial resumes to the same weights and losses (saving merged, as a plain model)."""

from __future__ import annotations

import json
import re

import pytest

from helpers import load_embedded
from sweep_sft.config.compose import compose
from sweep_sft.evaluate.__main__ import main
from sweep_sft.names import CHECKPOINT_WEIGHTS, MODEL_DIR
from sweep_sft.train.checkpoint_files import load_file
from sweep_sft.trial.run import run_trial

pytestmark = pytest.mark.slow


class Killed(Exception):
    """A hard kill after a step, before its checkpoint check."""


@pytest.fixture(scope="module")
def lora_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return root, [
        "model.lora.r=8",
        "data.max_train_examples=64",
        "data.max_val_per_task=4",
        "trainer.max_steps=4",
        "trainer.batch_size=16",
        "trainer.log_every=1",
        "trainer.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.num_threads=1",
        "trainer.progress=false",
        "eval.max_new_tokens=4",
        "eval.pass_k=2",
        "eval.pass_k_examples=1",
        "eval.train_recall_examples=2",
        "tracking.enabled=false",
    ]


@pytest.fixture(scope="module")
def straight(lora_overrides):
    """The uninterrupted LoRA trial, and its model as trained (captured from the trial)."""
    from sweep_sft.trial import run

    root, overrides = lora_overrides
    models = []
    original = run.Evaluator.for_trial
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run.Evaluator, "for_trial", lambda model, *a: models.append(model) or original(model, *a))
        result = run_trial(compose(overrides + [f"output_dir={root / 'straight'}"]))
    return root / "straight", result, models[0]


def evaluated(capsys, *args: str) -> dict:
    assert main(list(args)) == 0, capsys.readouterr().err
    path = re.search(r"results in (\S+) ", capsys.readouterr().out).group(1)
    return json.loads(open(path).read())["metrics"]


def test_only_the_adapters_train(straight):
    import torch

    _, _, model = straight
    base = load_embedded()[0].state_dict()
    state = model.state_dict()
    frozen = {k: v for k, v in state.items() if "lora_" not in k}
    assert len(frozen) == len(base)
    for key, value in frozen.items():
        assert torch.equal(value, base[key.removeprefix("base_model.model.").replace(".base_layer", "")]), key
    assert all(state[k].abs().sum() > 0 for k in state if "lora_B" in k)  # trained away from B = 0


def test_the_adapter_is_saved_and_evaluates_to_the_trials_loss(straight, capsys):
    folder, result, _ = straight
    names = {p.name for p in (folder / MODEL_DIR).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "config.json" not in names and "model.safetensors" not in names
    metrics = evaluated(capsys, str(folder))
    # Generation (exact match, pass@k, train recall) and the general probe ran on the adapter model too.
    keys = [k for k in result.metrics if k.startswith(("val/loss", "task/", "general"))]
    assert {"task/exact_match", "task/pass_at_2", "general/score", "general/base_score"} <= set(keys)
    for key in keys:
        assert metrics[key] == pytest.approx(result.metrics[key], abs=1e-5), key


def test_a_lora_checkpoint_holds_the_adapter_and_evaluates_to_its_step(straight, capsys):
    folder, result, _ = straight
    weights = load_file(folder / "checkpoints" / "step-2" / CHECKPOINT_WEIGHTS)
    assert weights and all("lora_" in k for k in weights)
    metrics = evaluated(capsys, str(folder / "checkpoints" / "step-2"), "--out", str(folder / "step2.json"))
    at_2 = dict((int(s), v) for s, v in result.series["val/loss"])[2]
    assert metrics["val/loss"] == pytest.approx(at_2, abs=1e-5)


def test_a_lora_checkpoint_refuses_another_rank(straight, lora_overrides):
    from sweep_sft.config.validate import validate
    from sweep_sft.errors import ConfigError
    from sweep_sft.train.checkpoint import check_resume

    folder, _, _ = straight
    _, overrides = lora_overrides
    with pytest.raises(ConfigError, match=r"different training config \(model.lora.r: 8 -> 16\)"):
        check_resume(folder / "checkpoints" / "step-2", validate(compose(overrides + ["model.lora.r=16"])))


def test_a_killed_lora_trial_resumes_to_the_same_weights_and_saves_merged(straight, lora_overrides, capsys):
    from sweep_sft.train.checkpoint import Checkpoints

    root, overrides = lora_overrides
    _, result, _ = straight
    overrides = overrides + [f"output_dir={root / 'killed'}"]
    original = Checkpoints.after_step

    def after_step(self, model, optimizer, scheduler, position):
        if position.step == 3:
            raise Killed
        return original(self, model, optimizer, scheduler, position)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpoints, "after_step", after_step)
        with pytest.raises(Killed):
            run_trial(compose(overrides))
    # A changed model.lora.merge changes what is saved, not the training: the resume goes on.
    resumed = run_trial(compose(overrides + ["model.lora.merge=true"]))
    assert f"resumed from {root / 'killed' / 'checkpoints' / 'step-2'} at step 2" in capsys.readouterr().err
    for key in ("train/loss", "val/loss"):
        assert [v for _, v in resumed.series[key]] == pytest.approx([v for _, v in result.series[key]], abs=1e-6)
    names = {p.name for p in (root / "killed" / MODEL_DIR).iterdir()}
    assert "config.json" in names and "adapter_config.json" not in names  # a plain model
    metrics = evaluated(capsys, str(root / "killed"))
    assert metrics["val/loss"] == pytest.approx(result.metrics["val/loss"], abs=1e-5)


@pytest.mark.gpu
def test_a_qlora_trial_trains_a_4bit_base(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("QLoRA needs a CUDA device")
    bnb = pytest.importorskip("bitsandbytes")
    from sweep_sft.trial import run

    models = []
    original = run.Evaluator.for_trial
    overrides = [
        "model.lora.r=8",
        "model.lora.quantize=4bit",
        "trainer.device=cuda",
        "data.max_train_examples=64",
        "data.max_val_per_task=4",
        "trainer.max_steps=2",
        "trainer.batch_size=16",
        "trainer.eval_every=0",
        "trainer.progress=false",
        "trainer.gradient_checkpointing=true",
        "eval.generate=false",
        "tracking.enabled=false",
        f"output_dir={tmp_path / 'qlora'}",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run.Evaluator, "for_trial", lambda model, *a: models.append(model) or original(model, *a))
        result = run_trial(compose(overrides))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in models[0].modules())
    assert result.metrics["val/loss"] < result.series["val/loss"][0][1]
    assert (tmp_path / "qlora" / MODEL_DIR / "adapter_model.safetensors").is_file()
    # Evaluated over the unquantized base (as the adapter is used once trained): close, not equal.
    metrics = evaluated(capsys, str(tmp_path / "qlora"))
    assert metrics["val/loss"] == pytest.approx(result.metrics["val/loss"], rel=0.05)
