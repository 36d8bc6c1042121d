"""model.attn_implementation refused before training: packing with one that cannot keep packed
examples apart (at validation), one that is not installed (before the data is read), one that
cannot train on the trial's device."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

import pytest

from sweep_sft import attention
from sweep_sft.config.compose import compose
from sweep_sft.config.schema import ModelConfig
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError
from sweep_sft.modeling import check_model


@pytest.fixture
def installed(monkeypatch):
    """installed(*modules, **versions): only these of the optional packages are found."""

    def pretend(*modules: str, **versions: str) -> None:
        find_spec, version = importlib.util.find_spec, importlib.metadata.version
        optional = {"flash_attn", "flash_attn_interface", "kernels"}

        def fake_find_spec(name, *args):
            if name in optional:
                return find_spec("json") if name in modules else None
            return find_spec(name, *args)

        def fake_version(dist):
            key = dist.replace("-", "_")
            if key in versions:
                return versions[key]
            if dist.startswith("flash"):
                raise importlib.metadata.PackageNotFoundError(dist)
            return version(dist)

        monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
        monkeypatch.setattr(importlib.metadata, "version", fake_version)

    return pretend


@pytest.mark.parametrize("name", ["paged|eager", "kernels-community/flash-attn2", "flash_attention_4", "my_attention"])
def test_packing_with_an_implementation_that_cannot_keep_examples_apart_is_refused(name):
    cfg = compose(["data.packing=packed", f"model.attn_implementation='{name}'"])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert f"model.attn_implementation={name} with data.packing=packed" in message
    assert "eager, sdpa, flex_attention, flash_attention_2, flash_attention_3, or data.packing=none" in message


@pytest.mark.parametrize("name", attention.PACKABLE)
def test_packing_is_accepted_with_every_implementation_that_keeps_examples_apart(name):
    config = validate(compose(["data.packing=packed", f"model.attn_implementation={name}"]))
    assert config.model.attn_implementation == name


def test_without_packing_any_implementation_passes_validation():
    assert validate(compose(["model.attn_implementation='org/some-kernel'"])).data.packing == "none"


def test_flash_attention_not_installed_is_named(installed):
    installed()
    with pytest.raises(ConfigError) as caught:
        check_model(ModelConfig(attn_implementation="flash_attention_2"))
    message = str(caught.value)
    assert message.startswith("model.attn_implementation=flash_attention_2: needs the flash-attn>=2.3.3 package")
    assert "Installed: eager, sdpa, flex_attention, paged|eager" in message
    with pytest.raises(ConfigError, match=re.escape("needs the flash-attn-3 package (import flash_attn_interface)")):
        attention.check_installed("flash_attention_3")


def test_flash_attention_installed_passes(installed):
    installed("flash_attn", flash_attn="2.7.4")
    attention.check_installed("flash_attention_2")
    assert "flash_attention_2" in attention.available()
    with pytest.raises(ConfigError, match="flash_attention_4: needs the flash-attn-4 package"):
        attention.check_installed("flash_attention_4")  # same import name, another distribution
    installed("flash_attn", flash_attn="2.3.2")  # older than transformers accepts
    with pytest.raises(ConfigError, match="flash_attention_2"):
        attention.check_installed("flash_attention_2")
    installed("kernels")  # transformers falls back to the hub's build
    attention.check_installed("flash_attention_3")


def test_flex_attention_needs_torch_2_5(installed):
    installed(torch="2.4.1")
    message = "model.attn_implementation=flex_attention: needs torch>=2.5; installed: torch 2.4.1"
    with pytest.raises(ConfigError, match=re.escape(message)):
        attention.check_installed("flex_attention")
    installed(torch="2.13.0+cpu")
    attention.check_installed("flex_attention")


def test_an_unknown_implementation_lists_the_installed_ones(installed):
    installed()
    message = (
        "model.attn_implementation=flash: unknown attention implementation; "
        "expected one of eager, sdpa, flex_attention, paged|eager (installed here), or a hub kernel org/repo"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        attention.check_installed("flash")
    message = "model.attn_implementation=org/kernel: a hub kernel (org/repo) needs the `kernels` package"
    with pytest.raises(ConfigError, match=re.escape(message)):
        attention.check_installed("org/kernel")
    installed("kernels")
    attention.check_installed("org/kernel")


@pytest.mark.parametrize(
    ("name", "device", "message"),
    [
        ("flash_attention_2", "cpu", "FlashAttention runs on CUDA GPUs only"),
        ("flash_attention_3", "cpu", "FlashAttention runs on CUDA GPUs only"),
        ("flex_attention", "cpu", "flex_attention has no backward pass on CPU"),
    ],
)
def test_an_implementation_that_cannot_train_on_the_device_is_refused(tmp_path, name, device, message):
    from sweep_sft.trial.checks import check_early

    config = validate(compose([f"model.attn_implementation={name}", f"trainer.device={device}"]))
    with pytest.raises(ConfigError, match=re.escape(f"model.attn_implementation={name}: ") + ".*" + re.escape(message)):
        attention.check_device(name, device)
    if name == "flex_attention":  # installed here: check_early reaches the device check
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_early(config, tmp_path / "trial")
    attention.check_device(name, "cuda")


@pytest.mark.parametrize("name", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_in_fp32_is_refused_naming_the_precision(name) -> None:
    # fp32 weights reach flash_attn as fp32 without autocast, which it rejects mid-trial.
    with pytest.raises(ConfigError, match=re.escape(f"model.attn_implementation={name}: ") + ".*trainer.precision"):
        attention.check_device(name, "cuda", "fp32")
    attention.check_device(name, "cuda", "bf16")
    attention.check_device(name, "cuda", "auto")  # resolved (and checked again) once torch sees the device
    attention.check_device("sdpa", "cuda", "fp32")
