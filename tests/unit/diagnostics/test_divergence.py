"""The divergence watch (diagnostics/divergence.py) on synthetic per-step losses: an explosion is
found at once, with its numbers, even one that falls back; a sustained rise too; a normal noisy
decrease, a short warmup bump, one bad batch and small rises of a very low or very high start are
not. And the warning for a real model trained
with the embedded toy's starting values."""

from __future__ import annotations

import math
import random

import pytest

from sweep_sft.diagnostics.divergence import DivergenceWatch, diverged, toy_defaults_warning, warning_line
from sweep_sft.diagnostics.findings import SIGNS, DiagnosticsConfig, Finding, as_tags
from sweep_sft.errors import ConfigError


def first_finding(losses: list[float], val: dict[int, float] | None = None, **cfg) -> Finding | None:
    """Feed step losses (step 1, 2, ...) and validation losses at their steps (0: the start) as the
    loop does: the step's train loss, then that step's evaluation; the first finding returned."""
    watch = DivergenceWatch(DiagnosticsConfig(**cfg), lr=1e-3)
    val = val or {}
    found = [watch.val(0, val[0])] if 0 in val else []
    for step, loss in enumerate(losses, start=1):
        found.append(watch.train(step, loss))
        if step in val:
            found.append(watch.val(step, val[step]))
    hits = [f for f in found if f is not None]
    assert len(hits) <= 1, "the watch reports a divergence once"
    assert watch.finding == (hits[0] if hits else None)
    return hits[0] if hits else None


def sft_curve(seed: int, steps: int = 200, start: float = 2.55, noise: float = 0.1) -> list[float]:
    """A real model's per-step SFT loss: a fast drop from its start to a plateau, each step's batch
    off the trend by relative noise (10% sd), the first step's too."""
    rng = random.Random(seed)
    return [(1.0 + (start - 1.0) * math.exp(-s / 30)) * (1 + noise * rng.gauss(0, 1)) for s in range(steps)]


def test_an_explosion_is_found_at_once_with_its_numbers():
    # SmolLM2-135M at lr 1e-3 without warmup (measured): 2.40 before the first update, 8.41 after
    # it, then back down as it relearns the training tasks.
    finding = first_finding([2.397, 8.405, 3.227, 1.497, 1.042, 0.611])
    assert finding is not None and finding.sign == "divergence" and finding.severity == "error"
    assert finding.step == 2  # the first step after an update
    assert finding.evidence == (
        "train/loss 8.405 (this step) at step 2 against 2.397 at the start (x3.51, +6.01 nats) with optimizer.lr=0.001"
    )
    assert finding.sign in SIGNS
    assert as_tags([finding])["diagnostics.divergence"].startswith("step 2: train/loss 8.405")
    line = warning_line(finding, 1e-3)
    assert line.startswith("warning: the loss diverges: train/loss 8.405") and line.endswith("(e.g. lr=0.0001)")
    assert first_finding([2.397, 8.405, 3.227, 1.497], diverge_jump_factor=None) is None  # the jump rule's


def test_a_sustained_rise_is_found_on_the_median_of_three_steps():
    # Never 3x the start in one step, but over 2x it for good.
    finding = first_finding([2.55, 5.5, 5.9, 6.2, 6.0])
    assert finding is not None and finding.step == 3
    assert finding.evidence.startswith("train/loss 5.5 (median of the last 3 steps) at step 3 against 2.55")


@pytest.mark.parametrize("seed", range(20))
def test_a_normal_noisy_decrease_is_not_a_divergence(seed):
    assert first_finding(sft_curve(seed), val={0: 2.6, 50: 1.4, 100: 1.1, 200: 1.0}) is None


def test_noisier_steps_rarely_look_like_a_divergence():
    # 20% noise per step: the first step (the start) is now and then a low one.
    curves = [sft_curve(seed, noise=0.2) for seed in range(300)]
    flagged = sum(first_finding(c) is not None for c in curves)
    assert flagged <= 3, flagged  # 1 of these 300 (17 at a factor 1.5)
    assert sum(first_finding(c, diverge_factor=1.5) is not None for c in curves) > flagged  # why 2, not 1.5
    assert sum(first_finding(sft_curve(seed)) is not None for seed in range(300)) == 0  # none at 10%


