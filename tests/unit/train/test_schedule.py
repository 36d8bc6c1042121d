"""Learning-rate schedules: warmup then linear, cosine or constant."""

from __future__ import annotations

import pytest

from sweep_sft.config.schema import SchedulerConfig
from sweep_sft.errors import ConfigError
from sweep_sft.train.schedule import lr_factor, warmup_steps


def factors(cfg: SchedulerConfig, total: int) -> list[float]:
    return [lr_factor(cfg, step, total) for step in range(total)]


def test_warmup_steps_rise_linearly_to_the_peak():
    f = factors(SchedulerConfig(name="constant", warmup_steps=4), 10)
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4:] == [1.0] * 6


def test_warmup_ratio_is_a_share_of_all_steps():
    assert warmup_steps(SchedulerConfig(warmup_ratio=0.1), 200) == 20
    assert warmup_steps(SchedulerConfig(), 200) == 0


def test_linear_and_cosine_decay_to_min_lr_ratio():
    # As in transformers' schedules, step s of n uses 1 - s/n: the floor is reached at step n.
    linear = factors(SchedulerConfig(name="linear", min_lr_ratio=0.1), 10)
    assert linear == pytest.approx([0.1 + 0.9 * (1 - s / 10) for s in range(10)])
    assert lr_factor(SchedulerConfig(name="linear", min_lr_ratio=0.1), 10, 10) == pytest.approx(0.1)
    cosine = factors(SchedulerConfig(name="cosine"), 101)
    assert (
        cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5, abs=0.01) and cosine[100] == pytest.approx(0.0, abs=1e-3)
    )
    assert all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))


def test_warmup_ratio_and_steps_are_exclusive():
    with pytest.raises(ConfigError, match="scheduler.warmup_ratio and scheduler.warmup_steps"):
        SchedulerConfig(warmup_ratio=0.1, warmup_steps=5)
