"""Loss-curve diagnostics: the signs practitioners read off an SFT run's curves, found in the
series a trial logs (`TrialResult.series`, `metrics.json` under "series": name -> [[step, value]]).

Signs, each with the step where it shows and numbers a person can check:
- rising_train_loss: train loss rising steadily. A code or data bug, never "hard data".
- loss_spike: train loss far above its recent level for a moment (or for good).
- epoch_staircase: train loss dropping sharply right after epoch boundaries while flat within
  epochs: the model memorises answers it has already seen.
- below_loss_floor: the final train loss below what a language model should keep on its data
  (about 0.5 for general data); the model may only be able to say its training answers.
- growing_train_val_gap: validation loss pulling away from train loss: overfitting.
- grad_norm_spike: a gradient norm far above its recent level: instability.
- divergence: train or validation loss well above where it started, found while the trial trains
  (diagnostics/divergence.py): a learning rate too high for the model.

Series are logged every `trainer.log_every` steps, so a run has tens to hundreds of points, and
train loss is a mean over the steps since the last point. Thresholds are relative to the curve
itself: medians, robust lines (Theil-Sen) and spreads (MAD) over windows of points, on a log
scale where noise is proportional to the value, so the ordinary shape of an SFT curve (warmup, a
fast initial drop, then a slow noisy decay) raises nothing, and one wild point moves nothing.

Pure: no torch, MLflow or Hydra, so reports and tests use it on saved series alone. This module holds the
findings and their settings; diagnostics/signs.py finds them, with diagnostics/robust.py's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sweep_sft.errors import ConfigError
from sweep_sft.metrics import EPOCH, GRAD_NORM, TRAIN_LOSS, VAL_LOSS

Series = Mapping[str, Sequence[Sequence[float]]]
Points = list[tuple[int, float]]

SIGNS = (
    "rising_train_loss",
    "loss_spike",
    "epoch_staircase",
    "below_loss_floor",
    "growing_train_val_gap",
    "grad_norm_spike",
    "divergence",
)
# What each sign usually means, for the terminal; tags and reports carry only the evidence.
HINTS = {
    "rising_train_loss": "a steadily rising train loss points to a bug in the training code or data "
    "(or a learning rate far too high)",
    "loss_spike": "instability: check the learning rate, warmup and gradient clipping",
    "epoch_staircase": "the model memorises answers at each repeat of the data: fewer epochs or more data",
    "below_loss_floor": "the model may only be able to repeat its training answers; raise the floor "
    "(diagnostics loss_floor) for data with fixed, short answers",
    "growing_train_val_gap": "overfitting: fewer epochs, a lower learning rate or more data",
    "grad_norm_spike": "instability: check the learning rate and gradient clipping",
    "divergence": "the learning rate is too high for this model: lower it (10x lower is a start; a real "
    "model's full fine-tune starts near lr=2e-5, model=local)",
}


@dataclass(frozen=True)
class Finding:
    """One sign found in a run's series: where it shows and the numbers behind it."""

    sign: str  # one of SIGNS
    step: int  # where the sign shows: a spike's step, the onset of a rise or a gap, an epoch boundary
    evidence: str  # the numbers behind it, in words a person can check against the curves
    severity: str  # "warning" or "error"