def test_a_short_warmup_bump_is_not_a_divergence():
    # A rise of 30% for a few warmup steps, then the usual decrease.
    bump = [2.5, 2.9, 3.2, 3.3, 3.1, 2.8, 2.5, 2.2, 2.0, 1.9, 1.8]
    assert first_finding(bump) is None


def test_one_bad_batch_is_not_a_divergence():
    losses = sft_curve(0, steps=40)
    start = losses[0]
    losses[10] = 2.5 * start  # one batch far off, yet short of a jump: the median of three ignores it
    assert first_finding(losses) is None
    losses[11] = 2.5 * start  # two in a row: that is where the loss is
    finding = first_finding(losses)
    assert finding is not None and finding.step == 12


def test_a_rise_must_be_large_both_relatively_and_in_nats():
    # A low start doubling by a few tenths, a high start rising by 1.5 nats: neither.
    assert first_finding([0.3, 0.7, 0.7, 0.7, 0.7]) is None
    assert first_finding([8.0, 9.5, 9.5, 9.5, 9.5]) is None
    assert diverged(4.0, 2.5, 1.5, 1.0) and not diverged(3.4, 2.5, 1.5, 1.0) and not diverged(3.75, 3.0, 1.5, 1.0)


def test_the_validation_loss_is_judged_against_step_0():
    # Train loss not rising (say a task whose train data is easy) while validation explodes: the
    # issue's SmolLM2 trial, val/loss 2.55 -> 7.79 after one step.
    finding = first_finding([2.0] * 12, val={0: 2.55, 1: 7.79})
    assert finding is not None and finding.step == 1
    assert finding.evidence.startswith("val/loss 7.79 at step 1 against 2.55 at the start (x3.05, +5.24 nats)")
    assert first_finding([2.0] * 12, val={0: 2.55, 1: 2.4, 10: 3.5}) is None


def test_nothing_is_judged_before_diverge_min_steps_and_null_switches_it_off():
    exploding = [2.55, 7.79, 7.5, 7.9, 8.2, 8.0]
    assert first_finding(exploding, diverge_min_steps=5).step == 5
    assert first_finding(exploding, diverge_jump_factor=None).step == 3  # the median rule alone
    assert first_finding(exploding, diverge_factor=None).step == 2  # the jump rule alone
    assert first_finding(exploding, diverge_factor=None, diverge_jump_factor=None) is None
    assert first_finding([2.55, 8.0], val={0: 2.55, 2: 9.0}, diverge_min_steps=3) is None  # before step 3


def test_the_settings_are_validated():
    for bad, key in (
        ({"diverge_factor": 1.0}, "diverge_factor"),
        ({"diverge_factor": math.inf}, "diverge_factor"),
        ({"diverge_jump_factor": 0.5}, "diverge_jump_factor"),
        ({"diverge_min_rise": -0.5}, "diverge_min_rise"),
        ({"diverge_min_rise": math.nan}, "diverge_min_rise"),
        ({"diverge_min_steps": 0}, "diverge_min_steps"),
        ({"diverge_points": 0}, "diverge_points"),
    ):
        with pytest.raises(ConfigError, match=f"diagnostics.{key}"):
            DiagnosticsConfig(**bad)


def test_a_real_model_with_the_toys_values_gets_a_warning():
    line = toy_defaults_warning("/models/smollm2", "embedded", 1e-3, 3, 32)
    assert line is not None and line.startswith("warning: model.name_or_path=/models/smollm2 starts from the embedded")
    assert "lr=0.001, epochs=3, trainer.batch_size=32" in line and "model=local" in line
    assert toy_defaults_warning("embedded", "embedded", 1e-3, 3, 32) is None  # the toy itself
    assert toy_defaults_warning("/models/smollm2", "local", 2e-5, 2, 4) is None  # model=local
    assert toy_defaults_warning("/models/smollm2", None, 1e-3, 3, 32) is None  # a user's own preset
