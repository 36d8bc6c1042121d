"""What pruning saves: the same Optuna study on the embedded default, with and without a
pruner, counted in trial-steps (optimizer steps summed over all trials).

A seeded random sampler proposes the same points in both arms (it never looks at results),
so the arms differ only in what the pruner stops: an equal best value means the pruner never
stopped the winner. Each arm is a real `python -m sweep_sft -m hydra/sweeper=optuna5` sweep.

    python bench/pruning.py [--trials 10] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_arm(root: Path, name: str, args: argparse.Namespace, pruner: list[str]) -> dict:
    sweep_dir = root / name
    overrides = [
        "-m",
        "hydra/sweeper=optuna5",
        "hydra/sweeper/sampler=random",
        f"hydra.sweeper.sampler.seed={args.seed}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.study_name={name}",
        "hydra.sweeper.max_failure_rate=1.0",
        f"hydra.sweep.dir={sweep_dir}",
        f"lr=tag(log,interval({args.lr_low},{args.lr_high}))",
        f"trainer.max_steps={args.steps}",
        f"trainer.eval_every={args.eval_every}",
        "trainer.progress=false",
        "eval.generate=false",
        "eval.general_probe=false",
        "objective=val/loss",
        "tracking=off",
        *pruner,
    ]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sweep_sft", *overrides], cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads((sweep_dir / "optuna_result.json").read_text())
    result["wall_s"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of a full trial")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--lr-low", type=float, default=1e-5)
    parser.add_argument("--lr-high", type=float, default=3e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup", type=int, default=3, help="trials the median pruner never stops")
    parser.add_argument("--warmup", type=int, default=40, help="steps before the median pruner judges")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = run_arm(root, "no_pruning", args, [])
        pruned = run_arm(
            root,
            "median_pruning",
            args,
            [
                "hydra/sweeper/pruner=median",
                f"hydra.sweeper.pruner.n_startup_trials={args.startup}",
                f"hydra.sweeper.pruner.n_warmup_steps={args.warmup}",
                "hydra.sweeper.prune_metric=val/loss",
            ],
        )
    print(
        f"\n{args.trials} trials, random sampler seed {args.seed}, lr log-uniform in [{args.lr_low:g}, "
        f"{args.lr_high:g}], {args.steps} steps per full trial, val/loss every {args.eval_every} steps\n"
    )
    print("| arm | complete | pruned | failed | trial-steps | best val/loss | best lr | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("no pruning", full), ("median pruner", pruned)):
        s = r["states"]
        print(
            f"| {name} | {s.get('COMPLETE', 0)} | {s.get('PRUNED', 0)} | {s.get('FAIL', 0)} | {r['trial_steps']} | "
            f"{r['best']['value']:.4f} | {r['best']['params']['lr']:.3g} | {r['wall_s']:.0f} |"
        )
    saved = 1 - pruned["trial_steps"] / full["trial_steps"]
    same = abs(pruned["best"]["value"] - full["best"]["value"]) < 1e-9
    print(f"\npruning saved {saved:.0%} of trial-steps; best value {'equal' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
