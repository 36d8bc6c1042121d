"""The detectors, one per sign (diagnostics/findings.py says what each means), and `diagnose`, which runs them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

from sweep_sft.diagnostics.findings import SIGNS, DiagnosticsConfig, Finding, Points, Series
from sweep_sft.diagnostics.robust import (
    end_variance,
    kendall_tau,
    last_at_or_below,
    mad_sigma,
    rolling_medians,
    theil_sen,
    theil_sen_at,
)


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


def infer_steps_per_epoch(series: Series, cfg: DiagnosticsConfig | None = None) -> int | None:
    """Steps per epoch from the fractional-epoch series (the loop logs epoch = step / steps_per_epoch)."""
    cfg = cfg or DiagnosticsConfig()
    ratios = [step / epoch for step, epoch in _points(series, cfg.epoch, 1) if epoch > 0 and step > 0]
    return round(median(ratios)) if ratios else None


# ---- the checks, one per sign ----


def rising_train_loss(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    """The rising_train_loss finding, if train loss rises steadily after its low."""
    points = _points(series, cfg.train_loss, cfg.min_points)
    smooth = rolling_medians([v for _, v in points], cfg.smooth_points)
    if not smooth:
        return []
    half = cfg.smooth_points // 2
    low = min(range(len(smooth)), key=smooth.__getitem__)
    low_level, end_level = smooth[low], smooth[-1]
    after = points[low + half :]
    if len(after) < cfg.rise_min_points or low_level <= 0 or end_level < low_level * (1 + cfg.rise_min_ratio):
        return []
    tau = kendall_tau([v for _, v in after])
    if tau < cfg.rise_min_tau:
        return []
    start = last_at_or_below(smooth, low, low_level + cfg.onset_fraction * (end_level - low_level))
    onset = points[start + half][0]
    evidence = (
        f"{cfg.train_loss} rose {_pct(end_level / low_level - 1)} from a median {_num(low_level)} around step "
        f"{points[low + half][0]} to {_num(end_level)} around step {points[-1 - half][0]}, rising since step {onset} "
        f"(steps {after[0][0]}-{after[-1][0]}: {len(after)} points, Kendall tau {tau:.2f})"
    )
    return [Finding("rising_train_loss", onset, evidence, "error")]


def loss_spikes(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    """A loss_spike finding per spike of the train loss."""
    points = _points(series, cfg.train_loss, cfg.min_points)
    return _spike_findings("loss_spike", cfg.train_loss, points, cfg.loss_spike_factor, cfg)


def grad_norm_spikes(series: Series, cfg: DiagnosticsConfig) -> list[Finding]:
    """A grad_norm_spike finding per spike of the gradient norm."""
    points = _points(series, cfg.grad_norm, cfg.min_points)
    return _spike_findings("grad_norm_spike", cfg.grad_norm, points, cfg.grad_spike_factor, cfg)


def epoch_staircase(series: Series, steps_per_epoch: int | None, cfg: DiagnosticsConfig) -> list[Finding]:
    """The epoch_staircase finding, if train loss drops sharply at epoch boundaries."""
    points = [(s, v) for s, v in _points(series, cfg.train_loss, cfg.min_points) if v > 0]
    if len(points) < cfg.min_points or not steps_per_epoch or steps_per_epoch <= 0:
        return []
    logs = [(s, math.log(v)) for s, v in points]
    # Log scale: loss noise is roughly proportional to the loss. Point-to-point noise from consecutive
    # differences: their median absorbs the trend, their MAD ignores the steps themselves.
    diffs = [b - a for (_, a), (_, b) in zip(logs, logs[1:], strict=False)]
    noise = mad_sigma(diffs) / math.sqrt(2)
    span = max(1, round(cfg.staircase_span * steps_per_epoch))
    jumps = []
    for boundary in range(steps_per_epoch, points[-1][0], steps_per_epoch):
        before = [p for p in logs if boundary - span < p[0] <= boundary]
        after = [p for p in logs if boundary < p[0] <= boundary + span]
        if min(len(before), len(after)) < cfg.staircase_points:
            continue
        level_before, level_after = theil_sen_at(before, boundary), theil_sen_at(after, boundary)
        drop = 1 - math.exp(level_after - level_before)
        sd = noise * math.sqrt(end_variance(len(before)) + end_variance(len(after)))
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
    """The below_loss_floor finding, if the final train loss is under diagnostics.loss_floor."""
    points = _points(series, cfg.train_loss, cfg.min_points)
    if cfg.loss_floor is None or not points:
        return []
    last = points[-cfg.floor_points :]
    final = median(v for _, v in last)
    if final >= cfg.loss_floor:
        return []
    smooth = rolling_medians([v for _, v in points], cfg.smooth_points)
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
    """The growing_train_val_gap finding, if val loss pulls away from train loss."""
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
    start = last_at_or_below(gaps, low, base + cfg.onset_fraction * (gaps[-1] - base))
    (s0, v0, t0), (s1, v1, t1) = evals[start], evals[-1]
    listing = ", ".join(f"{s}: {_num(g)}" for (s, _, _), g in zip(evals[start:], gaps[start:], strict=True))
    evidence = (
        f"{cfg.val_loss} - {cfg.train_loss} grew from {_num(gaps[start])} at step {s0} to {_num(gaps[-1])} at step "
        f"{s1} ({cfg.val_loss} {_num(v0)} -> {_num(v1)}, {cfg.train_loss} {_num(t0)} -> {_num(t1)}); "
        f"gap by step: {listing}"
    )
    return [Finding("growing_train_val_gap", s0, evidence, "warning")]


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
            slope, intercept = theil_sen(logs)
            # The median of the recent half of the window lags less behind a falling curve than the
            # whole window's; the line is never followed downwards, where it would run away from the data.
            recent = logs[-max(cfg.spike_min_window, cfg.spike_window // 2) :]
            level = max(median(v for _, v in recent), intercept + slope * points[i][0])
            noise = mad_sigma([v - intercept - slope * s for s, v in logs])
            # The line's own uncertainty at the new point widens the band a little on short windows.
            noise *= math.sqrt(1 + end_variance(len(logs)))
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


def _num(x: float) -> str:
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"
