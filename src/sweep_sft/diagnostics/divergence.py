"""Divergence said while a trial trains: a loss well above where it started, and the warning before
training when a real model would start from the embedded toy's values.

The train loop (train/loop.py) hands the watch every optimizer step's train loss (the token mean of
the step's window, from the loss sums it keeps for logging: no extra forward pass) and every
validation loss it computes anyway. Each is compared with its own start: the first step's train
loss, computed on the untrained weights (the loss before any update), and the step-0 validation
loss (before training). Diverged, from optimizer step `diverge_min_steps` on, when
- the median of the last `diverge_points` (3) step losses, or a validation loss, is at least
  `diverge_factor` (2) times its start, or
- one step's loss alone is at least `diverge_jump_factor` (3) times the start: the step that
  wrecks a pretrained model's weights (SmolLM2-135M at lr 1e-3 and no warmup: 2.40 before the
  first update, 8.41 after it), even where the loss then falls back as the model relearns the
  training tasks;
and in each case at least `diverge_min_rise` (1) nats above it: a relative rise alone flags a model
starting near 0.3 for a noisy batch. A warmup bump of some tenths is none of these, nor is one bad
batch below 3x the start (the median).

The start is one batch's loss. On simulated curves whose step losses vary by 20% (sd) around a
falling trend, a factor 1.5 on the median stopped about 1 trial in 20 (a low first batch); 2 (with
the jump at 3) under 1 in 100, and none at 10%. Steps of a few examples each are noisier: raise
diverge_points and the factors.

After a resume, the start is where the resumed attempt began. Pure: no torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from sweep_sft.diagnostics.findings import DiagnosticsConfig, Finding

SIGN = "divergence"
# The model preset (conf/model/embedded.yaml) whose starting values suit only the embedded toy.
TOY_PRESET = "embedded"


@dataclass
class DivergenceWatch:
    """Fed each step's train loss and each validation loss; returns the divergence finding once,
    the first time a loss is well above its start (None before and after)."""

    cfg: DiagnosticsConfig
    lr: float  # the peak learning rate (optimizer.lr), named in the finding
    train_start: float | None = None
    val_start: float | None = None
    finding: Finding | None = None
    recent: deque = field(default_factory=deque)

    def train(self, step: int, loss: float) -> Finding | None:
        """One optimizer step's train loss (step counts from 1)."""
        if self.train_start is None:
            self.train_start = loss
        self.recent.append(loss)
        while len(self.recent) > self.cfg.diverge_points:
            self.recent.popleft()
        cfg, start = self.cfg, self.train_start
        if cfg.diverge_jump_factor is not None and diverged(loss, start, cfg.diverge_jump_factor, cfg.diverge_min_rise):
            return self._found(step, cfg.train_loss, loss, start, " (this step)")
        if len(self.recent) < cfg.diverge_points:
            return None
        return self._judge(
            step, cfg.train_loss, median(self.recent), start, f" (median of the last {len(self.recent)} steps)"
        )

    def val(self, step: int, loss: float) -> Finding | None:
        """A validation loss at `step` (the first one seen is the start: step 0 on a fresh trial)."""
        if self.val_start is None:
            self.val_start = loss
            return None
        return self._judge(step, self.cfg.val_loss, loss, self.val_start, "")

    def _judge(self, step: int, name: str, level: float, start: float, how: str) -> Finding | None:
        if self.cfg.diverge_factor is None or not diverged(
            level, start, self.cfg.diverge_factor, self.cfg.diverge_min_rise
        ):
            return None
        return self._found(step, name, level, start, how)

    def _found(self, step: int, name: str, level: float, start: float, how: str) -> Finding | None:
        if self.finding is not None or step < self.cfg.diverge_min_steps:
            return None
        ratio = f"x{level / start:.2f}, " if start > 0 else ""
        evidence = (
            f"{name} {level:.4g}{how} at step {step} against {start:.4g} at the start "
            f"({ratio}+{level - start:.2f} nats) with optimizer.lr={self.lr:g}"
        )
        self.finding = Finding(SIGN, step, evidence, "error")
        return self.finding


def diverged(level: float, start: float, factor: float, min_rise: float) -> bool:
    """Whether `level` is well above `start`: at least `factor` times it and `min_rise` nats above it."""
    return level >= start * factor and level - start >= min_rise


def warning_line(finding: Finding, lr: float) -> str:
    """The line printed the moment a trial diverges: where, the numbers, and what to try."""
    return f"warning: the loss diverges: {finding.evidence}; lower the learning rate (e.g. lr={lr / 10:g})"


def toy_defaults_warning(name_or_path: str, defaults_for: str | None, lr: float, epochs: int, batch: int) -> str | None:
    """The warning for a model other than the embedded toy trained with the toy's starting values
    (`model.name_or_path=...` without `model=local`); None when the values were chosen for it."""
    if defaults_for != TOY_PRESET or name_or_path == TOY_PRESET:
        return None
    return (
        f"warning: model.name_or_path={name_or_path} starts from the embedded toy's values (lr={lr:g}, "
        f"epochs={epochs}, trainer.batch_size={batch}), which a real model's full fine-tune does not: pick "
        "model=local (lr 2e-5, cosine with warmup, 2 epochs, batch 4 x grad_accum 8): "
        f"python -m sweep_sft model=local model.name_or_path={name_or_path} ..."
    )
