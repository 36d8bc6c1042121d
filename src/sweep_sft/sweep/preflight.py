"""Every job of a sweep composed and validated before any is launched: a bad value in one
combination (`-m lr=1e-3,-1`) stops the sweep at once, naming the combination and the key,
instead of failing that trial only when its turn comes (or after the others have trained).

Cheap by design: Hydra's config loader composes each job as the launcher will, and with Hydra's
job values set for it as its launcher sets them (`${hydra:job.num}`, `${hydra:runtime.output_dir}`
in output_dir resolve), `sweep_sft.config.validate.validate` runs; no torch, no data. The model's files
are looked for only when the jobs run on this machine (Hydra's basic launcher, local_jobs): a
Slurm job may read a path that only its compute node has, and checks it itself when it starts.

`SweepPreflight` is a Hydra callback listed before the MLflow parent run's in conf/config.yaml:
Hydra calls on_multirun_start before it builds the sweeper, so the check runs there, and a
refused sweep leaves no parent run (FAILED or otherwise) and no sweep folder. It asks the
sweeper itself which jobs it will launch (`preflight(config, config_loader)`, on our sweepers)."""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from sweep_sft.config.schema import Config
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError, UserInputError
from sweep_sft.modeling import check_model
from sweep_sft.sweep.jobs import hydra_values
from sweep_sft.sweep.sweeper_keys import check_sweeper_keys

log = logging.getLogger(__name__)

# Launchers whose jobs run on this machine (subclasses too): only there are a job's files where
# the preflight looks for them.
LOCAL_LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.sweep_sft_submitit.launcher.LocalLauncher",
)


def check_jobs(
    config_loader, config: DictConfig, jobs: Sequence[Sequence[str]], names: Sequence[str] | None = None
) -> None:
    """Raise ConfigError naming the first job whose config is refused: `names[i]` (or its number)
    and the overrides that make it differ from the others."""
    tic = time.perf_counter()
    common = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
    files = runs_here(config)
    for i, overrides in enumerate(jobs):
        try:
            check_job(config_loader, config, overrides, num=i, files=files)
        except UserInputError as exc:
            name = names[i] if names else f"sweep job #{i} of {len(jobs)}"
            combination = " ".join(o for o in overrides if o not in common) or " ".join(overrides)
            raise ConfigError(f"{name} ({combination}): {exc}; no job was launched") from exc
    log.debug(f"checked {len(jobs)} job configs in {time.perf_counter() - tic:.2f} s")


def check_job(config_loader, config: DictConfig, overrides: Sequence[str], num: int = 0, files: bool = True) -> None:
    """Job `num`'s config validated as the trial will see it; its model's files too if `files`."""
    try:
        job = config_loader.load_sweep_config(config, list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        causes = [exc] + ([exc.__cause__] if exc.__cause__ is not None else [])
        raise ConfigError("; ".join(" ".join(str(e).split()) or type(e).__name__ for e in causes)) from exc
    with as_job(job, num):
        task = copy.deepcopy(job)  # what the trial receives: the job config without hydra
        with read_write(task), open_dict(task):
            del task["hydra"]
        if OmegaConf.get_type(task) is not Config:  # another app swept by our sweeper (the tests' synthetic trials)
            return
        model = validate(task).model
        if files:
            check_model(model)


@contextmanager
def as_job(job: DictConfig, num: int) -> Iterator[None]:
    """HydraConfig set to job `num`'s config as its launcher sets it (Hydra's basic launcher and
    hydra.core.utils.run_job: job.num, job.id, runtime.output_dir), and put back as it was after."""
    with open_dict(job):
        job.hydra.job.num = num
        job.hydra.job.id = num  # a Slurm job's id is known only once it is submitted
    with hydra_values(job):  # the folder may itself use `${hydra:...}`
        output_dir = os.path.join(str(job.hydra.sweep.dir), str(job.hydra.sweep.subdir))
    with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):
        job.hydra.runtime.output_dir = os.path.abspath(output_dir)
    with hydra_values(job):
        yield


def runs_here(config: DictConfig) -> bool:
    """Whether the sweep's launcher runs its jobs on this machine (else their files are theirs to check)."""
    target = OmegaConf.select(config, "hydra.launcher._target_")
    try:
        launcher = get_class(target)
    except Exception:  # Hydra reports an unknown launcher itself; its jobs check their own files
        return False
    return any(f"{c.__module__}.{c.__qualname__}" in LOCAL_LAUNCHERS for c in launcher.__mro__)


def refuse(exc: UserInputError) -> NoReturn:
    """End the sweep with the one-line error (a traceback would hide it) and exit status 1."""
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(1)


class SweepPreflight(Callback):
    """Hydra callback (conf/config.yaml): every job of a sweep checked before the parent run opens."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Refuse the sweep (exit 1, one line) if a sweeper key or any job's config is wrong."""
        try:  # any sweeper's, ours or not: Hydra would fail on it only after the parent run opened
            check_sweeper_keys(config)
        except UserInputError as exc:
            refuse(exc)
        target = OmegaConf.select(config, "hydra.sweeper._target_")
        try:
            has_preflight = target is not None and hasattr(get_class(target), "preflight")
        except Exception:  # Hydra reports an unknown sweeper itself when it builds it
            return
        if not has_preflight or not GlobalHydra.instance().is_initialized():
            return
        try:
            # Our own sweeper class (the _target_ Hydra builds next anyway); its settings are
            # checked here too, before the parent run opens.
            sweeper = instantiate(config.hydra.sweeper)
            sweeper.preflight(config, GlobalHydra.instance().config_loader())
        except UserInputError as exc:
            refuse(exc)
        except InstantiationException as exc:
            if isinstance(exc.__cause__, UserInputError):
                refuse(exc.__cause__)
            # anything else (an unknown sweeper key): Hydra reports it when it builds the sweeper
