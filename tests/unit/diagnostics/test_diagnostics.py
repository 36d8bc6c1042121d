"""Loss-curve diagnostics on synthetic series: a clean, realistic SFT curve raises nothing, each
sign injected into it is found at the place it was put, and nothing else is raised."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from sweep_sft.diagnostics.findings import SIGNS, DiagnosticsConfig, Finding, as_tags, format_findings
from sweep_sft.diagnostics.signs import diagnose, infer_steps_per_epoch
from sweep_sft.errors import ConfigError

SPE = 500  # steps per epoch
EPOCHS = 3
LOG_EVERY = 10
EVAL_EVERY = 100
STEPS = SPE * EPOCHS


def trend(step: float, plateau: float = 0.9) -> float:
    """An SFT train loss: about 2.6 at the start, a fast drop, then a slow decay towards a plateau."""
    return plateau + 1.5 * math.exp(-step / 120) + 0.2 * (1 - step / STEPS)


def clean(seed: int, noise: float = 0.03, grad_noise: float = 0.3, plateau: float = 0.9, log_every: int = LOG_EVERY):
    """Train loss with relative noise, val loss tracking it (evaluated on a fixed set, so less noisy),
    a fractional epoch, warmup + cosine lr, and noisy log-normal grad norms (one step's norm each)."""
    rng = random.Random(seed)
    steps = list(range(log_every, STEPS + 1, log_every))
    warmup = 0.03 * STEPS
    return {
        "train/loss": [[s, trend(s, plateau) * (1 + noise * rng.gauss(0, 1))] for s in steps],
        "val/loss": [
            [s, trend(s, plateau) + 0.04 + noise / 3 * rng.gauss(0, 1)] for s in range(0, STEPS + 1, EVAL_EVERY)
        ],
        "train/grad_norm": [
            [s, (0.8 + 3 * math.exp(-s / 100)) * math.exp(grad_noise * rng.gauss(0, 1))] for s in steps
        ],
        "train/epoch": [[s, s / SPE] for s in steps],
        "train/lr": [
            [s, 2e-5 * (s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * s / STEPS)))] for s in steps
        ],
    }


def signs(findings: list[Finding]) -> set[str]:
    return {f.sign for f in findings}


def only(findings: list[Finding], sign: str) -> Finding:
    assert signs(findings) == {sign}, format_findings(findings)
    assert len(findings) == 1, format_findings(findings)
    return findings[0]


def scale(points: list[list[float]], from_step: int, factor: Callable[[float], float]) -> list[list[float]]:
    return [[s, v * factor(s) if s >= from_step else v] for s, v in points]


# ---- clean curves raise nothing ----


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("noise,grad_noise", [(0.01, 0.2), (0.03, 0.3), (0.06, 0.4)])
def test_clean_curve_has_no_findings(seed, noise, grad_noise):
    findings = diagnose(clean(seed, noise, grad_noise), steps_per_epoch=SPE)
    assert findings == [], format_findings(findings)


@pytest.mark.parametrize("seed", range(4))
def test_clean_curve_logged_sparsely_has_no_findings(seed):
    """About 30 points a run, as with the default log_every 20 on a small run."""
    findings = diagnose(clean(seed, 0.04, log_every=50), steps_per_epoch=SPE)
    assert findings == [], format_findings(findings)


def test_warmup_bump_has_no_findings():
    """During warmup the loss may bump up before it falls, and the grad norm climbs for a while."""
    series = clean(5)
    series["train/loss"] = scale(series["train/loss"], 0, lambda s: 1 + 0.15 * math.sin(math.pi * min(s, 100) / 100))
    series["train/grad_norm"] = scale(series["train/grad_norm"], 0, lambda s: min(1.0, 0.25 + s / 120))
    findings = diagnose(series, steps_per_epoch=SPE)
    assert findings == [], format_findings(findings)


def every_20_steps(values: list[float]) -> list[list[float]]:
    return [[20 * i, v] for i, v in enumerate(values, start=1)]


