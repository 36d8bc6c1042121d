"""What a job that died without a result becomes for the sweep: a JobDied error, a FAILED
JobReturn as Hydra's run_job fills one (so sweepers read it as any failed trial), and the folder
its trial wrote to (where its MLflow run is named)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep_sft.sweep.jobs import hydra_values

STDERR_LINES = 20


class JobDied(RuntimeError):
    """A job that ended without a result. Its message names the scheduler's job id, its
    state and the tail of its stderr (what a user needs to see why)."""

    def __init__(self, executor: str, job_id: str, state: str, attempts: int, detail: str) -> None:
        self.job_id, self.state, self.attempts = job_id, state, attempts
        super().__init__(
            f"{executor} job {job_id} ended {state} without a result "
            f"(attempt {attempts}; retries: hydra.launcher.retries); {detail}"
        )


def failed_return(
    hydra_context: Any, sweep_config: DictConfig, overrides: list[str], num: int, job_id: str, error: JobDied
) -> tuple[JobReturn, DictConfig]:
    """Job `num`'s FAILED JobReturn carrying `error`, and its composed config."""
    config = hydra_context.config_loader.load_sweep_config(sweep_config, overrides)
    with open_dict(config.hydra.job):
        config.hydra.job.id = job_id
        config.hydra.job.num = num
    output_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
    with open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = output_dir
    ret = JobReturn()
    ret.overrides = list(OmegaConf.to_container(config.hydra.overrides.task))
    ret.hydra_cfg = OmegaConf.create({"hydra": copy.deepcopy(config.hydra)})
    task_cfg = copy.deepcopy(config)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    ret.cfg = task_cfg
    ret.working_dir = output_dir
    ret.task_name = str(config.hydra.job.name)
    ret.status = JobStatus.FAILED
    ret.return_value = error
    return ret, config


def job_output_dir(launcher: Any, overrides: list[str], num: int, config: DictConfig | None) -> str:
    """Where the trial writes (its `output_dir`, else Hydra's job folder), as the trial tags it."""
    if config is None:
        assert launcher.hydra_context is not None
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
    with hydra_values(config):  # `${hydra:...}` in output_dir resolves for this job
        job_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        own = OmegaConf.select(config, "output_dir", default=None)
    return str(Path(own or job_dir).resolve())


def tail(text: str | None, lines: int = STDERR_LINES) -> str:
    """The last `lines` lines of a job's stderr or error."""
    return "\n".join((text or "").rstrip().splitlines()[-lines:])
