"""Several processes per trial: the process group from the environment, and rank helpers.

Where the ranks come from, first match wins:
- torchrun (or anything that exports RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT);
- a submitit job with several tasks (the Hydra submitit launcher with
  `hydra.launcher.tasks_per_node=N`, local or Slurm): submitit's TorchDistributedEnvironment
  exports those variables from the job's environment;
- otherwise one process and no process group (DeepSpeed still gets a one-rank group, see
  `single_process_env`).

Backend: nccl on CUDA, gloo on CPU; each rank uses the CUDA device of its LOCAL_RANK.
Rank 0 alone records (MLflow run, metrics.json, Optuna reports); every rank evaluates the
same data, so all ranks see the same metrics and stay in lockstep (ZeRO-3 needs that).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass
class DistEnv:
    """This process's rank and the number of training ranks (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # True when this module created the process group (and so must destroy it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _submitit_tasks() -> int:
    """Tasks of the submitit job we run in (0 outside submitit)."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    if executor == "local":
        return int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1"))
    if executor == "slurm":
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 0


def _export_from_submitit() -> None:
    from submitit.helpers import TorchDistributedEnvironment

    # Keep every GPU visible: we pick ours by LOCAL_RANK, which works whether or not the
    # launcher narrowed CUDA_VISIBLE_DEVICES.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(device_name: str, need_group: bool = False) -> DistEnv:
    """Initialise torch.distributed from the environment when the trial has several ranks
    (or when `need_group`: DeepSpeed wants a group even for one process)."""
    import torch
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ and _submitit_tasks() > 1:
        _export_from_submitit()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not need_group:
        return DistEnv()
    if world == 1:
        single_process_env()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank)
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, owns_group=True)


def single_process_env() -> None:
    """The variables of a one-rank group, so that DeepSpeed does not look for MPI."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def free_port() -> int:
    """A TCP port free on this machine, for a process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def teardown(env: DistEnv) -> None:
    """Destroy the process group if this module created it."""
    import torch.distributed as dist

    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(env: DistEnv, device):
    """This rank's device: cuda:<LOCAL_RANK> when training on CUDA with several ranks."""
    import torch

    if device.type == "cuda" and env.distributed:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def all_reduce_sum(tensor):
    """Sum a tensor over the ranks in place (no-op in one process); returns it."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_grads(params) -> None:
    """Sum the gradients of `params` over the ranks, in one flat buffer (one collective).

    A rank that produced no gradient for a parameter contributes zeros.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
