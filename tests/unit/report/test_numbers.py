"""The report's numbers: three significant figures, integers as integers."""

from __future__ import annotations

import pytest

from sweep_sft.report.numbers import sig3


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.06836, "0.0684"),
        (0.007726, "0.00773"),
        (-0.01637, "-0.0164"),
        (3.11949, "3.12"),
        (2.5, "2.5"),
        (1e-05, "1e-05"),
        (0.00031623, "0.000316"),
        (600, "600"),
        (600.0, "600"),  # MLflow stores every metric as a float: a step count is still an integer
        (123456, "123456"),
        (12345.6, "12300"),  # no 1.23e+04
        (999.96, "1000"),
        (0.0, "0"),
        (float("nan"), "nan"),
        (None, ""),
        ("lr=0.001", "lr=0.001"),
        (True, "True"),
    ],
)
def test_three_significant_figures_and_integers_as_integers(value, shown):
    assert sig3(value) == shown
