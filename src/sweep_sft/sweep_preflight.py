"""Every job of a sweep composed and validated before any is launched: a bad value in one
combination (`-m lr=1e-3,-1`) stops the sweep at once, naming the combination and the key,
instead of failing that trial only when its turn comes (or after the others have trained).

Cheap by design: Hydra's config loader composes each job as the launcher will, then
`sweep_sft.config.validate` and the model's file checks run; no torch, no data.

`SweepPreflight` is a Hydra callback listed before the MLflow parent run's in conf/config.yaml:
Hydra calls on_multirun_start before it builds the sweeper, so the check runs there, and a
refused sweep leaves no parent run (FAILED or otherwise) and no sweep folder. It asks the
sweeper itself which jobs it will launch (`preflight(config, config_loader)`, on our sweepers)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweep_sft.errors import ConfigError, UserInputError

log = logging.getLogger(__name__)


def check_jobs(
    config_loader, config: DictConfig, jobs: Sequence[Sequence[str]], names: Sequence[str] | None = None
) -> None:
    """Raise ConfigError naming the first job whose config is refused: `names[i]` (or its number)
    and the overrides that make it differ from the others."""
    tic = time.perf_counter()
    common = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
    for i, overrides in enumerate(jobs):
        try:
            check_job(config_loader, config, overrides)
        except UserInputError as exc:
            name = names[i] if names else f"sweep job #{i} of {len(jobs)}"
            combination = " ".join(o for o in overrides if o not in common) or " ".join(overrides)
            raise ConfigError(f"{name} ({combination}): {exc}; no job was launched") from exc
    log.debug(f"checked {len(jobs)} job configs in {time.perf_counter() - tic:.2f} s")


def check_job(config_loader, config: DictConfig, overrides: Sequence[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sweep_sft.config import Config, validate
    from sweep_sft.modeling import check_model

    try:
        job = config_loader.load_sweep_config(config, list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        causes = [exc] + ([exc.__cause__] if exc.__cause__ is not None else [])
        raise ConfigError("; ".join(" ".join(str(e).split()) or type(e).__name__ for e in causes)) from exc
    with read_write(job), open_dict(job):  # what the trial receives: the job config without hydra
        del job["hydra"]
    if OmegaConf.get_type(job) is not Config:  # another app swept by our sweeper (the tests' synthetic trials)
        return
    check_model(validate(job).model)


def refuse(exc: UserInputError) -> NoReturn:
    """End the sweep with the one-line error (a traceback would hide it) and exit status 1."""
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(1)


class SweepPreflight(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import InstantiationException
        from hydra.utils import get_class, instantiate

        from sweep_sft.sweeper_keys import check_sweeper_keys

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
