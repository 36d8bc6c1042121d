"""`python -m sweep_sft`: compose the config with Hydra and run one trial (or a sweep of them)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweep_sft.config.compose import register_configs
from sweep_sft.errors import UserInputError
from sweep_sft.names import RUN_FILE, child_run_name
from sweep_sft.tracking.client import read_parent
from sweep_sft.tracking.dead_runs import end_dead_trial
from sweep_sft.trial.run import run_trial

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """One trial of the composed config (a sweep's job under -m); its objective value for the sweeper."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    parent = read_parent(hc.sweep.dir) if multirun else {}
    run_name = cfg.tracking.run_name
    if multirun and not run_name:
        run_name = child_run_name(hc.job.num, list(hc.overrides.task), parent.get("swept", []))
    output_dir = cfg.output_dir or hc.runtime.output_dir
    try:
        result = run_trial(cfg, output_dir=output_dir, run_name=run_name, parent_run_id=parent.get("run_id"))
    except KeyboardInterrupt:
        # The trial has ended its run KILLED. A process of its own (one trial, or a submitit job)
        # exits as interrupted; a sweep running its jobs in this process handles it itself.
        if multirun and "SUBMITIT_EXECUTOR" not in os.environ:
            raise
        exit_interrupted()
    except Exception as exc:
        if parent:
            _record_unopened(hc, output_dir, exc)
        if multirun or not isinstance(exc, UserInputError):  # the sweeper records it and goes on
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    return result.value


def exit_interrupted() -> NoReturn:
    """End this process as killed by SIGINT, which the shell, submitit and Slurm read as
    interrupted (not failed). Python does that itself for an uncaught KeyboardInterrupt, except
    once torch._dynamo is imported (transformers 5.24 imports it with its models): then it exits 1."""
    print("interrupted (SIGINT)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    sys.exit(128 + signal.SIGINT)  # SIGINT blocked: the shell's code for it


def _record_unopened(hc, output_dir: str, exc: Exception) -> None:
    """A trial of a sweep that failed before it opened its MLflow run (a bad value, a missing
    data file) still gets a FAILED child run with its error, so MLflow counts every trial."""
    if (Path(output_dir) / RUN_FILE).exists():  # the trial's own run holds its error
        return
    try:
        end_dead_trial(
            hc.sweep.dir,
            output_dir,
            f"{type(exc).__name__}: {exc}",
            job_num=hc.job.num,
            overrides=list(hc.overrides.task),
        )
    except Exception as record_error:  # never hide the trial's own error
        print(f"warning: could not record the failed trial in MLflow: {record_error}", file=sys.stderr)


if __name__ == "__main__":
    main()
