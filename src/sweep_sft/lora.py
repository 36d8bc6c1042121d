"""LoRA adapters through peft (model.lora, docs/lora.md): wrapped right after the model loads,
checkpointed as their trainable weights, saved as an adapter folder (or merged), and loaded back
for evaluation over the trial's own base model. peft is imported only when LoRA is on."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sweep_sft.config.lora import ALL_LINEAR, LoraConfig
from sweep_sft.config.schema import Config, ModelConfig
from sweep_sft.errors import ConfigError, DataError

ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes beside the weights
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BNB_DOCS = "pip install bitsandbytes on a machine with an NVIDIA GPU"


def check(config: Config) -> None:
    """What QLoRA needs of this machine, named before the data is read or torch imported (LoRA
    with DeepSpeed is refused when the config is validated: config.lora.check_with)."""
    lora = config.model.lora
    if not lora.enabled:
        return
    if lora.quantize == "4bit":
        missing = []
        if importlib.util.find_spec("bitsandbytes") is None:
            missing.append(f"the bitsandbytes package ({BNB_DOCS})")
        if config.trainer.device == "cpu":
            missing.append("a CUDA device (trainer.device=cpu)")
        if missing:
            raise ConfigError(f"model.lora.quantize=4bit (QLoRA) needs {'; '.join(missing)}")


def without(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with LoRA off: the base model alone (for loading a saved adapter or merged model onto)."""
    return replace(cfg, lora=LoraConfig())


def apply(cfg: ModelConfig, model, device, token_ids: list[int] | None = None):
    """The loaded model on `device`, wrapped with fresh LoRA adapters when model.lora.r is set
    (its base frozen; 4-bit NF4 with model.lora.quantize=4bit); one line of trainable/total
    parameters printed. LoRA off: the model as it is."""
    if not cfg.lora.enabled:
        return model.to(device)
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model = _placed(cfg, model, device)
    targets = check_targets(cfg.lora, model)
    peft_config = PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.scale_alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        # The rows of model.add_special_tokens train too (peft's trainable tokens): frozen, a new
        # end-of-turn token would keep its mean embedding and the model never learn to end a turn.
        trainable_token_indices=sorted(set(token_ids)) if token_ids else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(model, peft_config)
    trainable, total = parameter_counts(wrapped)
    print(
        f"LoRA r={cfg.lora.r} alpha={cfg.lora.scale_alpha:g}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    return wrapped


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def linear_names(model) -> list[str]:
    """The distinct leaf names of the model's Linear layers (q_proj, k_proj, ...)."""
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_targets(lora: LoraConfig, model) -> str | list[str]:
    """model.lora.target_modules as peft takes them; a name matching no module is named, with the
    Linear layers' names that do exist."""
    if lora.target_modules == [ALL_LINEAR]:
        return ALL_LINEAR
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in lora.target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise ConfigError(
            f"model.lora.target_modules: {', '.join(missing)} match no module of the model; its Linear layers are "
            f"{', '.join(linear_names(model))} (or give [{ALL_LINEAR}])"
        )
    return list(lora.target_modules)


def load_kwargs(cfg: ModelConfig, device) -> dict[str, Any]:
    """from_pretrained's dtype and placement: fp32 weights (moved to `device` after loading), or
    with model.lora.quantize=4bit the base loaded straight into 4-bit NF4 (bf16 compute) on the
    CUDA device, never as a full-precision copy first (a 70B base would not fit in fp32)."""
    import torch

    if cfg.lora.quantize != "4bit":
        return {"dtype": torch.float32}
    from transformers import BitsAndBytesConfig

    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"model.lora.quantize=4bit (QLoRA) needs a CUDA device; this trial runs on {device}")
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    return {"quantization_config": quantization, "dtype": torch.bfloat16, "device_map": {"": device}}


def _placed(cfg: ModelConfig, model, device):
    """The loaded model on `device`: moved there, or (4-bit, already placed by from_pretrained)
    prepared for k-bit training (norms in fp32); gradient checkpointing stays
    trainer.gradient_checkpointing's (train/engine.py)."""
    if cfg.lora.quantize != "4bit":
        return model.to(device)
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def is_peft(model) -> bool:
    """The model carries peft adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def disabled(model):
    """A context in which `model` answers as its base model (its adapters bypassed); a plain model as is."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


def weights_state(model) -> dict[str, Any]:
    """What a checkpoint keeps of the model: every weight, or with LoRA only the trainable ones
    (the base is reloaded from model.name_or_path)."""
    state = model.state_dict()
    if not is_peft(model):
        return state
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trainable}


def load_weights(model, state: dict[str, Any], key: str = "trainer.resume") -> None:
    """A checkpoint's weights into the model; with LoRA, every trainable weight must be there and
    nothing else may be."""
    if not is_peft(model):
        model.load_state_dict(state)
        return
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lacking, extra = sorted(trainable - set(state)), sorted(set(state) - trainable)
    if lacking or extra:
        raise ConfigError(
            f"{key}: the checkpoint's weights are not this trial's LoRA adapter (missing {lacking[:3]}, "
            f"unexpected {extra[:3]}); resume with the same model.lora settings"
        )
    model.load_state_dict(state, strict=False)


def to_save(lora: LoraConfig, model):
    """What the trial saves: the adapter (peft's save_pretrained writes only it), or with
    model.lora.merge the base with the adapter merged in, a plain model."""
    if is_peft(model) and lora.merge:
        return model.merge_and_unload()
    return model


# adapter_config.json fields that change the base model's structure or import code by name.
UNLOADED_FIELDS = ("layer_replication", "megatron_config", "loftq_config", "eva_config")


def is_adapter_dir(folder: Path) -> bool:
    """A folder peft's save_pretrained wrote (adapter_config.json, no config.json)."""
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def load_adapter(base, folder: Path):
    """The LoRA adapter of `folder` over the base model `base`, for evaluation. adapter_config.json
    is read as data: only peft_type LORA with safetensors weights is accepted; its
    base_model_name_or_path is ignored (the trial's config names the base)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel

    file = folder / ADAPTER_CONFIG
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not readable as JSON ({exc})") from None
    if not isinstance(saved, dict) or saved.get("peft_type") != "LORA":
        kind = saved.get("peft_type") if isinstance(saved, dict) else type(saved).__name__
        raise DataError(f"{file}: peft_type {kind!r}; only LoRA adapters (peft_type LORA) are loaded")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise DataError(f"{folder}: no {ADAPTER_WEIGHTS} (only safetensors adapter weights are loaded)")
    unsupported = [key for key in UNLOADED_FIELDS if saved.get(key)]
    if unsupported:
        raise DataError(f"{file}: {', '.join(unsupported)} set; sweep_sft trains and loads plain LoRA adapters only")
    config = PeftLoraConfig.from_pretrained(str(folder))  # a local JSON file: data, nothing run
    config.inference_mode = True
    # The saved weights replace the adapters' initial values; an init such as "pissa" or "olora"
    # would first rewrite the base weights themselves, silently.
    config.init_lora_weights = False
    return PeftModel.from_pretrained(base, str(folder), config=config, is_trainable=False)