# Real trials of this repository (tiny Llama, synthetic chat data, 3 epochs, log_every 20), copied
# rounded so the test does not depend on any output folder: a fast run at lr 3e-3, and a slow one
# still far from converged whose grad norms jump 2-3x (the kind of noise that must not be flagged).
# fmt: off
REAL_FAST = {
    "train/loss": every_20_steps([
        6.475, 3.278, 2.297, 1.723, 1.538, 1.458, 1.305, 1.361, 1.313, 1.33, 1.266, 1.175, 1.255, 1.211, 1.132,
        1.204, 1.261, 1.136, 1.203, 1.177, 1.228, 1.149, 1.172, 1.15, 1.128, 1.054, 1.046, 1.098, 1.152, 1.158,
        1.08, 1.079,
    ]) + [[657, 1.15]],
    "val/loss": [[0, 13.056], [200, 1.264], [400, 1.154], [600, 1.105], [657, 1.104]],
    "train/grad_norm": every_20_steps([
        1.673, 1.158, 1.864, 1.442, 0.814, 0.761, 0.894, 1.082, 0.954, 0.834, 0.729, 0.845, 0.712, 0.804, 1.019,
        0.788, 0.62, 0.67, 0.534, 0.949, 0.672, 0.639, 0.797, 0.851, 0.653, 0.552, 0.58, 1.047, 0.761, 0.584,
        0.571, 0.868,
    ]) + [[657, 0.834]],
    "train/epoch": [[20 * i, 20 * i / 219] for i in range(1, 33)] + [[657, 3.0]],
}
REAL_SLOW = {
    "train/loss": every_20_steps([
        8.821, 6.609, 5.732, 5.299, 4.954, 4.734, 4.406, 4.248, 4.023, 3.847, 3.695, 3.583, 3.421, 3.364, 3.281,
        3.166, 3.059, 3.033, 2.998, 2.888, 2.909, 2.754, 2.726, 2.839, 2.745, 2.763, 2.705, 2.741, 2.722, 2.679,
    ]),
    "val/loss": [[0, 10.865], [200, 3.785], [400, 2.872], [600, 2.712]],
    "train/grad_norm": every_20_steps([
        7.324, 7.269, 3.119, 2.729, 2.988, 2.638, 3.397, 2.425, 6.626, 5.912, 4.191, 3.013, 3.595, 8.418, 6.012,
        4.05, 3.023, 3.116, 3.214, 4.166, 6.393, 3.793, 2.703, 2.713, 1.87, 2.446, 2.311, 2.178, 3.185, 1.864,
    ]),
    "train/epoch": [[20 * i, i / 10] for i in range(1, 31)],
}
# fmt: on


@pytest.mark.parametrize("series", [REAL_FAST, REAL_SLOW], ids=["fast", "slow"])
def test_real_trial_curves_have_no_findings(series):
    assert infer_steps_per_epoch(series) in (200, 219)
    findings = diagnose(series, steps_per_epoch=None)
    assert findings == [], format_findings(findings)


# ---- each sign is found where it was put, and nothing else ----


@pytest.mark.parametrize("seed", range(4))
def test_rising_train_loss(seed):
    start = 900
    series = clean(seed)
    # A bug from step 900 on: the loss climbs 60% by the end of the run.
    series["train/loss"] = scale(series["train/loss"], start, lambda s: 1 + 0.6 * (s - start) / (STEPS - start))
    series["val/loss"] = scale(series["val/loss"], start, lambda s: 1 + 0.6 * (s - start) / (STEPS - start))
    finding = only(diagnose(series, steps_per_epoch=SPE), "rising_train_loss")
    assert finding.severity == "error"
    assert abs(finding.step - start) <= 8 * LOG_EVERY, finding
    assert "rose" in finding.evidence and "Kendall tau" in finding.evidence


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("at", [140, 730, 1290])
def test_loss_spike(seed, at):
    series = clean(seed)
    series["train/loss"] = [[s, v * 3 if s == at else v] for s, v in series["train/loss"]]
    finding = only(diagnose(series, steps_per_epoch=SPE), "loss_spike")
    assert finding.step == at
    assert f"at step {at} is " in finding.evidence and "x the level" in finding.evidence


