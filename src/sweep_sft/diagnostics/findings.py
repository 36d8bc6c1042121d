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

Series are logged every `trainer.log_every` steps, so a run has tens to hundreds of points, and
train loss is a mean over the steps since the last point. Thresholds are relative to the curve
itself: medians, robust lines (Theil-Sen) and spreads (MAD) over windows of points, on a log
scale where noise is proportional to the value, so the ordinary shape of an SFT curve (warmup, a
fast initial drop, then a slow noisy decay) raises nothing, and one wild point moves nothing.

Pure: no torch, MLflow or Hydra, so reports and tests use it on saved series alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median

from sweep_sft.errors import ConfigError

Series = Mapping[str, Sequence[Sequence[float]]]
Points = list[tuple[int, float]]

SIGNS = (
    "rising_train_loss",
    "loss_spike",
    "epoch_staircase",
    "below_loss_floor",
    "growing_train_val_gap",
    "grad_norm_spike",
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
}
# MAD times this estimates the standard deviation of normal noise.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Finding:
    sign: str  # one of SIGNS
    step: int  # where the sign shows: a spike's step, the onset of a rise or a gap, an epoch boundary
    evidence: str  # the numbers behind it, in words a person can check against the curves
    severity: str  # "warning" or "error"


@dataclass  # not frozen: it is the `diagnostics` node of the trial config, which overrides write into
class DiagnosticsConfig:
    # Series names, as src/sweep_sft/train/loop.py and trial.py log them.
    train_loss: str = "train/loss"
    val_loss: str = "val/loss"
    grad_norm: str = "train/grad_norm"
    epoch: str = "train/epoch"  # fractional epoch at each logged step; gives steps per epoch
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


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"diagnostics.{name} must be >= {low}, got {value}")


def diagnose(
    series: Series, *, steps_per_epoch: int | None = None, config: DiagnosticsConfig | None = None
) -> list[Finding]:
    """All findings, ordered by step. A check whose series is missing or too short is skipped.

    `steps_per_epoch` defaults to what the "train/epoch" series implies; without either, the
    staircase check is skipped."""
    cfg = config or DiagnosticsConfig()
    spe = steps_per_epoch or infer_steps_per_epoch(series, cfg)
    checks: list[Callable[[], list[Finding]]] = [
        lambda: rising_train_loss(series, cfg),
        lambda: loss_spikes(series, cfg),
        lambda: epoch_staircase(series, spe, cfg),
        lambda: below_floor(series, cfg),
        lambda: growing_gap(series, cfg),
        lambda: grad_norm_spikes(series, cfg),
    ]
    findings = [finding for check in checks for finding in check()]
    return sorted(findings, key=lambda f: (f.step, SIGNS.index(f.sign)))


# ---- the checks, one per sign ----


