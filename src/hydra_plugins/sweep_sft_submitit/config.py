"""Config of our submitit launchers, registered as hydra/launcher=sweep_sft_slurm and
hydra/launcher=sweep_sft_local: hydra-submitit-launcher's keys plus what our launch() adds.

(No `from __future__ import annotations` here: Hydra's plugin scan builds these dataclasses
into configs and needs real types.)"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

PREFIX = "hydra_plugins.sweep_sft_submitit.launcher."


@dataclass
class RetryConf:
    # Resubmissions of a job that died without a result (killed by Slurm: memory, time limit,
    # scancel, node failure); after them it is a failed trial and the sweep goes on.
    retries: int = 0
    # Seconds to wait for a dead job's result file (a shared filesystem may show it late);
    # submitit waits 15 s.
    result_grace_s: int = 15
    # Seconds between two looks for the jobs' result files.
    poll_s: float = 1.0
    # Seconds between two scheduler queries (one sacct for all jobs; Slurm only): how soon a killed job
    # is noticed, against the load on the cluster's controller.
    sacct_interval_s: float = 15.0


@dataclass
class SweepSftSlurmConf(SlurmQueueConf, RetryConf):
    _target_: str = PREFIX + "SlurmLauncher"
    # Requeues of a job that hit its time limit and checkpointed (submitit's
    # Checkpointable protocol); the base plugin's 0 would never resume it.
    max_num_timeout: int = 3


@dataclass
class SweepSftLocalConf(LocalQueueConf, RetryConf):
    _target_: str = PREFIX + "LocalLauncher"
    # Seconds a stopped trial has from SIGINT (to end its MLflow run) to SIGKILL: when the sweep is
    # interrupted or killed, or the trial reaches timeout_min.
    stop_grace_s: float = 10.0


cs = ConfigStore.instance()
cs.store(group="hydra/launcher", name="sweep_sft_slurm", node=SweepSftSlurmConf, provider="sweep_sft")
cs.store(group="hydra/launcher", name="sweep_sft_local", node=SweepSftLocalConf, provider="sweep_sft")
