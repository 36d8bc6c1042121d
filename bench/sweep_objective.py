"""The synthetic objective every arm of bench/sweep_efficiency.py and bench/sweep_scale.py runs:
a learning curve set by two hyper-parameters plus seeded noise, a fixed sleep per step, an
evaluation every EVAL_EVERY steps told to the caller's `report` (which raises to stop the trial,
as a pruner does). No training: the arms differ only in how they dispatch and stop trials.

loss(t) = floor + 2 / (1 + t / tau) + noise, with floor = (log10(x) + 3.5)^2 + (w - 0.3)^2 / 2
and tau = 4 + 12 * w: the best x is 10^-3.5 and the best w 0.3; a bad x shows at the first
evaluations, a large w learns slowly (its curve catches up late, which a pruner can misjudge).
The noise is a function of (x, w, step), so a point scores the same in every arm, and every arm
evaluates the same points: `points(n, seed)`, the first n that Optuna's seeded RandomSampler
proposes, which our sweeper's rows draw themselves and the other arms are given.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

STEPS, EVAL_EVERY = 60, 5
X_RANGE = (1e-6, 1e-1)  # log-uniform
W_RANGE = (0.0, 1.0)  # uniform
NOISE = 0.01


class Stop(Exception):
    """Raised by a `report` callback: the caller's pruner stops the trial at this evaluation."""


def loss(x: float, w: float, step: int) -> float:
    """The curve at `step` for the point (x, w), noise included (deterministic in its inputs)."""
    floor = (math.log10(x) + 3.5) ** 2 + (w - 0.3) ** 2 / 2
    noise = random.Random(f"{x!r}/{w!r}/{step}").gauss(0.0, NOISE)
    return floor + 2 / (1 + step / (4 + 12 * w)) + noise


def points(n: int, seed: int) -> list[dict[str, float]]:
    """The first n points {x, w} Optuna's RandomSampler(seed) proposes, asked one trial at a time
    with x then w, as hydra/sweeper=optuna5 asks them for `x=tag(log,interval(..)) w=interval(..)`."""
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = {"x": FloatDistribution(*X_RANGE, log=True), "w": FloatDistribution(*W_RANGE)}
    return [study.ask(space).params for _ in range(n)]


def run_curve(
    x: float, w: float, report: Callable[[int, float], None] | None, step_s: float, steps: int = STEPS
) -> dict:
    """One trial: sleep step_s per step, evaluate every EVAL_EVERY steps (step 0 included) and tell
    `report(step, value)`; a Stop from it ends the trial PRUNED. Returns the trial's record:
    value (the last evaluation), state, steps (optimizer steps run), t_start and t_end (epoch s)."""
    t_start = time.time()
    state, step, value = "COMPLETE", 0, loss(x, w, 0)
    try:
        if report is not None:
            report(0, value)
        for step in range(1, steps + 1):
            time.sleep(step_s)
            if step % EVAL_EVERY == 0 or step == steps:
                value = loss(x, w, step)
                if report is not None:
                    report(step, value)
    except Stop:
        state = "PRUNED"
    return {"value": value, "state": state, "steps": step, "t_start": t_start, "t_end": time.time()}
