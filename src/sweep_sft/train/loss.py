"""Token losses per example, so any normalisation and any per-task_type split is exact."""

from __future__ import annotations

from sweep_sft.data.batches import Batch
from sweep_sft.data.tokenize import IGNORE


def example_loss_sums(model, batch: Batch, device, precision: str = "fp32"):
    """(sum of token losses, number of supervised tokens) for each example of the batch.

    No attention mask: with right padding and causal attention, real tokens never see the
    padding after them, and the mask-free path is the fast one.
    """
    import torch
    import torch.nn.functional as F

    ids = batch.input_ids.to(device)
    targets = batch.labels[:, 1:].to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(input_ids=ids).logits[:, :-1]
    token_loss = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    mask = targets != IGNORE
    return (token_loss * mask).sum(dim=1), mask.sum(dim=1)


class TaskAccumulator:
    """Running loss sums and token counts per task_type (and overall)."""

    def __init__(self, tasks: list[str]):
        import torch

        self.tasks = tasks
        self.sums = torch.zeros(len(tasks), dtype=torch.float64)
        self.counts = torch.zeros(len(tasks), dtype=torch.float64)

    def add(self, task_ids, sums, counts) -> None:
        self.sums.index_add_(0, task_ids, sums.detach().double().cpu())
        self.counts.index_add_(0, task_ids, counts.double().cpu())

    def means(self, prefix: str) -> dict[str, float]:
        out = {prefix: float(self.sums.sum() / self.counts.sum().clamp(min=1))}
        for i, task in enumerate(self.tasks):
            if self.counts[i] > 0:
                out[f"{prefix}/{task}"] = float(self.sums[i] / self.counts[i])
        return out
