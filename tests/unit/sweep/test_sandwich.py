"""The sandwich search against synthetic trials with a known answer."""

from __future__ import annotations

import json
import math

import pytest

from sweep_sft.errors import ConfigError
from sweep_sft.sweep.sandwich import Constraint, Sandwich, SandwichSpec

LR_STAR = 3.7e-4  # general_drop crosses 0.02 here


def drop(lr: float, seed: int = 0) -> dict[str, float]:
    """A monotone forgetting curve: general_drop = 0.02 * (lr / LR_STAR) ** 1.5."""
    return {"general_drop": 0.02 * (lr / LR_STAR) ** 1.5}


def run(search: Sandwich, trial) -> Sandwich:
    while probes := search.next_probes():
        search.record({v: [trial(v, s) for s in range(search.spec.seeds)] for v in probes})
    return search


def lr_search(**spec) -> Sandwich:
    return Sandwich(SandwichSpec(passing=1e-6, failing=1e-2, **spec), Constraint("general_drop", "<=", 0.02))


def test_one_probe_per_round_brackets_the_threshold_within_the_bound():
    search = run(lr_search(precision=1.25), drop)
    assert search.passing <= LR_STAR < search.failing
    assert search.failing / search.passing <= 1.25 * (1 + 1e-9)
    bound = math.ceil(math.log2(math.log(1e-2 / 1e-6) / math.log(1.25))) + 1
    assert search.rounds <= bound and search.spec.max_rounds() + 1 == bound
    # a grid of equal resolution over the same range would need this many trials
    assert math.ceil(math.log(1e4) / math.log(1.25)) > 4 * search.rounds


def test_k_probes_per_round_take_fewer_rounds():
    one = run(lr_search(precision=1.1), drop)
    three = run(lr_search(precision=1.1, probes_per_round=3), drop)
    assert three.passing <= LR_STAR < three.failing
    assert three.rounds < one.rounds
    assert len(three.probes) == 3 * three.rounds


def test_smallest_passing_ratio_on_a_linear_scale():
    """Exact match of a task stays >= 0.9 down to a ratio of 0.137."""
    search = Sandwich(
        SandwichSpec(passing=1.0, failing=0.0, scale="linear", precision=0.01),
        Constraint("task/exact_match/t", ">=", 0.9),
    )
    run(search, lambda ratio, seed: {"task/exact_match/t": 1.0 if ratio >= 0.137 else 0.2})
    assert search.failing < 0.137 <= search.passing
    assert search.passing - search.failing <= 0.01 + 1e-12
    assert search.rounds <= math.ceil(math.log2(1.0 / 0.01)) + 1


def test_a_failed_trial_counts_as_a_violation():
    def flaky(lr, seed):
        return None if lr > 1e-4 else drop(lr)

    search = run(lr_search(precision=1.5), flaky)
    assert search.passing <= 1e-4 < search.failing


def test_seeds_rule_all_vs_mean():
    def noisy(lr, seed):
        return {"general_drop": drop(lr)["general_drop"] + (0.004 if seed == 0 else -0.004)}

    strict = Sandwich(SandwichSpec(1e-6, 1e-2, precision=1.05, seeds=2), Constraint("general_drop", "<=", 0.02, "all"))
    mean = Sandwich(SandwichSpec(1e-6, 1e-2, precision=1.05, seeds=2), Constraint("general_drop", "<=", 0.02, "mean"))
    run(strict, noisy), run(mean, noisy)
    assert strict.failing <= mean.failing  # "all" is the more cautious rule
    assert mean.passing <= LR_STAR * 1.05 and mean.failing >= LR_STAR / 1.05
    assert all(len(p.results) == 2 for p in mean.probes)


def test_resume_from_state_gives_the_same_answer():
    full = run(lr_search(precision=1.2), drop)
    partial = lr_search(precision=1.2)
    for _ in range(3):
        partial.record({v: [drop(v)] for v in partial.next_probes()})
    resumed = Sandwich.from_state(json.loads(json.dumps(partial.state_dict())))
    assert resumed.rounds == 3 and len(resumed.probes) == 3
    run(resumed, drop)
    assert (resumed.passing, resumed.failing, resumed.rounds) == (full.passing, full.failing, full.rounds)
    assert resumed.result()["trials"] == full.result()["trials"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"passing": 0.0, "failing": 1e-2}, "log needs passing and failing > 0"),
        ({"passing": 1e-6, "failing": 1e-2, "precision": 1.0}, "ratio > 1"),
        ({"passing": 1.0, "failing": 0.0, "scale": "linear", "precision": 0}, "step > 0"),
        ({"passing": 1.0, "failing": 1.0}, "must differ"),
        ({"passing": 1e-6, "failing": 1e-2, "scale": "cubic"}, "log or linear"),
    ],
)
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        SandwichSpec(**spec)
    with pytest.raises(ConfigError, match="sweep.constraint.op"):
        Constraint("general_drop", "=<", 0.02)
