"""Learning-rate schedules: linear warmup, then linear, cosine or constant."""

from __future__ import annotations

import math

from sweep_sft.config.schema import SchedulerConfig


def warmup_steps(cfg: SchedulerConfig, total_steps: int) -> int:
    """Optimizer steps of warmup, from warmup_steps or warmup_ratio of total_steps."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_ratio is not None:
        return int(cfg.warmup_ratio * total_steps)
    return 0


def lr_factor(cfg: SchedulerConfig, step: int, total_steps: int) -> float:
    """Multiplier of the peak lr for the optimizer step about to be taken (0-based)."""
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.name == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.name == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay
