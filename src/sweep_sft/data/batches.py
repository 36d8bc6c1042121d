"""Micro-batches and accumulation windows, in a data order fixed by the seed.

A micro-batch is always the same `batch_size` examples, whether they are padded one per
row (`packing=none`) or packed (`packing=packed`): packing changes how the examples are laid
out, never which examples an optimizer step sees. Packed examples keep their own position ids
(restarting at 0) and never attend to one another; how depends on `model.attn_implementation`
(sweep_sft.attention has the table): with eager, sdpa and flex_attention the examples are
bin-packed into rows of at most `max_seq_len` and a block-diagonal causal mask (an additive
float mask, a boolean mask, a BlockMask) is built for the forward; with flash_attention_2/3 they
are laid end to end in one unpadded row, and the varlen kernel gets their bounds
(cu_seq_lens_q/k, max_length_q/k), as TRL's DataCollatorWithFlattening does. Either way an
example's first label is IGNORE (it is never predicted from the previous example's last token),
and `segments` says which example each token belongs to, so the loss per example is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweep_sft.attention import cumulative_lengths, flattens, packed_inputs
from sweep_sft.data.tokenize import IGNORE, Tokenized


@dataclass
class Batch:
    """One micro-batch as tensors: padded or packed rows, labels and per-example indices."""

    input_ids: "torch.Tensor"  # noqa: F821  (B, T), right-padded
    labels: "torch.Tensor"  # noqa: F821  (B, T), IGNORE on padding, unsupervised tokens, example starts
    segments: "torch.Tensor"  # noqa: F821  (B, T), index of the example each token belongs to, -1 on padding
    example_tasks: "torch.Tensor"  # noqa: F821  (E,), task index of each example
    position_ids: "torch.Tensor | None" = None  # noqa: F821  (B, T), restarting per example; None: 0..T-1
    n_tokens: int = 0  # real (non-padding) tokens
    # Packed: the attention implementation the masks or varlen bounds are made for; None: unpacked,
    # one example per row, where causal attention alone keeps padding out of view.
    attn_implementation: str | None = None
    cu_seq_lens: "torch.Tensor | None" = None  # noqa: F821  (E+1,) int32 example starts and total; flattened only

    @property
    def n_computed(self) -> int:
        return self.input_ids.numel()

    def example_counts(self):
        """Supervised (target) tokens of each example: labels are shifted by one in the loss."""
        import torch

        targets = self.labels[:, 1:] != IGNORE
        return torch.bincount(self.segments[:, 1:][targets], minlength=len(self.example_tasks))

    @property
    def n_supervised(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    def model_inputs(self, device) -> dict:
        """The model's forward kwargs on `device`: input ids, and for a packed batch what keeps its
        examples apart on its attention implementation."""
        if self.attn_implementation is None:
            return {"input_ids": self.input_ids.to(device)}
        return packed_inputs(
            self.attn_implementation, self.input_ids, self.segments, self.position_ids, self.cu_seq_lens, device
        )


def collate(
    rows: list[Tokenized],
    task_index: dict[str, int],
    pad_id: int,
    packing: str = "none",
    max_seq_len: int | None = None,
    attn_implementation: str = "sdpa",
) -> Batch:
    """One micro-batch of rows: one padded row per example, or packed as `attn_implementation`
    needs (bin-packed rows of max_seq_len, or one unpadded row for the varlen kernels)."""
    import torch

    packed = packing == "packed"
    if packed and flattens(attn_implementation):
        layout = [list(range(len(rows)))]
    elif packed:
        layout = pack_rows([len(r.input_ids) for r in rows], max_seq_len)
    else:
        layout = [[i] for i in range(len(rows))]
    width = max(sum(len(rows[i].input_ids) for i in line) for line in layout)
    shape = (len(layout), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    for b, line in enumerate(layout):
        start = 0
        for i in line:
            row, end = rows[i], start + len(rows[i].input_ids)
            ids[b, start:end] = torch.tensor(row.input_ids)
            labels[b, start:end] = torch.tensor(row.labels)
            labels[b, start] = IGNORE  # never predicted from the previous example's last token
            segments[b, start:end] = i
            positions[b, start:end] = torch.arange(end - start)
            start = end
    tasks = torch.tensor([task_index[r.task_type] for r in rows])
    n_tokens = sum(len(r.input_ids) for r in rows)
    if not packed:
        return Batch(ids, labels, segments, tasks, n_tokens=n_tokens)
    cu_seq_lens = cumulative_lengths([len(r.input_ids) for r in rows]) if flattens(attn_implementation) else None
    return Batch(ids, labels, segments, tasks, positions, n_tokens, attn_implementation, cu_seq_lens)


def pack_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Equal-width packing: as few rows as rows of `capacity` need, each row as short as
    best-fit decreasing allows, so the rows come out nearly equal and padding nearly vanishes."""
    if capacity is None:
        raise ValueError("packing needs max_seq_len")
    n_rows = -(-sum(lengths) // capacity)
    width = max(max(lengths), -(-sum(lengths) // n_rows))
    while width < capacity:
        bins = best_fit_decreasing(lengths, width)
        if len(bins) <= n_rows:
            return bins
        width += max(1, width // 100)
    return best_fit_decreasing(lengths, capacity)


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Each example, longest first, goes into the fullest row it fits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda b: free[b])
            bins[best].append(i)
            free[best] -= lengths[i]
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


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
    """Optimizer steps in one epoch of n_examples."""
    micro = -(-n_examples // batch_size)
    return -(-micro // grad_accum)
