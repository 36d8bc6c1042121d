"""Validation loss per task_type, and the answer log-probability that moves before exact match does."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from sweep_sft.data.batches import collate
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.metrics import ANSWER_LOGPROB, VAL_LOSS
from sweep_sft.train.loss import TaskAccumulator, example_loss_sums

if TYPE_CHECKING:
    from sweep_sft.evaluate.evaluator import Evaluator


def validation_loss(
    ev: Evaluator, rows: list[Tokenized], tasks: list[str], advance: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Token-mean loss over the validation split, overall and per task_type; and the mean over
    examples of log P(supervised tokens | prompt) (`val/answer_logprob`), which moves before exact
    match does: an answer can become much likelier while greedy decoding still misses it.
    `advance(n)` is told as each batch of n rows is done."""
    import torch

    model, batch_size, pad_id = ev.model, ev.eval.batch_size, ev.tokenizer.pad_token_id
    task_index = {t: i for i, t in enumerate(tasks)}
    acc = TaskAccumulator(tasks)
    logprob: dict[str, float] = defaultdict(float)
    examples: dict[str, int] = defaultdict(int)
    # Length-sorted batches: evaluation order does not matter, padding does.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [rows[i] for i in order[start : start + batch_size]]
            batch = collate(chunk, task_index, pad_id)
            sums, counts = example_loss_sums(model, batch, ev.device, ev.precision)
            acc.add(batch.example_tasks, sums, counts)
            for task, loss_sum in zip(batch.example_tasks.tolist(), sums.tolist(), strict=True):
                logprob[tasks[task]] -= loss_sum
                examples[tasks[task]] += 1
            if advance is not None:
                advance(len(chunk))
    metrics = acc.means(VAL_LOSS)
    metrics.update({f"{ANSWER_LOGPROB}/{t}": logprob[t] / examples[t] for t in tasks if examples[t]})
    metrics[ANSWER_LOGPROB] = sum(logprob.values()) / max(sum(examples.values()), 1)
    return metrics
