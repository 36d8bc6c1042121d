"""What the GPU-minded trainer options change and what they must not: trainer.precision=auto
resolves to one precision that every consumer sees, the optimizer, and gradient checkpointing
and torch.compile giving the very loss and gradients of the plain step."""

from __future__ import annotations

import time

import pytest
import torch

from helpers import load_embedded
from sweep_sft import modeling
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.data.batches import collate
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import tokenize
from sweep_sft.errors import ConfigError
from sweep_sft.train import loop
from sweep_sft.train.distributed import DistEnv
from sweep_sft.train.engine import build_engine
from sweep_sft.train.loop import backward_window, train
from sweep_sft.train.optimizer import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows(tokenizer, embedded_data_path):
    examples = load_jsonl(embedded_data_path / "train.jsonl")[:8]
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return tokenize(examples, tokenizer, "all_assistant", 256, "prompt", eot)[0]


@pytest.mark.parametrize(
    ("precision", "device", "bf16_supported", "want"),
    [
        ("auto", "cpu", True, "fp32"),
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp32"),  # a pre-Ampere GPU: no bf16
        ("auto", "cuda:1", True, "bf16"),
        ("bf16", "cpu", False, "bf16"),  # asked for: kept, as before auto existed
        ("fp32", "cuda", True, "fp32"),
    ],
)
def test_precision_auto_is_bf16_on_a_cuda_device_with_bf16_else_fp32(
    monkeypatch, precision, device, bf16_supported, want
):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert modeling.resolve_precision(precision, torch.device(device)) == want


def test_precision_defaults_to_auto_and_with_precision_copies():
    config = validate(compose([]))
    assert config.trainer.precision == "auto"
    resolved = modeling.with_precision(config, "bf16")
    assert resolved.trainer.precision == "bf16" and config.trainer.precision == "auto"
    assert resolved.trainer.batch_size == config.trainer.batch_size and resolved.model == config.model
    assert modeling.with_precision(resolved, "bf16") is resolved
    with pytest.raises(ConfigError, match="trainer.precision"):
        validate(compose(["trainer.precision=fp16"]))


def test_train_hands_the_loss_and_the_engine_the_resolved_precision(
    monkeypatch, embedded_model_path, tokenizer, rows
):
    """With auto resolved to bf16 (as on a GPU), the loss autocasts and the engine (DeepSpeed's
    JSON reads it) is built with bf16: no consumer is left with `auto`."""
    torch.set_num_threads(1)
    monkeypatch.setattr(modeling, "resolve_precision", lambda p, d: "bf16" if p == "auto" else p)
    seen = {}
    real_backward, real_engine = loop.backward_window, loop.build_engine

    def spy_backward(model, batches, device, precision, *a, **k):
        seen["loss"] = precision
        return real_backward(model, batches, device, precision, *a, **k)

    def spy_engine(model, optimizer, scheduler, cfg, env):
        seen["engine"] = cfg.trainer.precision
        return real_engine(model, optimizer, scheduler, cfg, env)

    monkeypatch.setattr(loop, "backward_window", spy_backward)
    monkeypatch.setattr(loop, "build_engine", spy_engine)
    cfg = validate(compose(["trainer.max_steps=1", "trainer.batch_size=8", "trainer.progress=false"]))
    model = load_embedded(embedded_model_path)[0]
    tasks = sorted({r.task_type for r in rows})
    train(model, rows, tasks, cfg, CPU, tokenizer.pad_token_id, lambda m, s: None, lambda s: {})
    assert seen == {"loss": "bf16", "engine": "bf16"}
    assert cfg.trainer.precision == "auto"  # the caller's config is not changed


def test_adamw_on_cpu_is_torch_default_not_fused_with_two_groups(embedded_model_path):
    model = load_embedded(embedded_model_path)[0]
    optimizer = build_optimizer(model, validate(compose(["optimizer.weight_decay=0.1"])))
    assert optimizer.defaults["fused"] is None
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable


def first_step(model_path, tokenizer, rows, *overrides):
    """Step 1's loss and gradients through build_engine with `overrides`, and how often the first
    decoder layer's MLP ran forward (twice with checkpointing: once more in backward)."""
    torch.manual_seed(0)
    model = load_embedded(model_path)[0]
    cfg = validate(compose(["trainer.batch_size=8", *overrides]))
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    engine = build_engine(model, optimizer, scheduler, cfg, DistEnv())
    calls = []
    model.model.layers[0].mlp.register_forward_hook(lambda *a: calls.append(1))
    index = {t: i for i, t in enumerate(sorted({r.task_type for r in rows}))}
    batches = [collate(rows, index, tokenizer.pad_token_id, "packed", 256)]
    model.train()
    loss = backward_window(engine.model, batches, CPU, "fp32")
    return model, loss, {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(embedded_model_path, tokenizer, rows):
    torch.set_num_threads(1)
    _, loss, grads, calls = first_step(embedded_model_path, tokenizer, rows)
    model, loss_gc, grads_gc, calls_gc = first_step(
        embedded_model_path, tokenizer, rows, "trainer.gradient_checkpointing=true"
    )
    assert model.is_gradient_checkpointing and (calls, calls_gc) == (1, 2)  # it did recompute
    assert loss_gc == pytest.approx(loss, abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_gc[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compile_gives_the_same_step_and_keeps_the_module(embedded_model_path, tokenizer, rows):
    """torch.compile in place (inductor: a C++ compile on CPU): the same loss and gradients, the
    same module and state_dict keys (checkpoints and save_pretrained unchanged)."""
    torch.set_num_threads(1)
    plain, loss, grads, _ = first_step(embedded_model_path, tokenizer, rows)
    started = time.perf_counter()
    model, loss_c, grads_c, _ = first_step(embedded_model_path, tokenizer, rows, "trainer.compile=true")
    print(f"compiled step: {time.perf_counter() - started:.1f}s, loss {loss_c:.6f} vs {loss:.6f}")
    assert model._compiled_call_impl is not None  # compiled, in place
    assert list(model.state_dict()) == list(plain.state_dict())
    assert loss_c == pytest.approx(loss, abs=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_compile_with_deepspeed_is_refused_before_training(tmp_path):
    from sweep_sft.trial.checks import check_early

    config = validate(compose(["trainer.compile=true", "deepspeed=zero2"]))
    with pytest.raises(ConfigError, match=r"trainer\.compile=true: not supported with DeepSpeed"):
        check_early(config, tmp_path / "trial")
