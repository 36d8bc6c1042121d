"""How the report prints a number: three significant figures (0.06836 -> 0.0684, -0.01637 ->
-0.0164), integers (and whole floats, as MLflow stores every metric) as integers, no exponent
for values of 1000 and over (12345.6 -> 12300)."""

from __future__ import annotations

import math
from typing import Any

FIGURES = 3


def sig3(value: Any) -> str:
    """A number at three significant figures as the report shows it; anything else as text
    (None as nothing)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e15):
        return str(int(value))
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.{FIGURES}g}"
    return str(int(float(text))) if "e+" in text else text  # 1.23e+04 reads worse than 12300
