"""The SFT training loop: AdamW, warmup + schedule, gradient accumulation and clipping.

The loss of one optimizer step is the mean over every supervised token of its whole
accumulation window: each micro-batch's token-loss sum is divided by the window's token
count before backward, so grad_accum=8 x batch 4 and grad_accum=1 x batch 32 give the same
loss and the same gradients.

Every step's train loss and every validation loss also go to a divergence watch
(diagnostics/divergence.py): a loss well above its start is said at once (a warning line, a
finding for the trial's run and metrics.json) and, with trainer.stop_on_divergence, ends training
with a DivergenceError.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweep_sft import modeling
from sweep_sft.config.schema import Config
from sweep_sft.data.batches import Batch, collate, epoch_windows, steps_per_epoch
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.diagnostics.divergence import DivergenceWatch, warning_line
from sweep_sft.diagnostics.findings import Finding
from sweep_sft.errors import DivergenceError
from sweep_sft.metrics import (
    EPOCH,
    GRAD_NORM,
    LR,
    PACKING_EFFICIENCY,
    SUPERVISED_FRACTION,
    SUPERVISED_TOKENS_PER_S,
    TOKENS_PER_S,
    TRAIN_LOSS,
    TRAIN_WEIGHT_SHARE,
    VAL_LOSS,
)
from sweep_sft.train.checkpoint import Checkpoints, Position
from sweep_sft.train.distributed import DistEnv
from sweep_sft.train.engine import Micro, build_engine
from sweep_sft.train.loss import TaskAccumulator, example_loss_sums, example_weights
from sweep_sft.train.optimizer import build_optimizer
from sweep_sft.train.schedule import lr_factor

LogFn = Callable[[dict[str, float], int], None]
# Token counters since the last log line, in the order a checkpoint stores them.
_SINCE = ("tokens", "computed", "supervised")


class TrainingDiverged(DivergenceError):
    """The loss became NaN or infinite: usually a learning rate too high for the model."""


@dataclass
class TrainState:
    """Where training ended: optimizer steps, epochs, tokens and seconds trained."""

    step: int = 0
    epoch: float = 0.0
    tokens_seen: int = 0
    seconds: float = 0.0
    # Findings made while training (a divergence), for the trial's records.
    findings: list[Finding] = field(default_factory=list)


def total_steps(cfg: Config, n_examples: int, world_size: int = 1) -> int:
    """Optimizer steps the trial trains: its epochs, or trainer.max_steps if fewer."""
    per_epoch = steps_per_epoch(n_examples, cfg.trainer.batch_size, cfg.trainer.grad_accum * world_size)
    steps = per_epoch * cfg.trainer.epochs
    return min(steps, cfg.trainer.max_steps) if cfg.trainer.max_steps else steps


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


@dataclass
class _Since:
    """What the next log line covers: the loss sums, token counts and training time since the last one."""

    acc: TaskAccumulator
    tokens: int = 0
    computed: int = 0
    supervised: int = 0
    clock: float = 0.0  # perf_counter of the last log line, moved on by the evaluations' time


@dataclass
class _Loop:
    """One call of `train`: its inputs, the engine, and where training stands."""

    model: Any
    rows: list[Tokenized]
    tasks: list[str]
    cfg: Config
    device: Any
    pad_id: int
    log: LogFn
    evaluate: Callable[[int], dict[str, float]]
    dist_env: DistEnv
    checkpoints: Checkpoints | None
    engine: Any
    n_steps: int
    n_per_epoch: int
    since: _Since
    state: TrainState = field(default_factory=TrainState)
    epoch: int = 0
    skip: int = 0  # windows of this epoch done before the checkpoint this trial resumed from
    prior_seconds: float = 0.0  # training time of the attempts before this one
    started: float = 0.0
    progress: Any = None
    watch: DivergenceWatch | None = None
    # The global loss sum and token count since the last log line after the previous step: the
    # difference is one step's loss.
    seen: tuple[float, float] = (0.0, 0.0)
    notice: Callable[[Finding], None] | None = None


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
    notice: Callable[[Finding], None] | None = None,
) -> TrainState:
    """Train in place; `log(metrics, step)` gets train metrics, `evaluate(step)` runs evals (and
    returns their metrics, val/loss among them, for the divergence watch).

    With several ranks (`dist_env`), each step's window is grad_accum x world size micro-batches.
    With `checkpoints`, training continues from its resume checkpoint (if any) and saves at
    optimizer-step boundaries (see train/checkpoint.py). `notice(finding)` is called the moment a
    divergence shows (the trial tags its run); with trainer.stop_on_divergence a DivergenceError follows.
    """
    # A trial resolves trainer.precision=auto itself (and records it); a direct caller gets the same.
    cfg = modeling.with_precision(cfg, modeling.resolve_precision(cfg.trainer.precision, device))
    loop = _start(model, rows, tasks, cfg, device, pad_id, log, evaluate, dist_env or DistEnv(), checkpoints)
    loop.notice = notice
    resumed = _resume(loop)
    loop.progress = _progress_bar(loop.n_steps, cfg.trainer.progress)
    loop.progress.update(loop.state.step)
    try:
        if not resumed:
            _evaluate(loop, 0)
        model.train()
        while loop.state.step < loop.n_steps:
            _run_epoch(loop)
            loop.epoch, loop.skip = loop.epoch + 1, 0
    finally:
        loop.progress.close()
    loop.state.seconds = loop.prior_seconds + time.perf_counter() - loop.started
    _evaluate(loop, loop.state.step)
    return loop.state


def _start(model, rows, tasks, cfg: Config, device, pad_id, log, evaluate, dist_env: DistEnv, checkpoints) -> _Loop:
    """Optimizer, schedule and engine built; nothing trained yet."""
    import torch

    tc = cfg.trainer
    n_steps = total_steps(cfg, len(rows), dist_env.world_size)
    n_per_epoch = steps_per_epoch(len(rows), tc.batch_size, tc.grad_accum * dist_env.world_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg.scheduler, s, n_steps))
    engine = build_engine(model, optimizer, scheduler, cfg, dist_env)
    clock = time.perf_counter()
    since = _Since(TaskAccumulator(tasks), clock=clock)
    loop = _Loop(
        model,
        rows,
        tasks,
        cfg,
        device,
        pad_id,
        log,
        evaluate,
        dist_env,
        checkpoints,
        engine,
        n_steps,
        n_per_epoch,
        since,
    )
    loop.started = clock
    loop.watch = DivergenceWatch(cfg.diagnostics, cfg.optimizer.lr)
    return loop


def _resume(loop: _Loop) -> bool:
    """Continue from the resume checkpoint, if any: weights, optimizer, position and what was not logged."""
    engine = loop.engine
    # The engine's objects: with DeepSpeed, its engine saves and loads model, optimizer and scheduler.
    resumed = loop.checkpoints.restore(engine.model, engine.optimizer, engine.scheduler) if loop.checkpoints else None
    if resumed is None:
        return False
    loop.epoch, loop.skip, loop.prior_seconds = resumed.epoch, resumed.window, resumed.seconds
    loop.state = TrainState(resumed.step, loop.epoch + loop.skip / loop.n_per_epoch, resumed.tokens_seen)
    since = loop.since
    since.acc.load_state(resumed.acc)
    since.tokens, since.computed, since.supervised = (resumed.since[k] for k in _SINCE)
    # Training time since the last log line, so the first tokens/s after a resume counts
    # the tokens and the time of the same steps (the requeue's idle time is neither).
    since.clock = time.perf_counter() - resumed.since.get("seconds", 0.0)
    loop.seen = _totals(engine.reduce(since.acc))
    return True


def _totals(acc: TaskAccumulator) -> tuple[float, float]:
    return float(acc.sums.sum()), float(acc.counts.sum())


def _evaluate(loop: _Loop, step: int) -> None:
    """The trial's evaluation at `step`; its validation loss judged by the divergence watch."""
    metrics = loop.evaluate(step) or {}
    if VAL_LOSS in metrics:
        finding = loop.watch.val(step, metrics[VAL_LOSS])
        if finding is not None:
            _diverged(loop, finding)


