"""model.lora: its values checked with the full key, an r sweep composing into LoRA trials, and
what LoRA cannot run with (ZeRO-3; QLoRA without CUDA or bitsandbytes) named before training."""

from __future__ import annotations

import importlib.util

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweep_sft import lora
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError


def test_lora_is_off_by_default_and_alpha_defaults_to_twice_r() -> None:
    assert validate(compose([])).model.lora.enabled is False
    config = validate(compose(["model.lora.r=16"]))
    assert config.model.lora.enabled and config.model.lora.scale_alpha == 32.0
    assert validate(compose(["model.lora.r=16", "model.lora.alpha=8"])).model.lora.scale_alpha == 8.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lora.r=0"], "model.lora.r must be >= 1"),
        (["model.lora.r=8", "model.lora.alpha=0"], "model.lora.alpha must be a finite number > 0"),
        (["model.lora.r=8", "model.lora.dropout=1.0"], r"model.lora.dropout must be in \[0, 1\)"),
        (["model.lora.r=8", "model.lora.dropout=-0.1"], "model.lora.dropout must be a finite number in"),
        (["model.lora.r=8", "model.lora.target_modules=[]"], "model.lora.target_modules: expected"),
        (["model.lora.r=8", "model.lora.target_modules=[all-linear,q_proj]"], "all-linear already names"),
        (["model.lora.r=8", "model.lora.quantize=8bit"], "model.lora.quantize must be one of none, 4bit"),
        (["model.lora.merge=true"], "need LoRA on: set model.lora.r"),
        (["model.lora.quantize=4bit"], "need LoRA on: set model.lora.r"),
        (["model.lora.r=8", "model.lora.merge=true", "model.lora.quantize=4bit"], "rounds the adapter"),
    ],
)
def test_bad_lora_values_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


def test_an_r_sweep_composes_into_one_lora_trial_per_rank() -> None:
    (override,) = OverridesParser.create().parse_overrides(["model.lora.r=8,16,64"])
    values = list(override.sweep_string_iterator())
    configs = [validate(compose([f"model.lora.r={v}"])).model.lora for v in values]
    assert [(c.r, c.scale_alpha) for c in configs] == [(8, 16.0), (16, 32.0), (64, 128.0)]


def test_lora_with_deepspeed_is_refused_before_training() -> None:
    # At validation, so a sweep's preflight names it before any job starts.
    with pytest.raises(ConfigError, match="model.lora.r with deepspeed.zero_stage=3: not supported"):
        validate(compose(["model.lora.r=8", "deepspeed=zero3"]))
    with pytest.raises(ConfigError, match="model.lora.r with deepspeed.zero_stage=2: not supported yet"):
        validate(compose(["model.lora.r=8", "deepspeed=zero2"]))
    lora.check(validate(compose(["deepspeed=zero3"])))  # full fine-tuning: DeepSpeed's own checks only


def test_qlora_without_cuda_names_the_key_and_what_is_missing() -> None:
    config = validate(compose(["model.lora.r=8", "model.lora.quantize=4bit", "trainer.device=cpu"]))
    with pytest.raises(ConfigError, match=r"model.lora.quantize=4bit \(QLoRA\) needs .*a CUDA device") as err:
        lora.check(config)
    assert ("bitsandbytes" in str(err.value)) == (importlib.util.find_spec("bitsandbytes") is None)
