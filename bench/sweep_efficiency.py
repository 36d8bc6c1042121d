"""How well a sweep keeps its slots busy: our Optuna sweeper (hydra/sweeper=optuna5) through the
real local Slurm cluster (hydra/launcher=slurm_local), 4 slots (n_jobs = array_parallelism = 4),
batch vs asynchronous dispatch (hydra.sweeper.dispatch), each with no pruner, median and
successive halving; then, on the same objective and slots, Ray Tune with ASHA and Optuna's own
pattern (4 worker processes on one journal file), each with the same pruner. The trial is the
synthetic curve of bench/sweep_objective.py (bench/sweep_app.py runs it as a Hydra app).

Every arm evaluates the same points, those Optuna's RandomSampler (seed --seed) proposes: our
sweeper rows draw them (hydra/sweeper/sampler=random), Ray Tune and the Optuna workers are given
them in that order (bench/sweep_objective.py). So best values differ only by what the pruner
stopped, and times by dispatch. Columns: see bench/sweep_rows.py.

    python bench/sweep_efficiency.py [--quick] [--trials 32] [--step-s 0.1] [--json rows.json]
    python bench/sweep_efficiency.py --arms batch,async --pruners none     # some rows only

A row whose dispatch this checkout's sweeper lacks (hydra.sweeper.dispatch) is skipped, said so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweep_native import optuna_workers, ray_asha
from sweep_objective import STEPS, W_RANGE, X_RANGE, points
from sweep_rows import add_run_best, make_row, table

HERE = Path(__file__).resolve().parent
APP = HERE / "sweep_app.py"
SWEEPER_ARMS = ("batch", "async")
ARMS = (*SWEEPER_ARMS, "ray_asha", "optuna_workers")
PRUNERS = ("none", "median", "successive_halving")


def sweep_overrides(name: str, sweep_dir: Path, args: argparse.Namespace, dispatch: str, pruner: str) -> list[str]:
    """The Hydra multirun of one sweeper row."""
    overrides = [
        "-m",
        "hydra/sweeper=optuna5",
        "hydra/sweeper/sampler=random",
        f"hydra.sweeper.sampler.seed={args.seed}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.n_jobs={args.slots}",
        f"hydra.sweeper.study_name={name}",
        "hydra.sweeper.max_failure_rate=1.0",
        f"hydra/sweeper/pruner={pruner}",
        "hydra.searchpath=[pkg://sweep_sft.conf]",
        "hydra/launcher=slurm_local",
        f"hydra.launcher.array_parallelism={args.slots}",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=tag(log,interval({X_RANGE[0]},{X_RANGE[1]}))",
        f"w=interval({W_RANGE[0]},{W_RANGE[1]})",
        f"step_s={args.step_s}",
        f"steps={STEPS}",
    ]
    if pruner != "none":
        overrides.append("hydra.sweeper.prune_metric=val/loss")
    if has_dispatch():
        overrides.append(f"hydra.sweeper.dispatch={dispatch}")
    return overrides


def has_dispatch() -> bool:
    """Whether this checkout's Optuna sweeper has hydra.sweeper.dispatch (batch | async | auto)."""
    from hydra_plugins.sweep_sft_optuna.config import OptunaSweeperConf

    return "dispatch" in {f.name for f in dataclasses.fields(OptunaSweeperConf)}


def sweeper_arm(root: Path, args: argparse.Namespace, dispatch: str, pruner: str) -> tuple[list[dict], float, float]:
    """One sweep as a user runs it; its trials from the jobs' metrics.json files."""
    name = f"{dispatch}-{pruner}"
    sweep_dir = root / name
    origin = time.time()
    proc = subprocess.run(
        [sys.executable, str(APP), *sweep_overrides(name, sweep_dir, args, dispatch, pruner)],
        cwd=root,
        capture_output=True,
        text=True,
    )
    wall = time.time() - origin
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return job_records(sweep_dir), origin, wall


def job_records(sweep_dir: Path) -> list[dict]:
    """Every job's record (metrics.json) under a sweep folder, as sweep_rows reads them."""
    trials = []
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        trials.append(
            {
                "value": m["metrics"]["val/loss"],
                "state": m["state"],
                "steps": m["steps"],
                "number": m["number"],
                "params": m["params"],
                **m["timing"],
            }
        )
    return trials


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The rows to run: (dispatch, pruner); ray_asha once (its own scheduler), the rest per pruner."""
    rows = []
    for arm in args.arms:
        if arm == "ray_asha":
            rows.append((arm, "asha"))
            continue
        if arm == "async" and not has_dispatch():
            print("async rows skipped: this checkout's sweeper has no hydra.sweeper.dispatch", file=sys.stderr)
            continue
        rows += [(arm, pruner) for pruner in args.pruners]
    return rows


def run_row(
    root: Path, args: argparse.Namespace, dispatch: str, pruner: str, shared: list[dict]
) -> tuple[list[dict], float, float]:
    """One row's trials, origin and wall time; a sweeper row that drew other points than the
    shared ones says so (the arms would not be comparable)."""
    if dispatch == "ray_asha":
        return ray_asha(shared, args.slots, args.step_s, root)
    if dispatch == "optuna_workers":
        return optuna_workers(shared, args.slots, args.step_s, args.seed, root, pruner)
    trials, origin, wall = sweeper_arm(root, args, dispatch, pruner)
    if not same_points(trials, shared):
        print(f"  warning: {dispatch}/{pruner} evaluated other points than the other arms", file=sys.stderr)
    return trials, origin, wall


def same_points(trials: list[dict], shared: list[dict]) -> bool:
    """Whether the trials evaluated exactly the shared points (in any order)."""

    def key(p: dict) -> tuple:
        return (round(p["x"], 12), round(p["w"], 12))

    return sorted(key(t["params"]) for t in trials) == sorted(key(p) for p in shared)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 trials of 60 steps x 0.02 s (about two minutes)")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--step-s", type=float, default=0.1, help="sleep per step (a full trial: 60 steps)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {','.join(ARMS)}")
    parser.add_argument("--pruners", default=",".join(PRUNERS), help=f"comma-separated, of {','.join(PRUNERS)}")
    parser.add_argument("--json", type=Path, help="write the rows here (a JSON list, one object per row)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.step_s = 12, 0.02
    args.arms, args.pruners = args.arms.split(","), args.pruners.split(",")
    for given, known, flag in ((args.arms, ARMS, "--arms"), (args.pruners, PRUNERS, "--pruners")):
        if unknown := set(given) - set(known):
            parser.error(f"{flag}: unknown {sorted(unknown)}; expected some of {','.join(known)}")
    if args.trials < 1 or args.slots < 1 or args.step_s < 0:
        parser.error("--trials and --slots must be >= 1, --step-s >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows, trials_of, origins = [], [], []
    shared = points(args.trials, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for dispatch, pruner in plan(args):
            print(f"running {dispatch} / {pruner} ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]  # a busy machine (or cluster) slows every arm: said per row
            trials, origin, wall = run_row(Path(tmp), args, dispatch, pruner, shared)
            rows.append({**make_row(dispatch, pruner, trials, origin, wall, args.slots), "load_1m": load})
            trials_of.append(trials)
            origins.append(origin)
            print(f"  {wall:.1f} s, {len(trials)} trials (load average {load:.1f} at its start)", file=sys.stderr)
    run_best = add_run_best(rows, trials_of, origins)
    print(f"{args.trials} trials of {STEPS} steps x {args.step_s} s, {args.slots} slots; run best {run_best}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