@dataclass  # not frozen: it is the `diagnostics` node of the trial config, which overrides write into
class DiagnosticsConfig:
    """The `diagnostics` config node: series names and every threshold of the checks."""

    # Series names, as train/loop.py and the trial log them (sweep_sft.metrics).
    train_loss: str = TRAIN_LOSS
    val_loss: str = VAL_LOSS
    grad_norm: str = GRAD_NORM
    epoch: str = EPOCH  # fractional epoch at each logged step; gives steps per epoch
    # A series with fewer finite points than this is too short to judge: its checks are skipped.
    min_points: int = 8
    # Points in the centred rolling median that smooths train loss for the rise and floor checks.
    smooth_points: int = 5
    # Rising train loss: the smoothed loss at the end exceeds its lowest smoothed level by this fraction...
    rise_min_ratio: float = 0.2
    # ... with at least this many points after that lowest level ...
    rise_min_points: int = 8
    # ... that rise steadily (Kendall tau of the points after the lowest level), not in one jump.
    rise_min_tau: float = 0.5
    # Spikes: each point is compared with up to this many normal points before it: with the median of
    # the recent half, or where they rise, with the robust line (Theil-Sen, log scale) through them, so
    # a rising curve is not taken for a spike; the noise is their spread around that line, so a falling
    # curve is not taken for noise ...
    spike_window: int = 20
    # ... once at least this many exist (the first points of a run are never judged).
    spike_min_window: int = 5
    # A loss spike is at least this many times that level (train loss is a mean over log_every
    # steps, which dilutes a one-step spike) ...
    loss_spike_factor: float = 1.5
    # ... a grad-norm spike this many times (the logged norm is one step's, noisy: 2-3x is common) ...
    grad_spike_factor: float = 4.0
    # ... and both at least this many robust sds of the residuals around that line above it.
    spike_z: float = 5.0
    # Staircase: on each side of an epoch boundary a line (Theil-Sen, on log loss) is fitted to the
    # train loss over this fraction of an epoch; the jump is the gap between the two lines at the boundary,
    # so the within-epoch trend on either side is not taken for a step ...
    staircase_span: float = 0.5
    # ... from at least this many points on each side ...
    staircase_points: int = 4
    # ... and the drop must be at least this fraction of the loss before the boundary ...
    staircase_min_drop: float = 0.1
    # ... and this many standard deviations of the jump (from the point-to-point noise).
    staircase_z: float = 4.0
    # The final train loss should stay above this (about 0.5 for general data; lower for data with
    # fixed short answers); None switches the check off.
    loss_floor: float | None = 0.5
    # The final train loss is the median of this many last points.
    floor_points: int = 5
    # Gap: the train loss at an evaluation is the median of this many train points nearest to it.
    gap_train_points: int = 5
    # Evaluations (with train points near them) needed before judging a gap.
    gap_min_evals: int = 3
    # The gap (val minus train, counted from 0 when val was below train) must grow by at least this
    # many nats ...
    gap_min_growth: float = 0.1
    # ... and by this fraction of the validation loss where the gap was smallest ...
    gap_min_rel_growth: float = 0.1
    # ... at each of this many last evaluations, so one noisy evaluation is not enough.
    gap_confirm_evals: int = 2
    # A rise or a gap is reported from its onset: the last point still within this fraction of the
    # whole growth above the lowest level (the lowest point itself wanders over a flat stretch).
    onset_fraction: float = 0.1
    # Divergence, judged while the trial trains (diagnostics/divergence.py): the train loss (the
    # median of the last diverge_points optimizer steps' losses) or a validation loss at least this
    # many times its start (the first step's loss, on the untrained weights; the step-0 validation
    # loss; 2, not 1.5: the start is one batch, and a low first batch must not stop a trial) ...;
    # null: this rule off (with diverge_jump_factor null too, no divergence check at all).
    diverge_factor: float | None = 2.0
    # ... or one step's train loss alone at least this many times the start (the jump of a step
    # that wrecks the weights, 2.4 -> 8.4 on SmolLM2 at lr 1e-3, which may then fall back); null: off ...
    diverge_jump_factor: float | None = 3.0
    # ... and in either case at least this many nats above the start (a loss starting near 0.3 may
    # double by noise) ...
    diverge_min_rise: float = 1.0
    # ... judged from this optimizer step on (1: from the first update on) ...
    diverge_min_steps: int = 1
    # ... the median of this many last step losses, so one bad batch is not enough.
    diverge_points: int = 3

    def __post_init__(self) -> None:
        for name in ("min_points", "smooth_points", "rise_min_points", "floor_points", "gap_train_points"):
            _at_least(name, getattr(self, name), 1)
        for name in ("spike_min_window", "staircase_points", "gap_min_evals"):
            _at_least(name, getattr(self, name), 2)  # a line, a spread or a growth needs two
        _at_least("gap_confirm_evals", self.gap_confirm_evals, 1)
        if self.smooth_points % 2 == 0:
            raise ConfigError(f"diagnostics.smooth_points must be odd (a centred window), got {self.smooth_points}")
        if self.spike_min_window > self.spike_window:
            raise ConfigError("diagnostics.spike_min_window must be <= diagnostics.spike_window")
        for name in ("loss_spike_factor", "grad_spike_factor"):
            if getattr(self, name) <= 1:
                raise ConfigError(f"diagnostics.{name} must be > 1, got {getattr(self, name)}")
        if not 0 < self.staircase_span <= 1:
            raise ConfigError(f"diagnostics.staircase_span must be within (0, 1], got {self.staircase_span}")
        if not 0 <= self.onset_fraction < 1:
            raise ConfigError(f"diagnostics.onset_fraction must be within [0, 1), got {self.onset_fraction}")
        if not -1 <= self.rise_min_tau <= 1:
            raise ConfigError(f"diagnostics.rise_min_tau must be within [-1, 1], got {self.rise_min_tau}")
        if self.loss_floor is not None and self.loss_floor < 0:
            raise ConfigError(f"diagnostics.loss_floor must be >= 0 or null, got {self.loss_floor}")
        self._check_divergence()

    def _check_divergence(self) -> None:
        for name in ("diverge_factor", "diverge_jump_factor"):
            value = getattr(self, name)
            if value is not None and not 1 < value < math.inf:
                raise ConfigError(f"diagnostics.{name} must be a number > 1 or null, got {value}")
        if not 0 <= self.diverge_min_rise < math.inf:
            raise ConfigError(f"diagnostics.diverge_min_rise must be a finite number >= 0, got {self.diverge_min_rise}")
        _at_least("diverge_min_steps", self.diverge_min_steps, 1)
        _at_least("diverge_points", self.diverge_points, 1)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"diagnostics.{name} must be >= {low}, got {value}")


def format_findings(findings: Sequence[Finding], hints: bool = True) -> str:
    """Terminal lines, one per finding (and what the sign usually means, unless hints=False)."""
    if not findings:
        return "loss-curve diagnostics: no findings"
    lines = [f"loss-curve diagnostics: {len(findings)} finding{'s' if len(findings) > 1 else ''}"]
    for f in findings:
        lines.append(f"  {f.severity.upper():<7} {f.sign} at step {f.step}: {f.evidence}")
        if hints and f.sign in HINTS:
            lines.append(f"          -> {HINTS[f.sign]}")
    return "\n".join(lines)


def as_tags(findings: Sequence[Finding], max_len: int = 500) -> dict[str, str]:
    """MLflow tags: `diagnostics.<sign>` -> the first finding's evidence (and the other steps), plus
    `diagnostics.count`, so runs can be filtered on a sign or on a clean curve ("0")."""
    tags = {"diagnostics.count": str(len(findings))}
    for sign in SIGNS:
        mine = [f for f in findings if f.sign == sign]
        if not mine:
            continue
        text = f"step {mine[0].step}: {mine[0].evidence}"
        if len(mine) > 1:
            text = f"{text} (+{len(mine) - 1} more at steps {', '.join(str(f.step) for f in mine[1:])})"
        tags[f"diagnostics.{sign}"] = text if len(text) <= max_len else text[: max_len - 3] + "..."
    return tags
