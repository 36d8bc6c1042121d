"""Hydra's override grammar as an Optuna search space: `a=1,2` and `choice(...)` are
categorical, `range(...)` (Hydra's exclusive end) is a stepped int or float, `interval(...)`
is continuous, `tag(log, ...)` samples on a log scale. Other overrides stay fixed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from sweep_sft.errors import ConfigError


@dataclass
class Param:
    """One searched parameter: its key, Optuna distribution and, when discrete, its values."""

    key: str
    distribution: Any  # an optuna distribution
    grid: list | None  # the values, when discrete
    strings: dict | None = None  # categorical value -> its text in the override

    def override(self, value: Any) -> str:
        """The override that sets the parameter to `value`, spelled as the command line spelled it."""
        if self.strings is not None:
            return f"{self.key}={self.strings[value]}"
        return f"{self.key}={value!r}"


def parse(arguments: list[str], params: dict[str, str]) -> tuple[list[Param], list[str]]:
    """(searched parameters, fixed overrides) from the command line and the sweeper's params."""
    parser = OverridesParser.create()
    from_config = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    from_cli = parser.parse_overrides(arguments)
    cli_keys = {o.get_key_element() for o in from_cli}
    space: list[Param] = []
    fixed: list[str] = []
    for o in [*[o for o in from_config if o.get_key_element() not in cli_keys], *from_cli]:
        if o.is_sweep_override():
            space.append(_param(o))
        else:
            fixed.append(o.input_line)
    return space, fixed


def _param(o: Override) -> Param:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, sweep = o.get_key_element(), o.value()
    log = "log" in (getattr(sweep, "tags", None) or set())
    if isinstance(sweep, IntervalSweep):
        lo, hi = sweep.start, sweep.end
        if isinstance(lo, int) and isinstance(hi, int):
            return Param(key, IntDistribution(lo, hi, log=log), None)
        return Param(key, FloatDistribution(float(lo), float(hi), log=log), None)
    values = list(o.sweep_iterator())
    if not values:
        raise ConfigError(f"{o.input_line}: the sweep has no values")
    if isinstance(sweep, RangeSweep) and all(isinstance(v, int) for v in values):
        step = values[1] - values[0] if len(values) > 1 else 1
        if log and step != 1:
            raise ConfigError(f"{o.input_line}: a log-scale int range needs step 1")
        return Param(key, IntDistribution(values[0], values[-1], step=step, log=log), values)
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        if log:
            raise ConfigError(f"{o.input_line}: tag(log) applies to interval() or an int range(), not a choice")
        strings = dict(zip(values, o.sweep_string_iterator(), strict=True))
        return Param(key, CategoricalDistribution(values), values, strings)
    raise ConfigError(f"{o.input_line}: unsupported sweep {type(sweep).__name__}")