def _diverged(loop: _Loop, finding: Finding) -> None:
    """Said at once: a warning line (rank 0), the finding kept and noticed; an error when asked to stop."""
    if loop.dist_env.is_main:
        print(warning_line(finding, loop.cfg.optimizer.lr), file=sys.stderr, flush=True)
    loop.state.findings.append(finding)
    if loop.notice is not None:
        loop.notice(finding)
    if loop.cfg.trainer.stop_on_divergence:
        raise DivergenceError(
            f"trainer.stop_on_divergence: training stopped at step {finding.step}, the loss diverges: "
            f"{finding.evidence}; lower the learning rate (e.g. lr={loop.cfg.optimizer.lr / 10:g})"
        )


def _run_epoch(loop: _Loop) -> None:
    """The optimizer steps of one epoch (from the resumed window on), until the last step."""
    tc = loop.cfg.trainer
    windows = epoch_windows(
        len(loop.rows), tc.batch_size, tc.grad_accum * loop.dist_env.world_size, tc.seed, loop.epoch
    )
    for i, window in enumerate(windows):
        if i < loop.skip:  # done before the checkpoint this trial resumed from
            continue
        metrics, grad_norm, global_acc, finding = _step(loop, window, (i + 1) / len(windows))
        step = loop.state.step
        # A trial about to stop logs the step it stops at, so its run shows the diverged loss.
        stopping = finding is not None and tc.stop_on_divergence
        if step % tc.log_every == 0 or step == loop.n_steps or stopping:
            _log_line(loop, metrics, grad_norm, global_acc)
        if finding is not None:
            _diverged(loop, finding)
        if tc.eval_every and step % tc.eval_every == 0 and step < loop.n_steps:
            eval_started = time.perf_counter()
            _evaluate(loop, step)
            loop.since.clock += time.perf_counter() - eval_started  # keep eval time out of tokens/s
            loop.model.train()
        if loop.checkpoints is not None:
            next_window = (loop.epoch, i + 1) if i + 1 < len(windows) else (loop.epoch + 1, 0)
            engine = loop.engine
            loop.checkpoints.after_step(engine.model, engine.optimizer, engine.scheduler, _position(loop, next_window))
        if step >= loop.n_steps:
            break


