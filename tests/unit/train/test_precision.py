"""trainer.precision=auto resolved for the trial's device, the optimizer fused on CUDA, and the
gpu marker's skip."""

from __future__ import annotations

import pytest
import torch

from helpers import load_embedded
from sweep_sft import modeling
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.data.batches import collate
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.train.engine import deepspeed_json
from sweep_sft.train.loop import backward_window
from sweep_sft.train.optimizer import build_optimizer


def _never() -> bool:
    raise AssertionError("bf16 support asked for a device that is not CUDA")


def test_auto_is_fp32_on_cpu_without_asking_for_bf16():
    assert modeling.resolve_precision("auto", torch.device("cpu"), _never) == "fp32"
    assert modeling.resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize(("supported", "want"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support(supported, want):
    assert modeling.resolve_precision("auto", torch.device("cuda", 1), lambda: supported) == want


@pytest.mark.parametrize("explicit", ["fp32", "bf16"])
def test_explicit_precision_is_kept(explicit):
    for device in ("cpu", "cuda"):
        assert modeling.resolve_precision(explicit, device, lambda: False) == explicit


def test_default_config_is_auto_and_resolves_for_consumers():
    assert validate(compose([])).trainer.precision == "auto"
    cfg = validate(compose(["deepspeed=zero2"]))
    resolved = modeling.with_precision(cfg, "bf16")
    assert resolved.trainer.precision == "bf16" and cfg.trainer.precision == "auto"
    assert modeling.with_precision(cfg, "auto") is cfg
    # DeepSpeed is handed the resolved precision, never "auto".
    assert deepspeed_json(resolved, 1)["bf16"] == {"enabled": True}
    assert deepspeed_json(modeling.with_precision(cfg, "fp32"), 1)["bf16"] == {"enabled": False}


def test_evaluator_resolves_auto_for_its_device(embedded_model_path):
    model, tokenizer = load_embedded(embedded_model_path)
    ev = Evaluator.for_trial(model, tokenizer, torch.device("cpu"), validate(compose([])))
    assert ev.precision == "fp32"


def test_optimizer_on_cpu_is_not_fused_and_keeps_two_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, validate(compose(["optimizer.weight_decay=0.1"])))
    assert not opt.defaults["fused"]
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip that applies without CUDA")
def test_gpu_tests_are_skipped_without_cuda(request):
    (item,) = [i for i in request.session.items if i.name == "test_auto_precision_and_fused_adamw_step_on_cuda"]
    assert [m.kwargs.get("reason") for m in item.iter_markers("skip")] == ["needs a CUDA device"]


@pytest.mark.gpu
def test_auto_precision_and_fused_adamw_step_on_cuda(embedded_model_path, tokenizer, embedded_data_path):
    from sweep_sft.data.records import load_jsonl
    from sweep_sft.data.tokenize import tokenize

    device = torch.device("cuda")
    assert modeling.resolve_precision("auto", device) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    cfg = validate(compose(["trainer.device=cuda"]))
    model = load_embedded(embedded_model_path)[0].to(device)
    optimizer = build_optimizer(model, cfg)
    assert optimizer.defaults["fused"] is True
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    examples = load_jsonl(embedded_data_path / "train.jsonl")[:8]
    rows = tokenize(examples, tokenizer, "all_assistant", 128, "prompt", eot)[0]
    batch = collate(rows, {t: 0 for t in {r.task_type for r in rows}}, tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = backward_window(model, [batch], device, modeling.resolve_precision("auto", device))
    optimizer.step()
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in model.parameters()), "master weights stay fp32"
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters()), "the step changed nothing"
