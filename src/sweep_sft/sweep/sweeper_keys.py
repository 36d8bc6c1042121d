"""The keys a sweep's `hydra.sweeper` may hold: those of the chosen sweeper's structured config.

`+hydra.sweeper.bogus=1` composes (the `+` forces the key in), and Hydra only fails when it builds
the sweeper, after the callbacks' on_multirun_start opened the sweep's parent run: a FAILED parent
and an empty report for a typo. The preflight callback checks first (sweep_sft.sweep.preflight).
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from sweep_sft.errors import ConfigError


def check_sweeper_keys(config: DictConfig) -> None:
    """A ConfigError naming the first key under hydra.sweeper (nested ones too: optuna5's sampler
    and pruner, sandwich's constraint) that its structured config lacks, and the keys it has."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    if not isinstance(sweeper, DictConfig):  # a config composed without Hydra's node
        return
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    _check_node(sweeper, "hydra.sweeper", f"hydra/sweeper={choices.get('hydra/sweeper')}", choices)


def _check_node(node: DictConfig, path: str, what: str, choices) -> None:
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):  # a free dict (params) or a sweeper without a schema
        return
    fields = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        if key not in fields:
            accepted = ", ".join(f for f in fields if not f.startswith("_") and f != "defaults") or "none"
            raise ConfigError(f"{path}.{key}: {what} has no key {key!r}; its keys under {path}: {accepted}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            group = f"hydra/sweeper/{key}"  # a typed group of the sweeper (optuna5's sampler, pruner)
            inner = f"{group}={choices[group]}" if path == "hydra.sweeper" and group in choices else what
            _check_node(child, f"{path}.{key}", inner, choices)
