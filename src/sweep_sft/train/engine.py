"""How one optimizer step is taken: one process, data parallel over ranks, or DeepSpeed ZeRO.

The semantics with W ranks (the Hugging Face convention): `trainer.batch_size` and
`trainer.grad_accum` are per rank, so one optimizer step sees batch_size x grad_accum x W
examples. The global window of a step is `epoch_windows(..., grad_accum * W, ...)`, the very
window a one-process run with grad_accum x W would see. Every rank collates the whole window
(cheap, CPU) and computes every example's loss weight from it (train/loss.py), then runs
forward/backward on its own micro-batches (`r::W`), and the gradients are SUMMED over the
ranks. Since each example's weight already normalises the whole global window, the sum is
exactly the one-process gradient of the same window: W ranks with grad_accum g train the
same model as one process with grad_accum g x W (up to float summation order).

A rank with fewer micro-batches (the last window of an epoch) runs zero-weight copies so that
all ranks run the same number of backwards: DeepSpeed ZeRO-2/3 reduce inside each backward.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from sweep_sft.cache import cache_root
from sweep_sft.config.schema import Config
from sweep_sft.errors import ConfigError
from sweep_sft.train.checkpoint_files import DEEPSPEED_TYPES, load_file
from sweep_sft.train.distributed import DistEnv, all_reduce_grads, all_reduce_sum


@dataclass
class Micro:
    """One micro-batch this rank runs: its batch, the examples' weights, and whether its
    losses count in the logged train loss (False for a zero-weight filler)."""

    batch: Any
    weight: Any
    counted: bool = True


class Engine:
    """Plain torch: one process, or data parallel with the gradients summed over the ranks."""

    def __init__(self, model, optimizer, scheduler, cfg: Config, env: DistEnv) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.cfg, self.env = cfg, env

    @property
    def world_size(self) -> int:
        return self.env.world_size

    def local(self, batches: list, weights: list) -> list[Micro]:
        """This rank's micro-batches of the global window, padded to the same count on every rank."""
        w, r = self.env.world_size, self.env.rank
        mine = [Micro(b, wt) for b, wt in list(zip(batches, weights, strict=True))[r::w]]
        per_rank = -(-len(batches) // w)
        while len(mine) < per_rank:
            mine.append(Micro(batches[0], weights[0] * 0, counted=False))
        return mine

    def backward(self, loss, last: bool) -> None:
        loss.backward()

    def step(self) -> float:
        """Sum gradients over ranks, clip, update, schedule; returns the global gradient norm."""
        import torch

        params = list(self.model.parameters())
        all_reduce_grads(params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.trainer.grad_clip or math.inf)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def reduce(self, acc):
        """The per-task accumulator summed over ranks (a copy; `acc` keeps its local sums)."""
        if not self.env.distributed:
            return acc
        import copy

        import torch

        out = copy.copy(acc)
        packed = all_reduce_sum(torch.stack([acc.sums, acc.counts, acc.weight]))
        out.sums, out.counts, out.weight = packed[0], packed[1], packed[2]
        return out


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO: our optimizer and schedule, DeepSpeed's sharding and reduction."""

    def __init__(self, model, optimizer, scheduler, cfg: Config, env: DistEnv) -> None:
        import deepspeed
        import torch

        ds_config = deepspeed_json(cfg, env.world_size)
        if env.world_size == 1:
            _skip_shm_comm()
        if cfg.deepspeed.offload_optimizer and cfg.deepspeed.cpu_adam:
            optimizer = _cpu_adam(optimizer)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scheduler.lr_lambdas)
        ds_engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
        )
        ds_engine.checkpoint_engine = _weights_only_checkpoints(ds_engine)
        super().__init__(ds_engine, ds_optimizer, ds_scheduler, cfg, env)

    def backward(self, loss, last: bool) -> None:
        # DeepSpeed averages gradients over the data-parallel ranks; our weights already
        # normalise the global window, so scale by W to get the sum. Our weights also
        # normalise the accumulation window: no division by the accumulation steps.
        self.model.set_gradient_accumulation_boundary(last)
        self.model.backward(loss * self.env.world_size, scale_wrt_gas=False)

    def step(self) -> float:
        self.model.step()
        norm = self.model.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def lr(self) -> float:
        return self.model.get_lr()[0]


