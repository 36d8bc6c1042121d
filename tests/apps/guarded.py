"""`python guarded.py MODULE ARGS...`: run `python -m MODULE ARGS...` with training forbidden.

tests/integration/test_bad_inputs.py runs each bad input through this, so "fails before training" is a fact
the test observes (the training loop was never entered), not a guess from timings."""

from __future__ import annotations

import runpy
import sys

import sweep_sft.train.loop as loop
import sweep_sft.trial.run as trial_run

TRAINING_STARTED = "guarded: training started"


def _forbidden(*args, **kwargs):
    print(TRAINING_STARTED, file=sys.stderr, flush=True)
    raise SystemExit(99)


# Both bindings: the loop's own, and the name the trial imported from it.
loop.train = trial_run.train = _forbidden

if __name__ == "__main__":
    module, *rest = sys.argv[1:]
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
