"""Training checkpoints: everything a trial needs to continue bit-identically where it stopped.

A checkpoint is `<output_dir>/checkpoints/step-<N>/`: model weights, optimizer, LR scheduler,
RNG states, the position in the data order (epoch + next window: `epoch_windows` is a pure
function of the seed and epoch), the train-metric accumulators not yet logged, and the metric
series logged so far. It is written into a hidden temporary folder and renamed into place, and
`trainer_state.json` is written last, so a kill mid-write never leaves a newest checkpoint that
looks complete but is not; a folder without a readable state file is skipped with a warning.

With several ranks (plain data parallel) every rank holds the same weights, optimizer and
scheduler state after a step, so rank 0 alone writes them; what differs per rank (RNG streams,
the rank's share of the train-loss sums not yet logged) is gathered into `rng.pt`. Every rank
restores from the same folder. A preemption signal may reach only some ranks: the ranks combine
their flags at each step boundary (one all-reduce), so all of them stop at the same step.

With DeepSpeed (ZeRO stages 0-2) the weights, optimizer and scheduler are written by the engine's
own collective `save_checkpoint` into `deepspeed/` of the same temporary folder (each rank its
optimizer partition); rank 0 adds `rng.pt` and `trainer_state.json` and renames it into place.

A checkpoint folder is data, never code: train/checkpoint_files.py loads every file as tensors and
plain data and refuses, before training starts, a file that would call anything else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sweep_sft import lora
from sweep_sft.config.schema import Config
from sweep_sft.errors import ConfigError
from sweep_sft.names import CHECKPOINT_WEIGHTS, CHECKPOINTS_DIR
from sweep_sft.tracking.client import flatten
from sweep_sft.train.checkpoint_files import check_pickles, fsync_dir, load_file, write_file
from sweep_sft.train.distributed import DistEnv

STATE_FILE = "trainer_state.json"
FILES = (CHECKPOINT_WEIGHTS, "optimizer.pt", "scheduler.pt", "rng.pt", STATE_FILE)
DS_TAG = "deepspeed"  # the engine's checkpoint tag: its subfolder in a DeepSpeed checkpoint
DS_FILES = (DS_TAG, "rng.pt", STATE_FILE)
PREFIX = "step-"
# Keys that may change between the interrupted and the resumed trial: they change neither the
# weights nor the data order (where and how often to log, checkpoint, or run).
MAY_CHANGE = {
    "trainer.resume",
    "trainer.checkpoint_every",
    "trainer.save_total_limit",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.device",
    "model.lora.merge",  # what is saved at the end, not what is trained
}
COMPARED = ("model", "data", "optimizer", "scheduler", "trainer")


@dataclass
class Position:
    """Where training stands after an optimizer step, and what it has not logged yet."""

    step: int
    epoch: int  # the epoch the next window comes from
    window: int  # index of the next window in that epoch's epoch_windows()
    tokens_seen: int = 0
    seconds: float = 0.0  # training time of all attempts so far
    acc: dict[str, list[float]] = field(default_factory=dict)  # TaskAccumulator sums/counts/weight
    since: dict[str, float] = field(default_factory=dict)  # token counters and seconds since the last log


def checkpoints_dir(output_dir: str | Path) -> Path:
    """The folder a trial's checkpoints live in."""
    return Path(output_dir) / CHECKPOINTS_DIR