def deepspeed_json(cfg: Config, world_size: int) -> dict:
    """The DeepSpeed config, built from ours so batch, accumulation, clipping and precision
    cannot disagree (deepspeed.extra may add keys, never these)."""
    ds, tc = cfg.deepspeed, cfg.trainer
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "reduce_bucket_size": ds.bucket_size,
        "allgather_bucket_size": ds.bucket_size,
        "contiguous_gradients": True,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": tc.grad_accum,
        "train_batch_size": tc.batch_size * tc.grad_accum * world_size,
        "gradient_clipping": tc.grad_clip,
        "bf16": {"enabled": tc.precision == "bf16"},
        "zero_optimization": zero,
        # torch AdamW on the CPU is allowed with offload when cpu_adam=false (slower, no compile).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        **ds.extra,
    }


def _skip_shm_comm() -> None:
    """One rank has nobody to share memory with: don't compile DeepSpeed's CPU shared-memory
    all-reduce (about 3 minutes on 2 cores, on every fresh cache, as CI has). DeepSpeed keeps
    its table of usable ops as a module-level dict that it documents as editable."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _weights_only_checkpoints(ds_engine):
    """DeepSpeed's torch checkpoint engine, loading with weights_only=True: its own unpickles with
    weights_only=False, so a poisoned file of a checkpoint folder would run on automatic resume."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    if type(ds_engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise ConfigError(
            f"deepspeed.extra: checkpoint engine {type(ds_engine.checkpoint_engine).__name__} is not supported; "
            "sweep_sft loads DeepSpeed checkpoints through torch's engine only (weights_only=True)"
        )

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return load_file(path, map_location, DEEPSPEED_TYPES)

    return WeightsOnlyCheckpointEngine(ds_engine._config)


def _cpu_adam(optimizer):
    """DeepSpeedCPUAdam with the same parameter groups and hyperparameters as our AdamW."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    first = optimizer.param_groups[0]
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
    # The schedule has already scaled "lr" for step 0; the peak is kept in "initial_lr".
    lr = first.get("initial_lr", first["lr"])
    return DeepSpeedCPUAdam(groups, lr=lr, betas=first["betas"], eps=first["eps"], adamw_mode=True)


def extensions_dir() -> None:
    """Compiled DeepSpeed ops go under our cache (built once, reused by every trial)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))


def check_compile(cfg: Config) -> None:
    """trainer.compile is refused with DeepSpeed: DeepSpeed's engine wraps the module (ZeRO-3
    fetches and frees parameters in hooks on every submodule) and has a compile path of its own
    (engine.compile), which this project neither wires nor tests; a compiled model handed to it
    is not trusted to train like our step."""
    if cfg.trainer.compile and cfg.deepspeed is not None:
        raise ConfigError(
            f"trainer.compile=true: not supported with DeepSpeed (deepspeed.zero_stage={cfg.deepspeed.zero_stage}); "
            "set trainer.compile=false, or train without DeepSpeed (deepspeed=off)"
        )


def build_engine(model, optimizer, scheduler, cfg: Config, env: DistEnv) -> Engine:
    """The engine that steps the model: ours, or DeepSpeed's when cfg.deepspeed is set."""
    check_compile(cfg)
    if cfg.trainer.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs and with ZeRO-3's parameter hooks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.trainer.compile:
        # In place (nn.Module.compile): the same module object, so state_dict keys, checkpoints and
        # save_pretrained are unchanged; after checkpointing, so the compiled graph recomputes.
        model.compile()
    if cfg.deepspeed is None:
        return Engine(model, optimizer, scheduler, cfg, env)
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"deepspeed.zero_stage={cfg.deepspeed.zero_stage}: DeepSpeed is not installed; "
            "pip install 'sweep-sft[deepspeed]', or drop the deepspeed option"
        ) from exc
    extensions_dir()
    return DeepSpeedEngine(model, optimizer, scheduler, cfg, env)
