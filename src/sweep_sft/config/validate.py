"""A composed config resolved into the typed schema, with the checks a dataclass cannot make itself."""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep_sft.attention import check_packing
from sweep_sft.config import lora
from sweep_sft.config.compose import task_overrides
from sweep_sft.config.data import check_tree_overrides
from sweep_sft.config.schema import ALIASES, Config
from sweep_sft.errors import ConfigError


def validate(cfg: DictConfig | Config) -> Config:
    """Resolve a composed config into typed objects, running every value check."""
    if isinstance(cfg, Config):
        return cfg
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf's own errors name the key; keep their text
        raise ConfigError(str(exc)) from exc
    if not isinstance(obj, Config):
        raise ConfigError(f"expected a sweep_sft config, got {type(obj).__name__}")
    _reject_unknown_keys(obj)
    _check_aliases(cfg, obj)
    check_packing(obj.model.attn_implementation, obj.data.packing)
    lora.check_with(obj.model.lora, obj.deepspeed)
    _check_mix_overrides()
    return obj


def _check_mix_overrides() -> None:
    # Two overrides of one mix key (a family and a task_type inside it) compose into one of them:
    # only the command line still holds both.
    if HydraConfig.initialized():  # set by the launcher, or by the sweep's preflight for each job
        check_tree_overrides(task_overrides(HydraConfig.get()))


def _reject_unknown_keys(obj: Any, prefix: str = "") -> None:
    # `+key=value` adds keys even to a struct config; a typo must not be silently ignored.
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in vars(obj).items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key}: {type(obj).__name__} has no such field")
        if dataclasses.is_dataclass(value):
            _reject_unknown_keys(value, f"{prefix}{key}.")


def _check_aliases(cfg: DictConfig, obj: Config) -> None:
    # A full-path override (optimizer.lr=...) wins over the short name; keep the short
    # name equal to it so params logged and printed tell one story.
    for short, full in ALIASES.items():
        value = OmegaConf.select(cfg, full)
        setattr(obj, short, value)