def test_loss_spike_that_lasts_is_one_finding_and_two_spikes_are_two():
    series = clean(0)
    series["train/loss"] = [[s, v * 2.5 if 600 <= s <= 630 or s == 1100 else v] for s, v in series["train/loss"]]
    findings = diagnose(series, steps_per_epoch=SPE)
    assert [(f.sign, f.step) for f in findings] == [("loss_spike", 600), ("loss_spike", 1100)], format_findings(
        findings
    )
    assert "high for 4 points (steps 600-630)" in findings[0].evidence


def test_loss_that_jumps_and_stays_up_is_one_spike_not_back_down():
    series = clean(0)
    series["train/loss"] = scale(series["train/loss"], 1200, lambda s: 2.5)
    finding = only(diagnose(series, steps_per_epoch=SPE), "loss_spike")
    assert finding.step == 1200
    assert "high for 31 points (steps 1200-1500); not back down by the last point" in finding.evidence


@pytest.mark.parametrize("seed", range(6))
def test_epoch_staircase(seed):
    series = clean(seed, plateau=1.3)
    # Memorising: flat within each epoch, a sharp drop right after each boundary.
    series["train/loss"] = scale(series["train/loss"], 0, lambda s: 0.75 ** ((s - 1) // SPE))
    del series["val/loss"]  # a staircase in train alone also opens a train/val gap; that is the next test
    finding = only(diagnose(series, steps_per_epoch=SPE), "epoch_staircase")
    assert finding.step in (SPE, 2 * SPE)
    assert "across the epoch boundary" in finding.evidence


def test_epoch_staircase_with_val_flat_also_opens_a_gap():
    series = clean(1, plateau=1.3)
    series["train/loss"] = scale(series["train/loss"], 0, lambda s: 0.75 ** ((s - 1) // SPE))
    assert signs(diagnose(series, steps_per_epoch=SPE)) == {"epoch_staircase", "growing_train_val_gap"}


def test_epoch_staircase_needs_epoch_boundaries():
    series = clean(2, plateau=1.3)
    series["train/loss"] = scale(series["train/loss"], 0, lambda s: 0.75 ** ((s - 1) // SPE))
    del series["val/loss"]
    # Steps per epoch from the logged fractional epoch when not given ...
    assert signs(diagnose(series, steps_per_epoch=None)) == {"epoch_staircase"}
    # ... and without either, the check is skipped.
    del series["train/epoch"]
    assert diagnose(series, steps_per_epoch=None) == []


@pytest.mark.parametrize("seed", range(4))
def test_below_loss_floor(seed):
    series = clean(seed, plateau=0.15)
    finding = only(diagnose(series, steps_per_epoch=SPE), "below_loss_floor")
    crossing = next(s for s in range(STEPS) if trend(s, 0.15) < 0.5)
    assert abs(finding.step - crossing) <= 5 * LOG_EVERY, (finding, crossing)
    assert "the floor 0.5" in finding.evidence


def test_loss_floor_is_configurable():
    series = clean(0, plateau=0.15)
    assert diagnose(series, steps_per_epoch=SPE, config=DiagnosticsConfig(loss_floor=0.1)) == []
    assert diagnose(series, steps_per_epoch=SPE, config=DiagnosticsConfig(loss_floor=None)) == []
    # A higher floor flags a curve that the default lets pass.
    assert diagnose(clean(0), steps_per_epoch=SPE) == []
    high = diagnose(clean(0), steps_per_epoch=SPE, config=DiagnosticsConfig(loss_floor=1.2))
    assert signs(high) == {"below_loss_floor"} and "the floor 1.2" in high[0].evidence


@pytest.mark.parametrize("seed", range(4))
def test_growing_train_val_gap(seed):
    start = 800
    series = clean(seed)
    # Overfitting from step 800: val loss turns up while train loss keeps falling.
    series["val/loss"] = [[s, v + 0.5 * max(s - start, 0) / (STEPS - start)] for s, v in series["val/loss"]]
    finding = only(diagnose(series, steps_per_epoch=SPE), "growing_train_val_gap")
    assert abs(finding.step - start) <= EVAL_EVERY, finding
    assert "val/loss - train/loss grew from " in finding.evidence and f"at step {STEPS} " in finding.evidence
    assert f"gap by step: {finding.step}: " in finding.evidence


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("at", [300, 1000])
def test_grad_norm_spike(seed, at):
    series = clean(seed)
    series["train/grad_norm"] = [[s, v * 10 if s == at else v] for s, v in series["train/grad_norm"]]
    finding = only(diagnose(series, steps_per_epoch=SPE), "grad_norm_spike")
    assert finding.step == at
    assert finding.evidence.startswith("train/grad_norm ") and f"at step {at}" in finding.evidence


# ---- missing or short series, output ----


def test_missing_series_are_skipped():
    assert diagnose({}, steps_per_epoch=SPE) == []
    assert diagnose({"train/loss": []}, steps_per_epoch=None) == []
    series = clean(0)
    spiky = [[s, v * 10 if s == 500 else v] for s, v in series["train/grad_norm"]]
    assert signs(diagnose({"train/grad_norm": spiky}, steps_per_epoch=None)) == {"grad_norm_spike"}
    # Val loss alone cannot open a gap; train loss alone is judged without it.
    assert diagnose({"val/loss": series["val/loss"]}, steps_per_epoch=SPE) == []
    assert diagnose({"train/loss": series["train/loss"]}, steps_per_epoch=SPE) == []


def test_short_and_non_finite_series_are_skipped():
    short = {"train/loss": [[s, 5.0 if s == 40 else 1.0] for s in range(10, 80, 10)]}
    assert diagnose(short, steps_per_epoch=None) == []  # 7 points: below min_points
    series = clean(0)
    series["train/loss"][30][1] = float("nan")
    series["train/grad_norm"][40][1] = float("inf")
    assert diagnose(series, steps_per_epoch=SPE) == []


def test_format_and_tags():
    series = clean(0)
    series["train/loss"] = [[s, v * 3 if s in (300, 900) else v] for s, v in series["train/loss"]]
    series["train/grad_norm"] = [[s, v * 10 if s == 700 else v] for s, v in series["train/grad_norm"]]
    findings = diagnose(series, steps_per_epoch=SPE)
    assert [(f.sign, f.step) for f in findings] == [("loss_spike", 300), ("grad_norm_spike", 700), ("loss_spike", 900)]
    text = format_findings(findings)
    assert text.splitlines()[0] == "loss-curve diagnostics: 3 findings"
    assert "WARNING loss_spike at step 300: train/loss " in text and "gradient clipping" in text
    tags = as_tags(findings)
    assert tags["diagnostics.count"] == "3"
    assert tags["diagnostics.loss_spike"].startswith("step 300: train/loss ")
    assert tags["diagnostics.loss_spike"].endswith("(+1 more at steps 900)")
    assert set(tags) == {"diagnostics.count", "diagnostics.loss_spike", "diagnostics.grad_norm_spike"}
    assert all(len(v) <= 500 for v in tags.values())
    assert as_tags([]) == {"diagnostics.count": "0"}
    assert format_findings([]) == "loss-curve diagnostics: no findings"
    assert {f.sign for f in findings} <= set(SIGNS)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="smooth_points must be odd"):
        DiagnosticsConfig(smooth_points=4)
    with pytest.raises(ConfigError, match="loss_spike_factor must be > 1"):
        DiagnosticsConfig(loss_spike_factor=1.0)
    with pytest.raises(ConfigError, match="spike_min_window"):
        DiagnosticsConfig(spike_window=3, spike_min_window=5)
    with pytest.raises(ConfigError, match="loss_floor"):
        DiagnosticsConfig(loss_floor=-1.0)
