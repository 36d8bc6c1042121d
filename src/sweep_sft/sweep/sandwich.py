"""The sandwich search: the largest (or smallest) value of one parameter whose trials still
meet a constraint, by bisection between a side known to pass and a side that fails.

At lr 0 a base model's general ability is intact (general_drop 0): between that anchor and a
harmful lr there is a largest lr whose drop stays within a tolerance. Likewise the smallest
share of a task_type in the mix at which the task is still learned. The search assumes the
constraint is monotone in the parameter (forgetting grows with lr), keeps a bracket
[passing side, failing side], and narrows it each round with k probes that split it into
k + 1 equal parts (geometric on a log scale), until it is within the precision.

Pure state machine, no Hydra, no training: a sweeper asks `next_probes()`, runs the
trials, and `record()`s each probe's metrics; `state_dict()` is JSON and resumes exactly.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

from sweep_sft.errors import ConfigError

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass
class Constraint:
    """What a probe's trials must meet: `metric op threshold`, for all seeds or their mean."""

    metric: str  # e.g. "general_drop" or "task/exact_match/classification/sentiment"
    op: str  # one of <=, >=, <, >
    threshold: float
    rule: str = "all"  # with several seeds: "all" must pass, or their "mean" must

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(f"sweep.constraint.op must be one of {', '.join(OPS)}; got {self.op!r}")
        if self.rule not in ("all", "mean"):
            raise ConfigError(f"sweep.constraint.rule must be all or mean; got {self.rule!r}")

    def passes(self, results: list[dict[str, float] | None]) -> bool:
        """A failed trial (None) or a missing or non-finite metric counts as a violation."""
        values = [r.get(self.metric) if r is not None else None for r in results]
        if not values or any(v is None or not math.isfinite(v) for v in values):
            return False
        if self.rule == "mean":
            return OPS[self.op](sum(values) / len(values), self.threshold)
        return all(OPS[self.op](v, self.threshold) for v in values)


@dataclass
class SandwichSpec:
    """The search: the bracket's two sides, its scale and precision, probes a round, seeds a probe."""

    passing: float  # the side known (or assumed) to pass: the anchor, e.g. a tiny lr or the full ratio
    failing: float  # the far side, assumed to fail: a harmful lr, a ratio of 0
    scale: str = "log"  # "log": geometric splits, precision is a ratio > 1; "linear": precision is a step
    precision: float = 1.25
    probes_per_round: int = 1
    seeds: int = 1
    # Run the passing side once before bisecting (a trial, not an assumption).
    verify_passing: bool = False

    def __post_init__(self) -> None:
        if self.scale not in ("log", "linear"):
            raise ConfigError(f"sweep.scale must be log or linear; got {self.scale!r}")
        if self.passing == self.failing:
            raise ConfigError("sweep.passing and sweep.failing must differ")
        if self.scale == "log" and (self.passing <= 0 or self.failing <= 0):
            raise ConfigError("sweep.scale=log needs passing and failing > 0 (use a tiny value for an anchor at 0)")
        if self.scale == "log" and self.precision <= 1:
            raise ConfigError(f"sweep.precision on a log scale is a ratio > 1; got {self.precision}")
        if self.scale == "linear" and self.precision <= 0:
            raise ConfigError(f"sweep.precision on a linear scale is a step > 0; got {self.precision}")
        if self.probes_per_round < 1 or self.seeds < 1:
            raise ConfigError("sweep.probes_per_round and sweep.seeds must be >= 1")

    def width(self, a: float, b: float) -> float:
        """The distance between two values on the spec's scale (log: of their ratio)."""
        return abs(math.log(b / a)) if self.scale == "log" else abs(b - a)

    def goal(self) -> float:
        """The bracket width at which the search is done, on the spec's scale."""
        return math.log(self.precision) if self.scale == "log" else self.precision

    def max_rounds(self) -> int:
        """Rounds one probe per round needs, at most: ceil(log2(range / precision))."""
        return max(0, math.ceil(math.log2(self.width(self.passing, self.failing) / self.goal())))


@dataclass
class Probe:
    """One probed value: its round, one metrics dict a seed (None: failed) and whether it passed."""

    value: float
    round: int
    results: list[dict[str, float] | None]
    passed: bool


@dataclass
class Sandwich:
    """The search's state: the bracket [passing, failing], the rounds run and every probe."""

    spec: SandwichSpec
    constraint: Constraint
    passing: float = field(init=False)
    failing: float = field(init=False)
    rounds: int = 0
    probes: list[Probe] = field(default_factory=list)
    # With spec.verify_passing: None until the passing side ran, then whether it passed.
    passing_verified: bool | None = None

    def __post_init__(self) -> None:
        self.passing, self.failing = self.spec.passing, self.spec.failing

    @property
    def verifying(self) -> bool:
        """The passing side is still to be run (spec.verify_passing)."""
        return self.spec.verify_passing and self.passing_verified is None

    @property
    def done(self) -> bool:
        """The bracket is within the precision, or the passing side failed (nothing to bracket)."""
        if self.passing_verified is False:  # nothing to bracket
            return True
        return self.spec.width(self.passing, self.failing) <= self.spec.goal() * (1 + 1e-9)

    def next_probes(self) -> list[float]:
        """This round's probe values, splitting the bracket into k + 1 equal parts; [] when done."""
        if self.verifying:
            return [self.spec.passing]
        if self.done:
            return []
        k = self.spec.probes_per_round
        if self.spec.scale == "log":
            ratio = self.failing / self.passing
            return [self.passing * ratio ** (i / (k + 1)) for i in range(1, k + 1)]
        step = (self.failing - self.passing) / (k + 1)
        return [self.passing + step * i for i in range(1, k + 1)]

    def record(self, outcomes: dict[float, list[dict[str, float] | None]]) -> None:
        """One round's results: for each probe value, one metrics dict per seed (None: failed)."""
        self.rounds += 1
        probes = [Probe(v, self.rounds, r, self.constraint.passes(r)) for v, r in sorted(outcomes.items())]
        self.probes += probes
        if self.verifying:
            self.passing_verified = probes[0].passed
            return
        # Walk from the passing side: the first failure closes the bracket. A pass beyond a
        # failure (noise against monotonicity) is kept in the record, not trusted.
        towards_failing = sorted(probes, key=lambda p: self.spec.width(self.passing, p.value))
        for probe in towards_failing:
            if probe.passed:
                self.passing = probe.value
            else:
                self.failing = probe.value
                break

    def result(self) -> dict[str, Any]:
        """The outcome as JSON: the bracket, rounds, trials and every probe."""
        return {
            "bracket": {"passing": self.passing, "failing": self.failing},
            "done": self.done,
            "passing_verified": self.passing_verified,
            "rounds": self.rounds,
            "trials": sum(len(p.results) for p in self.probes),
            "probes": [asdict(p) for p in self.probes],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything from_state needs to resume the search exactly, as JSON."""
        return {"spec": asdict(self.spec), "constraint": asdict(self.constraint), **self.result()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Sandwich:
        """The search a state_dict() describes."""
        search = cls(SandwichSpec(**state["spec"]), Constraint(**state["constraint"]))
        search.passing, search.failing = state["bracket"]["passing"], state["bracket"]["failing"]
        search.rounds = state["rounds"]
        search.passing_verified = state.get("passing_verified")
        search.probes = [Probe(**p) for p in state["probes"]]
        return search
