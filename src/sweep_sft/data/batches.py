"""Micro-batches and accumulation windows, in a data order fixed by the seed."""

from __future__ import annotations

from dataclasses import dataclass

from sweep_sft.data.tokenize import IGNORE, Tokenized


@dataclass
class Batch:
    input_ids: "torch.Tensor"  # noqa: F821  (B, T), right-padded
    labels: "torch.Tensor"  # noqa: F821  (B, T), IGNORE on padding and unsupervised tokens
    task_ids: "torch.Tensor"  # noqa: F821  (B,), index into the task_type list
    n_tokens: int  # real (non-padding) tokens, for throughput

    @property
    def n_supervised(self) -> int:
        # Labels are shifted by one inside the loss, so the first position never counts.
        return int((self.labels[:, 1:] != IGNORE).sum())


def collate(rows: list[Tokenized], task_index: dict[str, int], pad_id: int) -> Batch:
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row.input_ids)] = torch.tensor(row.input_ids)
        labels[i, : len(row.labels)] = torch.tensor(row.labels)
    tasks = torch.tensor([task_index[r.task_type] for r in rows])
    return Batch(ids, labels, tasks, sum(len(r.input_ids) for r in rows))


def epoch_windows(n_examples: int, batch_size: int, grad_accum: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Example indices for one epoch: a list of optimizer steps, each a list of micro-batches.

    The order depends only on (seed, epoch), so the same trial sees the same data order
    whatever the run, and a grad_accum change regroups the same micro-batches.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    micro = [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    micro = -(-n_examples // batch_size)
    return -(-micro // grad_accum)
