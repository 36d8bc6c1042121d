"""Value checks the config dataclasses run in __post_init__; each raises ConfigError naming the key."""

from __future__ import annotations

import math
from typing import Any

from sweep_sft.errors import ConfigError


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """A value among the allowed ones; the message lists them."""
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def at_least(key: str, value: float, low: float) -> None:
    """A finite value >= low."""
    if not math.isfinite(value):  # nan passes every comparison's negation; inf overflows later
        raise ConfigError(f"{key} must be a finite number >= {low}, got {value}")
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def within(key: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """A finite value in [low, high] (or (low, high] when low_open); the message names the range."""
    above = value > low if low_open else value >= low
    if math.isfinite(value) and above and value <= high:
        return
    if math.isfinite(high):
        span = f"in {'(' if low_open else '['}{low}, {high}]"
    else:
        span = f"{'>' if low_open else '>='} {low}"
    raise ConfigError(f"{key} must be a finite number {span}, got {value}")
