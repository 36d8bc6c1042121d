"""Robust statistics for noisy curves: lines, spreads and trends that one wild point does not move."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median

# MAD times this estimates the standard deviation of normal noise.
MAD_TO_SIGMA = 1.4826


def theil_sen(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(slope, intercept) of the Theil-Sen line: the median of pairwise slopes, so a spike does not tilt it."""
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1 :] if b[0] != a[0]]
    slope = median(slopes) if slopes else 0.0
    return slope, median(v - slope * s for s, v in points)


def theil_sen_at(points: Sequence[tuple[int, float]], x: float) -> float:
    """The Theil-Sen line through points, read at x."""
    slope, intercept = theil_sen(points)
    return intercept + slope * x


def end_variance(m: int) -> float:
    """Variance, in units of the point noise variance, of a line fitted to m evenly spaced points,
    read at one end: 1/m + 3(m - 1)/(m(m + 1))."""
    return (4 * m - 2) / (m * (m + 1))


def last_at_or_below(levels: Sequence[float], low: int, threshold: float) -> int:
    """The last index from `low` on whose level is still at or below `threshold`."""
    return max(i for i in range(low, len(levels)) if levels[i] <= threshold)


def rolling_medians(values: Sequence[float], width: int) -> list[float]:
    """Centred: element i is the median of values[i : i + width]; empty when too few values."""
    return [median(values[i : i + width]) for i in range(len(values) - width + 1)]


def mad_sigma(values: Sequence[float], center: float | None = None) -> float:
    """The noise sd the median absolute deviation estimates (around the median, or center)."""
    if not values:
        return 0.0
    c = median(values) if center is None else center
    return MAD_TO_SIGMA * median(abs(v - c) for v in values)


def kendall_tau(values: Sequence[float], max_points: int = 300) -> float:
    """Kendall's tau-a of values against their order: +1 a strict rise, 0 no trend. Long series
    are thinned to max_points, which keeps it O(max_points^2)."""
    stride = max(1, math.ceil(len(values) / max_points))
    v = values[::stride]
    pairs = len(v) * (len(v) - 1) // 2
    if pairs == 0:
        return 0.0
    score = sum((v[j] > v[i]) - (v[j] < v[i]) for i in range(len(v)) for j in range(i + 1, len(v)))
    return score / pairs