def _step(loop: _Loop, window, epoch_done: float):
    """One optimizer step on one window: its train metrics, gradient norm, every rank's loss sums
    since the last log line, and the divergence finding if this step's loss shows one."""
    cfg, tc, since = loop.cfg, loop.cfg.trainer, loop.since
    task_index = {t: i for i, t in enumerate(loop.tasks)}
    layout = (cfg.data.packing, cfg.data.max_seq_len, cfg.model.attn_implementation)
    batches = [collate([loop.rows[j] for j in micro], task_index, loop.pad_id, *layout) for micro in window]
    engine = loop.engine
    backward_window(engine.model, batches, loop.device, tc.precision, since.acc, tc.loss_norm, len(loop.tasks), engine)
    since.tokens += sum(b.n_tokens for b in batches)
    since.computed += sum(b.n_computed for b in batches)
    since.supervised += sum(b.n_supervised for b in batches)
    grad_norm = engine.step()
    loop.state.step += 1
    loop.state.epoch = loop.epoch + epoch_done
    global_acc = engine.reduce(since.acc)  # every rank's share of the logged loss
    metrics = global_acc.means(TRAIN_LOSS)
    if not math.isfinite(metrics[TRAIN_LOSS]):
        raise TrainingDiverged(
            f"training diverged at step {loop.state.step}: train loss {metrics[TRAIN_LOSS]} "
            f"(optimizer.lr={cfg.optimizer.lr}); lower the learning rate"
        )
    loop.progress.update(1)
    loop.progress.set_postfix(loss=f"{metrics[TRAIN_LOSS]:.3f}", refresh=False)
    # This step's own loss: the global sums since the last log line minus those before the step.
    (sums, counts), (prev_sums, prev_counts) = _totals(global_acc), loop.seen
    loop.seen = (sums, counts)
    finding = loop.watch.train(loop.state.step, (sums - prev_sums) / max(counts - prev_counts, 1.0))
    return metrics, grad_norm, global_acc, finding


def _log_line(loop: _Loop, metrics: dict[str, float], grad_norm, global_acc: TaskAccumulator) -> None:
    """Log the train metrics of the steps since the last line, and start counting afresh."""
    since, state = loop.since, loop.state
    now = time.perf_counter()
    state.tokens_seen += since.tokens
    elapsed = max(now - since.clock, 1e-9)
    metrics.update(global_acc.weight_shares(TRAIN_WEIGHT_SHARE))
    metrics.update(
        {
            GRAD_NORM: float(grad_norm),
            LR: loop.engine.lr(),
            TOKENS_PER_S: since.tokens / elapsed,
            SUPERVISED_TOKENS_PER_S: since.supervised / elapsed,
            # real (non-padding) tokens per token computed; 1 - padding waste
            PACKING_EFFICIENCY: since.tokens / max(since.computed, 1),
            # loss-bearing tokens per token computed (prompts never bear loss)
            SUPERVISED_FRACTION: since.supervised / max(since.computed, 1),
            EPOCH: state.epoch,
        }
    )
    loop.log(metrics, state.step)
    loop.since = _Since(TaskAccumulator(loop.tasks), clock=now)
    loop.seen = (0.0, 0.0)


def _position(loop: _Loop, next_window: tuple[int, int]) -> Position:
    """Where training stands after this step, for a checkpoint: the next window and what is not logged."""
    since = loop.since
    return Position(
        loop.state.step,
        *next_window,
        loop.state.tokens_seen,
        loop.prior_seconds + time.perf_counter() - loop.started,
        since.acc.state(),
        {
            **dict(zip(_SINCE, (since.tokens, since.computed, since.supervised), strict=True)),
            "seconds": time.perf_counter() - since.clock,
        },
    )


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    # In a log file (Slurm, CI) a bar redrawn ten times a second is noise: redraw rarely.
    interval = 0.1 if sys.stderr.isatty() else 15.0
    return tqdm(total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True, mininterval=interval)
