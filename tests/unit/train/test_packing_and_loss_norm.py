"""Packing without cross-talk, and every loss normalisation invariant to how a window of
examples is split into micro-batches and packed rows."""

from __future__ import annotations

import pytest
import torch

from helpers import embedded_rows, load_embedded
from sweep_sft.config.schema import LOSS_NORMS
from sweep_sft.data.batches import best_fit_decreasing, collate, pack_rows
from sweep_sft.train.loop import backward_window
from sweep_sft.train.loss import example_loss_sums

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows(tokenizer, embedded_data_path):
    return embedded_rows(tokenizer, embedded_data_path, 32)


@pytest.fixture(scope="module")
def model(embedded_model_path):
    torch.set_num_threads(1)
    return load_embedded(embedded_model_path)[0]


@pytest.fixture(scope="module")
def index(rows):
    return {t: i for i, t in enumerate(sorted({r.task_type for r in rows}))}


def test_best_fit_decreasing_fills_rows():
    # 60 opens a row, 50 a second; 40 best-fits the first (40 free), 30 and 20 the second; 10 opens a third
    assert best_fit_decreasing([60, 50, 40, 30, 20, 10], 100) == [[0, 2], [1, 3, 4], [5]]


def test_equal_packing_uses_the_fewest_rows_nearly_full(rows):
    lengths = [len(r.input_ids) for r in rows]
    bins = pack_rows(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(len(rows)))
    assert len(bins) == -(-sum(lengths) // 128)
    widths = [sum(lengths[i] for i in b) for b in bins]
    assert max(widths) <= 128
    assert sum(lengths) / (len(bins) * max(widths)) >= 0.97  # padding under 3%


def test_an_example_in_a_pack_equals_the_example_alone(model, rows, index, tokenizer):
    packed = collate(rows, index, tokenizer.pad_token_id, "packed", 256)
    assert packed.input_ids.shape[0] < len(rows) // 4  # really packed: several examples per row
    alone = collate(rows, index, tokenizer.pad_token_id, "none")
    with torch.no_grad():
        sums_p, counts_p = example_loss_sums(model, packed, CPU)
        sums_a, counts_a = example_loss_sums(model, alone, CPU)
        assert torch.equal(counts_p, counts_a)
        torch.testing.assert_close(sums_p, sums_a, rtol=0, atol=1e-4 * counts_a.max().item())
        # logits, position by position, of the first example of the first packed row
        logits = model(**packed.model_inputs(CPU)).logits
        first = packed.segments[0, 0].item()
        width = len(rows[first].input_ids)
        start = (packed.segments[0] == first).nonzero()[0].item()
        logits_a = model(input_ids=torch.tensor([rows[first].input_ids])).logits[0]
        torch.testing.assert_close(logits[0, start : start + width], logits_a, rtol=0, atol=1e-5)
        # an example placed later in a row: its positions restart, it sees nothing before it
        later = packed.segments[0][packed.segments[0] >= 0].unique_consecutive()[-1].item()
        start = (packed.segments[0] == later).nonzero()[0].item()
        width = len(rows[later].input_ids)
        logits_a = model(input_ids=torch.tensor([rows[later].input_ids])).logits[0]
        torch.testing.assert_close(logits[0, start : start + width], logits_a, rtol=0, atol=1e-5)


def window(model, rows, index, pad, micro, packing, loss_norm):
    batches = [collate(rows[i : i + micro], index, pad, packing, 256) for i in range(0, len(rows), micro)]
    model.zero_grad(set_to_none=True)
    loss = backward_window(model, batches, CPU, "fp32", None, loss_norm, len(index))
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_norm", LOSS_NORMS)
def test_each_loss_norm_is_invariant_to_the_split(model, rows, index, tokenizer, loss_norm):
    """GA 1 x 32 vs 4 x 8 vs 16 x 2 on the same 32 examples, padded and packed: same loss, same grads."""
    pad = tokenizer.pad_token_id
    ref_loss, ref_grads = window(model, rows, index, pad, 32, "none", loss_norm)
    for micro, packing in ((8, "none"), (2, "none"), (32, "packed"), (8, "packed"), (2, "packed")):
        loss, grads = window(model, rows, index, pad, micro, packing, loss_norm)
        assert loss == pytest.approx(ref_loss, rel=1e-5), (micro, packing)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6 * max(1.0, ref_loss))


def test_loss_norm_definitions(model, rows, index, tokenizer):
    batch = collate(rows, index, tokenizer.pad_token_id, "none")
    with torch.no_grad():
        sums, counts = example_loss_sums(model, batch, CPU)
    tasks = batch.example_tasks
    expected = {
        "token": sums.sum() / counts.sum(),
        "sequence": (sums / counts).mean(),
        "task_balanced": torch.stack(
            [sums[tasks == t].sum() / counts[tasks == t].sum() for t in tasks.unique()]
        ).mean(),
        "sum": sums.sum(),
    }
    for loss_norm, value in expected.items():
        loss, _ = window(model, rows, index, tokenizer.pad_token_id, 8, "packed", loss_norm)
        assert loss == pytest.approx(value.item(), rel=1e-5), loss_norm
