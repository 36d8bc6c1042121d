"""The SFT training loop: AdamW, warmup + schedule, gradient accumulation and clipping.

The loss of one optimizer step is the mean over every supervised token of its whole
accumulation window: each micro-batch's token-loss sum is divided by the window's token
count before backward, so grad_accum=8 x batch 4 and grad_accum=1 x batch 32 give the same
loss and the same gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sweep_sft.config.schema import Config
from sweep_sft.data.batches import Batch, collate, epoch_windows, steps_per_epoch
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.errors import UserInputError
from sweep_sft.train.checkpoint import Checkpoints, Position, accumulator_state, load_accumulator
from sweep_sft.train.distributed import DistEnv
from sweep_sft.train.engine import Micro, build_engine
from sweep_sft.train.loss import TaskAccumulator, example_loss_sums, example_weights
from sweep_sft.train.schedule import lr_factor

LogFn = Callable[[dict[str, float], int], None]
# Token counters since the last log line, in the order a checkpoint stores them.
_SINCE = ("tokens", "computed", "supervised")


class TrainingDiverged(UserInputError):
    """The loss became NaN or infinite: usually a learning rate too high for the model."""


@dataclass
class TrainState:
    step: int = 0
    epoch: float = 0.0
    tokens_seen: int = 0
    seconds: float = 0.0


def total_steps(cfg: Config, n_examples: int, world_size: int = 1) -> int:
    per_epoch = steps_per_epoch(n_examples, cfg.trainer.batch_size, cfg.trainer.grad_accum * world_size)
    steps = per_epoch * cfg.trainer.epochs
    return min(steps, cfg.trainer.max_steps) if cfg.trainer.max_steps else steps


def build_optimizer(model, cfg: Config):
    import torch

    # Norm weights and biases are not decayed, as in every major SFT recipe.
    decay, no_decay = [], []
    for _name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.optimizer.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)


def backward_window(
    model,
    batches: list[Batch],
    device,
    precision: str,
    acc: TaskAccumulator | None = None,
    loss_norm: str = "token",
    n_tasks: int | None = None,
    engine=None,
) -> float:
    """Accumulate the gradient of one optimizer step and return its loss.

    Every example's weight is fixed by the whole window before any backward (see
    train/loss.py), so how the window is split into micro-batches changes neither the loss
    nor the gradient.
    """
    if n_tasks is None:
        n_tasks = int(max(int(b.example_tasks.max()) for b in batches)) + 1
    weights = example_weights(batches, loss_norm, n_tasks)
    # With several ranks (train/engine.py) each runs its share of the window, weighted by the whole.
    if engine is not None:
        micros = engine.local(batches, weights)
    else:
        micros = [Micro(b, w) for b, w in zip(batches, weights, strict=True)]
    total = 0.0
    for i, micro in enumerate(micros):
        sums, counts = example_loss_sums(model, micro.batch, device, precision)
        loss = (sums * micro.weight.to(sums.device, sums.dtype)).sum()
        if engine is not None:
            engine.backward(loss, last=i == len(micros) - 1)
        else:
            loss.backward()
        total += float(loss.detach())
        if acc is not None and micro.counted:
            acc.add(micro.batch.example_tasks, sums, counts, micro.weight)
    return total


def train(
    model,
    rows: list[Tokenized],
    tasks: list[str],
    cfg: Config,
    device,
    pad_id: int,
    log: LogFn,
    evaluate: Callable[[int], dict[str, float]],
    dist_env: DistEnv | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainState:
    """Train in place; `log(metrics, step)` gets train metrics, `evaluate(step)` runs evals.

    With several ranks (`dist_env`), each step's window is grad_accum x world size micro-batches.
    With `checkpoints`, training continues from its resume checkpoint (if any) and saves at
    optimizer-step boundaries (see train/checkpoint.py).
    """
    import torch

    tc = cfg.trainer
    dist_env = dist_env or DistEnv()
    n_steps = total_steps(cfg, len(rows), dist_env.world_size)
    n_per_epoch = steps_per_epoch(len(rows), tc.batch_size, tc.grad_accum * dist_env.world_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg.scheduler, s, n_steps))
    engine = build_engine(model, optimizer, scheduler, cfg, dist_env)
    task_index = {t: i for i, t in enumerate(tasks)}
    state = TrainState()
    window_acc = TaskAccumulator(tasks)
    tokens_since, computed_since, supervised_since, clock = 0, 0, 0, time.perf_counter()
    started = clock
    epoch, skip, prior_seconds = 0, 0, 0.0
    # The engine's objects: with DeepSpeed, its engine saves and loads model, optimizer and scheduler.
    resumed = checkpoints.restore(engine.model, engine.optimizer, engine.scheduler) if checkpoints else None
    if resumed is not None:
        epoch, skip, prior_seconds = resumed.epoch, resumed.window, resumed.seconds
        state = TrainState(resumed.step, epoch + skip / n_per_epoch, resumed.tokens_seen)
        load_accumulator(window_acc, resumed.acc)
        tokens_since, computed_since, supervised_since = (resumed.since[k] for k in _SINCE)
        # Training time since the last log line, so the first tokens/s after a resume counts
        # the tokens and the time of the same steps (the requeue's idle time is neither).
        clock = time.perf_counter() - resumed.since.get("seconds", 0.0)
    progress = _progress_bar(n_steps, tc.progress)
    progress.update(state.step)
    if resumed is None:
        evaluate(0)
    model.train()
    while state.step < n_steps:
        windows = epoch_windows(len(rows), tc.batch_size, tc.grad_accum * dist_env.world_size, tc.seed, epoch)
        for i, window in enumerate(windows):
            if i < skip:  # done before the checkpoint this trial resumed from
                continue
            batches = [
                collate([rows[j] for j in micro], task_index, pad_id, cfg.data.packing, cfg.data.max_seq_len)
                for micro in window
            ]
            backward_window(engine.model, batches, device, tc.precision, window_acc, tc.loss_norm, len(tasks), engine)
            tokens_since += sum(b.n_tokens for b in batches)
            computed_since += sum(b.n_computed for b in batches)
            supervised_since += sum(b.n_supervised for b in batches)
            grad_norm = engine.step()
            state.step += 1
            state.epoch = epoch + (i + 1) / len(windows)
            global_acc = engine.reduce(window_acc)  # every rank's share of the logged loss
            metrics = global_acc.means("train/loss")
            if not math.isfinite(metrics["train/loss"]):
                raise TrainingDiverged(
                    f"training diverged at step {state.step}: train loss {metrics['train/loss']} "
                    f"(optimizer.lr={cfg.optimizer.lr}); lower the learning rate"
                )
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", refresh=False)
            if state.step % tc.log_every == 0 or state.step == n_steps:
                now = time.perf_counter()
                state.tokens_seen += tokens_since
                elapsed = max(now - clock, 1e-9)
                metrics.update(global_acc.weight_shares("train/loss_weight_share"))
                metrics.update(
                    {
                        "train/grad_norm": float(grad_norm),
                        "train/lr": engine.lr(),
                        "train/tokens_per_s": tokens_since / elapsed,
                        "train/supervised_tokens_per_s": supervised_since / elapsed,
                        # real (non-padding) tokens per token computed; 1 - padding waste
                        "train/packing_efficiency": tokens_since / max(computed_since, 1),
                        # loss-bearing tokens per token computed (prompts never bear loss)
                        "train/supervised_fraction": supervised_since / max(computed_since, 1),
                        "train/epoch": state.epoch,
                    }
                )
                log(metrics, state.step)
                window_acc = TaskAccumulator(tasks)
                tokens_since, computed_since, supervised_since, clock = 0, 0, 0, now
            if tc.eval_every and state.step % tc.eval_every == 0 and state.step < n_steps:
                eval_started = time.perf_counter()
                evaluate(state.step)
                clock += time.perf_counter() - eval_started  # keep eval time out of tokens/s
                model.train()
            if checkpoints is not None:
                position = Position(
                    state.step,
                    *((epoch, i + 1) if i + 1 < len(windows) else (epoch + 1, 0)),
                    state.tokens_seen,
                    prior_seconds + time.perf_counter() - started,
                    accumulator_state(window_acc),
                    {
                        **dict(zip(_SINCE, (tokens_since, computed_since, supervised_since), strict=True)),
                        "seconds": time.perf_counter() - clock,
                    },
                )
                checkpoints.after_step(engine.model, engine.optimizer, engine.scheduler, position)
            if state.step >= n_steps:
                break
        epoch, skip = epoch + 1, 0
    progress.close()
    state.seconds = prior_seconds + time.perf_counter() - started
    evaluate(state.step)
    return state


def _progress_bar(total: int, enabled: bool):
    import sys

    from tqdm.auto import tqdm

    # In a log file (Slurm, CI) a bar redrawn ten times a second is noise: redraw rarely.
    interval = 0.1 if sys.stderr.isatty() else 15.0
    return tqdm(total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True, mininterval=interval)
