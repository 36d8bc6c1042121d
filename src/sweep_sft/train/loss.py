"""Token losses per example, and how they are weighted into one optimizer step's loss.

`trainer.loss_norm` (window = all micro-batches of one optimizer step; N = supervised
tokens in it, E = examples with a supervised token, T = task_types present, N_t = tokens
of task_type t, c_e and s_e = tokens and loss sum of example e):
- token:         sum_e s_e / N                 every supervised token weighs the same (default)
- sequence:      (1/E) sum_e s_e / c_e         every example weighs the same, as unpacked
                                                per-example-mean training does
- task_balanced: (1/T) sum_t (sum_{e in t} s_e) / N_t
                                                every task_type present weighs the same
- sum:           sum_e s_e                     no normalisation
Each is a sum of per-example terms with weights fixed by the whole window, so how the
window's examples are split into micro-batches (or packed into rows) changes nothing.
"""

from __future__ import annotations

from sweep_sft.config.schema import LOSS_NORMS
from sweep_sft.data.batches import Batch
from sweep_sft.data.tokenize import IGNORE


def autocast(device, precision: str):
    """The trial's compute precision around a forward (training, evaluation, generation alike):
    bf16 autocast over the fp32 weights, or nothing for fp32. FlashAttention computes in
    bf16/fp16 only, so every forward of such a model needs it."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def example_loss_sums(model, batch: Batch, device, precision: str = "fp32"):
    """(loss sum, supervised token count) of each example of the batch, shape (E,)."""
    import torch
    import torch.nn.functional as F

    inputs = batch.model_inputs(device)  # a packed batch's examples kept apart as its attention needs
    targets = batch.labels[:, 1:].to(device)
    with autocast(device, precision):
        logits = model(**inputs).logits[:, :-1]
    token_loss = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    mask = targets != IGNORE
    owner = batch.segments[:, 1:].to(device)[mask]
    n = len(batch.example_tasks)
    sums = torch.zeros(n, device=device, dtype=token_loss.dtype).index_add(0, owner, token_loss[mask])
    counts = torch.bincount(owner, minlength=n)
    return sums, counts


def example_weights(batches: list[Batch], loss_norm: str, n_tasks: int) -> list:
    """The weight of each example's loss sum in the window's loss, one tensor per batch."""
    import torch

    counts = [b.example_counts().double() for b in batches]
    tasks = [b.example_tasks for b in batches]
    if loss_norm == "token":
        total = max(sum(float(c.sum()) for c in counts), 1.0)
        return [torch.full_like(c, 1.0 / total) for c in counts]
    if loss_norm == "sequence":
        n_examples = max(sum(int((c > 0).sum()) for c in counts), 1)
        return [torch.where(c > 0, 1.0 / (n_examples * c.clamp(min=1)), 0.0) for c in counts]
    if loss_norm == "task_balanced":
        per_task = torch.zeros(n_tasks, dtype=torch.float64)
        for c, t in zip(counts, tasks, strict=True):
            per_task.index_add_(0, t, c)
        present = max(int((per_task > 0).sum()), 1)
        return [1.0 / (present * per_task[t].clamp(min=1)) for t in tasks]
    if loss_norm == "sum":
        return [torch.ones_like(c) for c in counts]
    raise ValueError(f"trainer.loss_norm must be one of {', '.join(LOSS_NORMS)}; got {loss_norm!r}")


class TaskAccumulator:
    """Running loss sums, token counts and loss weight per task_type (and overall)."""

    def __init__(self, tasks: list[str]):
        import torch

        self.tasks = tasks
        self.sums = torch.zeros(len(tasks), dtype=torch.float64)
        self.counts = torch.zeros(len(tasks), dtype=torch.float64)
        self.weight = torch.zeros(len(tasks), dtype=torch.float64)

    def add(self, task_ids, sums, counts, weights=None) -> None:
        self.sums.index_add_(0, task_ids, sums.detach().double().cpu())
        self.counts.index_add_(0, task_ids, counts.double().cpu())
        if weights is not None:
            self.weight.index_add_(0, task_ids, (weights * counts.double().cpu()))

    def state(self) -> dict[str, list[float]]:
        """The running sums as lists, for a checkpoint (float64: exact through JSON)."""
        return {name: getattr(self, name).tolist() for name in ("sums", "counts", "weight")}

    def load_state(self, state: dict[str, list[float]]) -> None:
        """Restore the sums `state()` gave."""
        import torch

        for name, values in state.items():
            setattr(self, name, torch.tensor(values, dtype=torch.float64))

    def means(self, prefix: str) -> dict[str, float]:
        out = {prefix: float(self.sums.sum() / self.counts.sum().clamp(min=1))}
        for i, task in enumerate(self.tasks):
            if self.counts[i] > 0:
                out[f"{prefix}/{task}"] = float(self.sums[i] / self.counts[i])
        return out

    def weight_shares(self, prefix: str) -> dict[str, float]:
        """Each task_type's share of the total loss weight: how much of every gradient step it drives."""
        total = float(self.weight.sum())
        if total <= 0:
            return {}
        return {
            f"{prefix}/{task}": float(self.weight[i] / total) for i, task in enumerate(self.tasks) if self.counts[i] > 0
        }
