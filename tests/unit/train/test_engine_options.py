"""What build_engine does to the model: gradient checkpointing and torch.compile change neither
the first step's loss nor its gradients."""

from __future__ import annotations

import pytest
import torch

from helpers import load_embedded
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.data.batches import collate
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import tokenize
from sweep_sft.errors import ConfigError
from sweep_sft.train.distributed import DistEnv
from sweep_sft.train.engine import build_engine
from sweep_sft.train.loop import backward_window
from sweep_sft.train.optimizer import build_optimizer


@pytest.fixture(scope="module")
def batches(tokenizer, embedded_data_path):
    examples = load_jsonl(embedded_data_path / "train.jsonl")[:8]
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    rows = tokenize(examples, tokenizer, "all_assistant", 128, "prompt", eot)[0]
    index = {t: i for i, t in enumerate(sorted({r.task_type for r in rows}))}
    return [collate(rows[i : i + 4], index, tokenizer.pad_token_id) for i in (0, 4)]


def first_step(model_path, batches, *overrides):
    """(loss, gradients, the engine's model) of one window through build_engine under `overrides`."""
    torch.set_num_threads(1)
    cfg = validate(compose(["trainer.precision=fp32", *overrides]))
    model = load_embedded(model_path)[0]
    engine = build_engine(model, build_optimizer(model, cfg), None, cfg, DistEnv())
    engine.model.train()  # checkpointing recomputes only in training mode
    loss = backward_window(engine.model, batches, torch.device("cpu"), "fp32")
    return loss, {n: p.grad.clone() for n, p in engine.model.named_parameters()}, engine.model


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(embedded_model_path, batches):
    loss, grads, _ = first_step(embedded_model_path, batches)
    loss_ckpt, grads_ckpt, model = first_step(embedded_model_path, batches, "trainer.gradient_checkpointing=true")
    assert model.is_gradient_checkpointing, "build_engine did not enable checkpointing"
    assert loss_ckpt == pytest.approx(loss, abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compile_gives_the_same_loss_and_keeps_the_saved_model(embedded_model_path, batches, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    loss, grads, plain = first_step(embedded_model_path, batches[:1])
    # aot_eager: Dynamo's graph and AOTAutograd's joint forward/backward, as with the default backend,
    # without Inductor's C++ build (minutes on two CPU cores); what in-place compiling changes is the same.
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_(self, backend="aot_eager", **kw))
    loss_c, grads_c, model = first_step(embedded_model_path, batches[:1], "trainer.compile=true")
    assert model._compiled_call_impl is not None, "build_engine did not compile the model"
    assert loss_c == pytest.approx(loss, abs=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.save_pretrained(tmp_path / "compiled")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compiled")
    assert reloaded.state_dict().keys() == plain.state_dict().keys()


def test_compile_with_deepspeed_is_refused_naming_the_keys(embedded_model_path):
    cfg = validate(compose(["deepspeed=zero2", "trainer.compile=true"]))
    with pytest.raises(ConfigError, match=r"trainer\.compile.*deepspeed"):
        build_engine(torch.nn.Linear(2, 2), None, None, cfg, DistEnv())