def rising_train_loss(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    points = _points(series, cfg.train_loss, cfg.min_points)
    smooth = _rolling_medians([v for _, v in points], cfg.smooth_points)
    if not smooth:
        return []
    half = cfg.smooth_points // 2
    low = min(range(len(smooth)), key=smooth.__getitem__)
    low_level, end_level = smooth[low], smooth[-1]
    after = points[low + half :]
    if len(after) < cfg.rise_min_points or low_level <= 0 or end_level < low_level * (1 + cfg.rise_min_ratio):
        return []
    tau = _kendall_tau([v for _, v in after])
    if tau < cfg.rise_min_tau:
        return []
    start = _onset(smooth, low, low_level + cfg.onset_fraction * (end_level - low_level))
    onset = points[start + half][0]
    evidence = (
        f"{cfg.train_loss} rose {_pct(end_level / low_level - 1)} from a median {_num(low_level)} around step "
        f"{points[low + half][0]} to {_num(end_level)} around step {points[-1 - half][0]}, rising since step {onset} "
        f"(steps {after[0][0]}-{after[-1][0]}: {len(after)} points, Kendall tau {tau:.2f})"
    )
    return [Finding("rising_train_loss", onset, evidence, "error")]


def loss_spikes(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    points = _points(series, cfg.train_loss, cfg.min_points)
    return _spike_findings("loss_spike", cfg.train_loss, points, cfg.loss_spike_factor, cfg)


def grad_norm_spikes(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    points = _points(series, cfg.grad_norm, cfg.min_points)
    return _spike_findings("grad_norm_spike", cfg.grad_norm, points, cfg.grad_spike_factor, cfg)


def epoch_staircase(series: Series, steps_per_epoch: int | None, cfg: DiagnosticsConfig) -> list[Finding]:
    points = [(s, v) for s, v in _points(series, cfg.train_loss, cfg.min_points) if v > 0]
    if len(points) < cfg.min_points or not steps_per_epoch or steps_per_epoch <= 0:
        return []
    logs = [(s, math.log(v)) for s, v in points]
    # Log scale: loss noise is roughly proportional to the loss. Point-to-point noise from consecutive
    # differences: their median absorbs the trend, their MAD ignores the steps themselves.
    diffs = [b - a for (_, a), (_, b) in zip(logs, logs[1:], strict=False)]
    noise = _mad_sigma(diffs) / math.sqrt(2)
    span = max(1, round(cfg.staircase_span * steps_per_epoch))
    jumps = []
    for boundary in range(steps_per_epoch, points[-1][0], steps_per_epoch):
        before = [p for p in logs if boundary - span < p[0] <= boundary]
        after = [p for p in logs if boundary < p[0] <= boundary + span]
        if min(len(before), len(after)) < cfg.staircase_points:
            continue
        level_before, level_after = _theil_sen_at(before, boundary), _theil_sen_at(after, boundary)
        drop = 1 - math.exp(level_after - level_before)
        sd = noise * math.sqrt(_end_variance(len(before)) + _end_variance(len(after)))
        hit = drop >= cfg.staircase_min_drop and level_before - level_after >= cfg.staircase_z * sd
        jumps.append((boundary, math.exp(level_before), math.exp(level_after), hit))
    hits = [j for j in jumps if j[3]]
    if not hits:
        return []
    boundary, before_level, after_level, _ = hits[0]
    listing = ", ".join(f"{b}: {_num(lb)} -> {_num(la)}{'' if h else ' (not sharp)'}" for b, lb, la, h in jumps)
    evidence = (
        f"{cfg.train_loss} fell {_pct(1 - after_level / before_level)} across the epoch boundary at step "
        f"{boundary} ({_num(before_level)} -> {_num(after_level)}: lines fitted over {span} steps each side, "
        f"point noise {_pct(noise)}); {len(hits)} of {len(jumps)} boundaries sharp: {listing}"
    )
    return [Finding("epoch_staircase", boundary, evidence, "warning")]


def below_floor(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    points = _points(series, cfg.train_loss, cfg.min_points)
    if cfg.loss_floor is None or not points:
        return []
    last = points[-cfg.floor_points :]
    final = median(v for _, v in last)
    if final >= cfg.loss_floor:
        return []
    smooth = _rolling_medians([v for _, v in points], cfg.smooth_points)
    # The onset is where the smoothed loss last came down through the floor and stayed below it.
    above = [i for i, level in enumerate(smooth) if level >= cfg.loss_floor]
    onset_index = (above[-1] + 1 if above else 0) + cfg.smooth_points // 2
    onset = points[min(onset_index, len(points) - 1)][0]
    evidence = (
        f"final {cfg.train_loss} {_num(final)} (median of steps {last[0][0]}-{last[-1][0]}) is "
        f"{_num(final / cfg.loss_floor)}x the floor {_num(cfg.loss_floor)}; below it since step {onset}"
    )
    return [Finding("below_loss_floor", onset, evidence, "warning")]


def growing_gap(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    train = _points(series, cfg.train_loss, cfg.min_points)
    val = _points(series, cfg.val_loss, 1)
    if not train or not val:
        return []
    evals = [(step, v, _train_near(train, step, cfg.gap_train_points)) for step, v in val]
    # An evaluation before the first train point (step 0) has no train loss to compare with.
    evals = [(step, v, t) for step, v, t in evals if step >= train[0][0]]
    if len(evals) < max(cfg.gap_min_evals, cfg.gap_confirm_evals + 1):
        return []
    gaps = [v - t for _, v, t in evals]
    confirm = cfg.gap_confirm_evals
    low = min(range(len(gaps) - confirm), key=gaps.__getitem__)
    base = max(gaps[low], 0.0)
    needed = max(cfg.gap_min_growth, cfg.gap_min_rel_growth * evals[low][1])
    if any(g < base + needed for g in gaps[-confirm:]):
        return []
    start = _onset(gaps, low, base + cfg.onset_fraction * (gaps[-1] - base))
    (s0, v0, t0), (s1, v1, t1) = evals[start], evals[-1]
    listing = ", ".join(f"{s}: {_num(g)}" for (s, _, _), g in zip(evals[start:], gaps[start:], strict=True))
    evidence = (
        f"{cfg.val_loss} - {cfg.train_loss} grew from {_num(gaps[start])} at step {s0} to {_num(gaps[-1])} at step "
        f"{s1} ({cfg.val_loss} {_num(v0)} -> {_num(v1)}, {cfg.train_loss} {_num(t0)} -> {_num(t1)}); "
        f"gap by step: {listing}"
    )
    return [Finding("growing_train_val_gap", s0, evidence, "warning")]


# ---- output: terminal, MLflow tags ----


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


def infer_steps_per_epoch(series: Series, cfg: DiagnosticsConfig | None = None) -> int | None:
    """Steps per epoch from the fractional-epoch series (the loop logs epoch = step / steps_per_epoch)."""
    cfg = cfg or DiagnosticsConfig()
    ratios = [step / epoch for step, epoch in _points(series, cfg.epoch, 1) if epoch > 0 and step > 0]
    return round(median(ratios)) if ratios else None


# ---- helpers ----


@dataclass(frozen=True)
class _Spike:
    first: int  # index of the first point above the threshold
    last: int  # index of the last consecutive one
    peak: int  # index of the highest
    reference: float  # the level of the trailing window at the first point
    window: tuple[int, int]  # steps of that trailing window


def _spike_findings(sign: str, name: str, points: Points, factor: float, cfg: DiagnosticsConfig) -> list[Finding]:
    findings = []
    for spike in _upward_spikes(points, factor, cfg):
        step, value = points[spike.peak]
        ratio = value / spike.reference if spike.reference > 0 else math.inf
        evidence = (
            f"{name} {_num(value)} at step {step} is {ratio:.1f}x the level {_num(spike.reference)} of steps "
            f"{spike.window[0]}-{spike.window[1]}"
        )
        if spike.last > spike.first:
            evidence += f"; high for {spike.last - spike.first + 1} points (steps "
            evidence += f"{points[spike.first][0]}-{points[spike.last][0]})"
        if spike.last == len(points) - 1:
            evidence += "; not back down by the last point"
        findings.append(Finding(sign, points[spike.first][0], evidence, "warning"))
    return findings


def _upward_spikes(points: Points, factor: float, cfg: DiagnosticsConfig) -> list[_Spike]:
    """Runs of points above both `factor` x and `spike_z` noise sds over the recent level.
    On a log scale: noise on a loss or a norm is multiplicative, and a noisy series needs a
    larger spike. Points already judged spikes stay out of later windows, so a spike lasting
    several points is one finding and a level that never comes back down stays flagged."""
    spikes: list[_Spike] = []
    reference: list[int] = []  # indices of points judged normal
    current: _Spike | None = None
    for i, (_, value) in enumerate(points):
        window = [j for j in reference[-cfg.spike_window :] if points[j][1] > 0]
        is_spike = False
        if len(window) >= cfg.spike_min_window and value > 0:
            logs = [(points[j][0], math.log(points[j][1])) for j in window]
            slope, intercept = _theil_sen(logs)
            # The median of the recent half of the window lags less behind a falling curve than the
            # whole window's; the line is never followed downwards, where it would run away from the data.
            recent = logs[-max(cfg.spike_min_window, cfg.spike_window // 2) :]
            level = max(median(v for _, v in recent), intercept + slope * points[i][0])
            noise = _mad_sigma([v - intercept - slope * s for s, v in logs])
            # The line's own uncertainty at the new point widens the band a little on short windows.
            noise *= math.sqrt(1 + _end_variance(len(logs)))
            is_spike = math.log(value) > level + max(math.log(factor), cfg.spike_z * noise)
        if not is_spike:
            reference.append(i)
            if current is not None:
                spikes.append(current)
                current = None
            continue
        if current is None:
            steps = (points[window[0]][0], points[window[-1]][0])
            current = _Spike(i, i, i, math.exp(level), steps)
        else:
            peak = i if value > points[current.peak][1] else current.peak
            current = _Spike(current.first, i, peak, current.reference, current.window)
    if current is not None:
        spikes.append(current)
    return spikes


def _theil_sen(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(slope, intercept) of the Theil-Sen line: the median of pairwise slopes, so a spike does not tilt it."""
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1 :] if b[0] != a[0]]
    slope = median(slopes) if slopes else 0.0
    return slope, median(v - slope * s for s, v in points)


def _theil_sen_at(points: Sequence[tuple[int, float]], x: float) -> float:
    slope, intercept = _theil_sen(points)
    return intercept + slope * x


def _end_variance(m: int) -> float:
    """Variance, in units of the point noise variance, of a line fitted to m evenly spaced points,
    read at one end: 1/m + 3(m - 1)/(m(m + 1))."""
    return (4 * m - 2) / (m * (m + 1))


def _onset(levels: Sequence[float], low: int, threshold: float) -> int:
    """The last index from `low` on whose level is still at or below `threshold`."""
    return max(i for i in range(low, len(levels)) if levels[i] <= threshold)


def _train_near(train: Points, step: int, k: int) -> float:
    nearest = sorted(train, key=lambda p: abs(p[0] - step))[:k]
    return median(v for _, v in nearest)


def _points(series: Series, name: str, min_points: int) -> Points:
    """Finite points of one series, by step; [] when missing or shorter than min_points."""
    raw = series.get(name) or []
    points = sorted(
        (int(p[0]), float(p[1])) for p in raw if len(p) >= 2 and math.isfinite(p[0]) and math.isfinite(p[1])
    )
    return points if len(points) >= min_points else []


def _rolling_medians(values: Sequence[float], width: int) -> list[float]:
    """Centred: element i is the median of values[i : i + width]; empty when too few values."""
    return [median(values[i : i + width]) for i in range(len(values) - width + 1)]


def _mad_sigma(values: Sequence[float], center: float | None = None) -> float:
    if not values:
        return 0.0
    c = median(values) if center is None else center
    return MAD_TO_SIGMA * median(abs(v - c) for v in values)


def _kendall_tau(values: Sequence[float], max_points: int = 300) -> float:
    """Kendall's tau-a of values against their order: +1 a strict rise, 0 no trend. Long series
    are thinned to max_points, which keeps it O(max_points^2)."""
    stride = max(1, math.ceil(len(values) / max_points))
    v = values[::stride]
    pairs = len(v) * (len(v) - 1) // 2
    if pairs == 0:
        return 0.0
    score = sum((v[j] > v[i]) - (v[j] < v[i]) for i in range(len(v)) for j in range(i + 1, len(v)))
    return score / pairs


def _num(x: float) -> str:
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"