def step_of(path: Path) -> int | None:
    """The step of a `step-<N>` checkpoint folder; None for any other name."""
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def problem(path: Path) -> str | None:
    """Why `path` is not a usable checkpoint, or None when it is."""
    if not (path / STATE_FILE).is_file():
        return f"missing {', '.join(name for name in FILES if not (path / name).is_file())}"
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable {STATE_FILE} ({exc})"
    if not isinstance(state, dict) or not {"position", "series", "config"} <= set(state):
        return f"{STATE_FILE} lacks position/series/config"
    missing = [name for name in (DS_FILES if state.get("deepspeed") else FILES) if not (path / name).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def deepspeed_state(config: Config) -> dict[str, Any] | None:
    """What a DeepSpeed checkpoint can only be resumed with (the engine's layout of the state)."""
    ds = config.deepspeed
    if ds is None:
        return None
    return {"zero_stage": ds.zero_stage, "offload_optimizer": ds.offload_optimizer, "offload_params": ds.offload_params}


def valid_checkpoints(output_dir: str | Path, warn: bool = True) -> list[Path]:
    """Complete checkpoints of a trial, oldest first; incomplete ones are skipped with a warning."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in sorted((p for p in root.iterdir() if step_of(p) is not None), key=step_of):
        why = problem(path)
        if why is None:
            found.append(path)
        elif warn:
            print(f"warning: ignoring incomplete checkpoint {path}: {why}", file=sys.stderr)
    return found


def find_resume(resume: str, output_dir: str | Path) -> Path | None:
    """The checkpoint `trainer.resume` asks for: None for a fresh start."""
    if resume == "never":
        return None
    if resume == "auto":
        found = valid_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not path.exists():
        raise ConfigError(f"trainer.resume: {path} does not exist (expected auto, never or a checkpoint folder)")
    if step_of(path) is None and (checkpoints_dir(path).is_dir() or path.name == CHECKPOINTS_DIR):
        # A trial's output folder (or its checkpoints folder): its newest checkpoint.
        found = valid_checkpoints(path.parent if path.name == CHECKPOINTS_DIR else path)
        if not found:
            raise ConfigError(f"trainer.resume: no complete checkpoint under {path}")
        return found[-1]
    why = problem(path)
    if why is not None:
        raise ConfigError(f"trainer.resume: {path} is not a complete checkpoint: {why}")
    return path


def training_config(config: Config) -> dict[str, Any]:
    """The part of the config that determines the weights and the data order, flattened."""
    tree = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    flat = flatten({k: tree[k] for k in COMPARED})
    return {k: v for k, v in flat.items() if k not in MAY_CHANGE}


def check_resume(path: Path, config: Config) -> None:
    """Fail before training when the checkpoint belongs to a differently configured trial, or
    holds a file that would unpickle more than tensors and plain data."""
    state = json.loads((path / STATE_FILE).read_text())
    check_compatible(path, state["config"], config)
    check_deepspeed(path, state.get("deepspeed"), config)
    check_pickles(path)


def check_deepspeed(path: Path, saved: dict | None, config: Config) -> None:
    current = deepspeed_state(config)
    if saved != current:
        raise ConfigError(
            f"trainer.resume: checkpoint {path} was written with deepspeed {saved or 'off'}, this trial has "
            f"deepspeed {current or 'off'}: the engine's state does not carry over; resume with the same deepspeed "
            "settings, or start afresh with trainer.resume=never or another output_dir"
        )


def check_compatible(path: Path, saved: dict[str, str], config: Config) -> None:
    current = training_config(config)
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        changes = "; ".join(f"{k}: {saved.get(k)} -> {current.get(k)}" for k in diff[:8])
        raise ConfigError(
            f"trainer.resume: checkpoint {path} was written with a different training config ({changes}); "
            "resume with the same settings, or start afresh with trainer.resume=never or another output_dir"
        )


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """Saves, rotates and restores a trial's checkpoints; owns the metric series it carries."""

    def __init__(
        self,
        config: Config,
        output_dir: str | Path,
        series: dict,
        resume_from: Path | None = None,
        preemption=None,
        dist_env=None,
    ):
        self.config = config
        self.preemption = preemption  # a train.preemption.Preemption, or None
        self.dist_env = dist_env or DistEnv()
        self.root = checkpoints_dir(output_dir)
        self.every = config.trainer.checkpoint_every
        self.keep = config.trainer.save_total_limit
        self.series = series
        self.resume_from = resume_from
        self.last_saved: Path | None = None
        # Called with the restored series (a reopened MLflow run sends the points it lacks).
        self.on_restore = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def after_step(self, model, optimizer, scheduler, position: Position) -> None:
        """At an optimizer-step boundary: save when due or signalled, then hand a signal over."""
        signalled = self._signalled()
        if signalled or self.due(position.step):
            self.save(model, optimizer, scheduler, position)
        if signalled:
            if self.dist_env.is_main:
                print(f"checkpoint {self.last_saved} written: handing over to submitit to requeue", file=sys.stderr)
            self.preemption.hand_over()

    def _signalled(self) -> bool:
        """Whether any rank caught the signal: the same answer on every rank."""
        if self.preemption is None:
            return False
        flag = self.preemption.requested
        if not (self.dist_env.distributed and self.preemption.active):
            return flag
        import torch
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        combined = torch.tensor([int(flag)], device=device)
        dist.all_reduce(combined, op=dist.ReduceOp.MAX)
        if combined.item() and not flag:
            print("another rank caught the preemption signal: checkpointing at this step", file=sys.stderr)
        return bool(combined.item())

    def save(self, model, optimizer, scheduler, position: Position) -> Path:
        """Write a checkpoint (rank 0; every rank must call it, the others only send their own state)."""
        final = self.root / f"{PREFIX}{position.step}"
        ranks = self._gather_rank_states(position)
        if self.config.deepspeed is not None:
            self._write_deepspeed(final, model, position, ranks)
        elif self.dist_env.is_main:
            self._write_folder(final, model, optimizer, scheduler, position, ranks)
        if self.dist_env.distributed:
            import torch.distributed as dist

            dist.barrier()  # no rank goes on (or exits, after a signal) before the checkpoint is complete
        self.last_saved = final
        return final

    def _gather_rank_states(self, position: Position) -> list[dict] | None:
        """Each rank's RNG streams and train-loss sums, on rank 0 (None with one rank)."""
        if not self.dist_env.distributed:
            return None
        import torch.distributed as dist

        mine = {"rng": rng_state(), "acc": position.acc}
        gathered: list | None = [None] * self.dist_env.world_size if self.dist_env.is_main else None
        dist.gather_object(mine, gathered, dst=0)
        return gathered

    def _leader_pid(self) -> int:
        """Rank 0's pid, which names the temporary folder every rank writes into."""
        if not hasattr(self, "_pid"):
            pid = [os.getpid()]
            if self.dist_env.distributed:
                import torch.distributed as dist

                dist.broadcast_object_list(pid, src=0)
            self._pid = pid[0]
        return self._pid

    def _tmp(self, step: int, pid: int) -> Path:
        return self.root / f".tmp-{PREFIX}{step}-{pid}"

    def _write_deepspeed(self, final: Path, engine, position: Position, ranks) -> None:
        """The engine writes its collective checkpoint into the temporary folder, rank 0 the rest."""
        tmp = self._tmp(position.step, self._leader_pid())
        if self.dist_env.is_main and tmp.exists():
            shutil.rmtree(tmp)  # the engine's save starts with a barrier after rank 0 creates the folder
        engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={}, save_latest=False)
        if self.dist_env.is_main:
            for path in (tmp / DS_TAG).rglob("*"):  # the engine does not fsync
                if path.is_file():
                    with open(path, "rb") as f:
                        os.fsync(f.fileno())
            self._finish_folder(tmp, final, position, ranks)

    def _write_folder(self, final: Path, model, optimizer, scheduler, position: Position, ranks) -> None:
        tmp = self._tmp(position.step, os.getpid())
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_file(tmp / CHECKPOINT_WEIGHTS, lora.weights_state(model))
        write_file(tmp / "optimizer.pt", optimizer.state_dict())
        write_file(tmp / "scheduler.pt", scheduler.state_dict())
        self._finish_folder(tmp, final, position, ranks)

    def _finish_folder(self, tmp: Path, final: Path, position: Position, ranks) -> None:
        """RNG and trainer state (last), then the rename that makes the checkpoint visible."""
        rng = rng_state()
        if ranks is not None:
            rng["ranks"] = ranks
        write_file(tmp / "rng.pt", rng)
        state = {
            "position": position.__dict__,
            "series": self.series,
            "config": training_config(self.config),
            # Not a config key (the launcher decides it), yet it sets the global batch.
            "world_size": self.dist_env.world_size,
            "deepspeed": deepspeed_state(self.config),
        }
        with open(tmp / STATE_FILE, "w") as f:  # last: its presence marks the folder complete
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a leftover that was skipped as incomplete: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.root)
        self._rotate()

    def _rotate(self) -> None:
        for path in valid_checkpoints(self.root.parent, warn=False)[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.root.glob(f".tmp-{PREFIX}*"):  # from attempts killed mid-write
            if not leftover.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(leftover, ignore_errors=True)

    def restore(self, model, optimizer, scheduler) -> Position | None:
        """Load `resume_from` into the given objects and the series; None for a fresh start."""
        if self.resume_from is None:
            return None

        path = self.resume_from
        state = json.loads((path / STATE_FILE).read_text())
        check_compatible(path, state["config"], self.config)
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist_env.world_size:
            raise ConfigError(
                f"trainer.resume: checkpoint {path} was written by {saved_world} rank(s), this trial has "
                f"{self.dist_env.world_size} (hydra.launcher.tasks_per_node, or torchrun's --nproc-per-node): "
                "the global "
                "batch would differ; resume with the same number of ranks, or start afresh with trainer.resume=never"
            )
        check_deepspeed(path, state.get("deepspeed"), self.config)
        if self.config.deepspeed is not None:  # `model` is the DeepSpeed engine: it loads all three
            loaded, _ = model.load_checkpoint(
                str(path), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if loaded is None:
                raise ConfigError(f"trainer.resume: DeepSpeed could not load {path / DS_TAG}")
        else:
            # Loaded on the CPU: load_state_dict copies into the parameters' (and their state's) device.
            lora.load_weights(model, load_file(path / CHECKPOINT_WEIGHTS))
            optimizer.load_state_dict(load_file(path / "optimizer.pt"))
            scheduler.load_state_dict(load_file(path / "scheduler.pt", None))
        rng = load_file(path / "rng.pt", None)
        position = Position(**state["position"])
        if "ranks" in rng:  # several ranks: this rank's own streams and loss sums
            mine = rng["ranks"][self.dist_env.rank]
            rng, position.acc = mine["rng"], mine["acc"]
        set_rng_state(rng)
        self.series.clear()
        self.series.update(state["series"])
        if self.on_restore is not None:
            self.on_restore(self.series)
        if self.dist_env.is_main:
            print(f"resumed from {path} at step {position.step}", file=sys.stderr)
        return position
