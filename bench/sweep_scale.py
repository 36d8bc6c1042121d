"""The sweep controller at scale: an optuna5 sweep of many very short trials of bench/sweep_app.py
(5 steps, no sleep, no pruner; Optuna's RandomSampler, seed 0) through the local Slurm cluster
(hydra/launcher=slurm_local), and what the controller process itself costs:

- CPU seconds per trial: the controller's own user + system CPU (resource.getrusage(RUSAGE_SELF)
  at its exit: the sbatch/sacct processes it starts and the Slurm jobs are not in it), over the trials;
- scheduler queries per minute: sbatch, sacct, squeue, scancel and scontrol calls, counted by
  wrapper scripts put first on the controller's PATH (calls from inside the jobs are not counted);
- its RSS at start (before Hydra), at the end, and its peak.

    python bench/sweep_scale.py [--trials 1000] [--slots 16] [--json scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE / "sweep_app.py"
SCHEDULER_TOOLS = ("sbatch", "sacct", "squeue", "scancel", "scontrol")
CALLS_FILE = "scheduler_calls.log"
USAGE_FILE = "controller_usage.json"


def write_wrappers(folder: Path, log: Path) -> None:
    """A script per scheduler tool in folder: it logs its name (when not run inside a Slurm job),
    then runs the real tool with the same arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in SCHEDULER_TOOLS:
        real = shutil.which(tool)
        if real is None:
            raise SystemExit(f"{tool} is not on PATH: is the local Slurm cluster up (make slurm-up)?")
        script = folder / tool
        script.write_text(f'#!/bin/sh\n[ -n "$SLURM_JOB_ID" ] || echo {tool} >> "{log}"\nexec "{real}" "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def overrides(sweep_dir: Path, trials: int, slots: int) -> list[str]:
    """The Hydra multirun of the scale sweep."""
    return [
        "-m",
        "hydra/sweeper=optuna5",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.n_jobs={slots}",
        "hydra.sweeper.max_failure_rate=0.0",
        "hydra.searchpath=[pkg://sweep_sft.conf]",
        "hydra/launcher=slurm_local",
        f"hydra.launcher.array_parallelism={slots}",
        f"hydra.sweep.dir={sweep_dir}",
        "x=tag(log,interval(1e-6,1e-1))",
        "w=interval(0.0,1.0)",
        "step_s=0",
        "steps=5",
    ]


def summarize(calls: Counter, usage: dict, wall_s: float, trials: int, states: dict) -> dict:
    """The bench's figures from the raw counts: per trial, per minute, memory."""
    minutes = wall_s / 60
    return {
        "trials": trials,
        "recorded": sum(states.values()),
        "states": states,
        "wall_s": wall_s,
        "controller_cpu_s": usage["cpu_s"],
        "cpu_s_per_trial": usage["cpu_s"] / trials,
        "scheduler_calls": {tool: calls.get(tool, 0) for tool in SCHEDULER_TOOLS},
        "scheduler_calls_per_min": sum(calls.values()) / minutes if minutes > 0 else None,
        "rss_start_mb": usage["rss_start_mb"],
        "rss_end_mb": usage["rss_end_mb"],
        # ru_maxrss is sampled by the kernel; the RSS read at exit can be a little above it
        "rss_peak_mb": max(usage["rss_peak_mb"], usage["rss_end_mb"]),
    }


def report(r: dict) -> str:
    """The figures as a Markdown table."""
    calls = ", ".join(f"{tool} {n}" for tool, n in r["scheduler_calls"].items())
    rows = [
        ("trials recorded / asked", f"{r['recorded']} / {r['trials']}"),
        ("wall s", f"{r['wall_s']:.1f}"),
        ("controller CPU s (children excluded)", f"{r['controller_cpu_s']:.1f}"),
        ("controller CPU s per trial", f"{r['cpu_s_per_trial']:.3f}"),
        ("scheduler calls per minute", f"{r['scheduler_calls_per_min']:.1f}"),
        ("scheduler calls", calls),
        (
            "controller RSS MB: start / end / peak",
            f"{r['rss_start_mb']:.0f} / {r['rss_end_mb']:.0f} / {r['rss_peak_mb']:.0f}",
        ),
    ]
    return "\n".join(["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def run(root: Path, trials: int, slots: int) -> dict:
    """The sweep, run as a user runs it with the wrappers first on PATH; its figures."""
    calls_log = root / CALLS_FILE
    write_wrappers(root / "bin", calls_log)
    calls_log.touch()
    sweep_dir = root / "sweep"
    env = {
        **os.environ,
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "BENCH_USAGE_FILE": str(root / USAGE_FILE),
    }
    started = time.time()
    proc = subprocess.run(
        [sys.executable, str(APP), *overrides(sweep_dir, trials, slots)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"the scale sweep failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads((sweep_dir / "optuna_result.json").read_text())
    usage = json.loads((root / USAGE_FILE).read_text())
    calls = Counter(calls_log.read_text().split())
    return summarize(calls, usage, wall, trials, result["states"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=16, help="n_jobs and array_parallelism")
    parser.add_argument("--json", type=Path, help="write the figures here (one JSON object)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.slots < 1:
        parser.error("--trials and --slots must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-scale-") as tmp:
        r = run(Path(tmp), args.trials, args.slots)
    print(f"{args.trials} trials of bench/sweep_app.py (5 steps, no sleep), random sampler, {args.slots} slots, Slurm")
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
