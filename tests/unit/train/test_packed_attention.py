"""Packed examples stay apart on every attention implementation packing allows: each packed
example's logits equal the example run alone, and the step's loss equals the unpacked one.
eager, sdpa and flex_attention run here; the flash layout (one unpadded row, varlen bounds) runs
through a reference varlen attention registered with transformers, which refuses to run without
cu_seq_lens; the real flash_attention_2 kernel only on a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import embedded_rows
from sweep_sft import attention
from sweep_sft.data.batches import collate
from sweep_sft.data.tokenize import IGNORE, Tokenized
from sweep_sft.train.loss import example_loss_sums, example_weights

CPU = torch.device("cpu")
ON_CPU = ("eager", "sdpa", "flex_attention")


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention within each [cu[i], cu[i+1]) of one flattened row, in plain torch, as
    flash_attn_varlen_func computes it; without the varlen bounds it refuses to run."""
    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None or longest is None or kwargs.get("cu_seq_lens_k") is None or attention_mask is not None:
        raise AssertionError("varlen attention needs cu_seq_lens_q/k and max_length_q, and no mask")
    assert query.shape[0] == 1 and cu.dtype == torch.int32 and int(cu[-1]) == query.shape[2]
    assert isinstance(longest, int) and longest == int((cu[1:] - cu[:-1]).max())
    repeat = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    out = torch.zeros_like(query)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        q, k, v = query[..., start:end, :], key[..., start:end, :], value[..., start:end, :]
        scores = (q @ k.transpose(-1, -2)) * (scaling or q.shape[-1] ** -0.5)
        causal = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        out[..., start:end, :] = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
    return out.transpose(1, 2).contiguous(), None


def uncompiled_flex(query, key, value, training=False, **kwargs):
    # transformers torch.compiles flex_attention (minutes on 2 cores); torch's unfused path
    # applies the same BlockMask.
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(query, key, value, **kwargs)


@pytest.fixture(scope="module")
def rows(tokenizer, embedded_data_path):
    return embedded_rows(tokenizer, embedded_data_path, 10)


@pytest.fixture(scope="module")
def index(rows):
    return {t: i for i, t in enumerate(sorted({r.task_type for r in rows}))}


@pytest.fixture(scope="module")
def load(embedded_model_path):
    from transformers import AttentionInterface, AutoModelForCausalLM

    torch.set_num_threads(1)
    AttentionInterface.register("varlen_reference", varlen_reference)
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = AutoModelForCausalLM.from_pretrained(
                embedded_model_path, dtype=torch.float32, attn_implementation=name
            ).eval()
        return cache[name]

    return load


@pytest.fixture(autouse=True)
def no_flex_compile(monkeypatch):
    import transformers.integrations.flex_attention as flex
    import transformers.masking_utils as masks

    monkeypatch.setattr(flex, "compile_friendly_flex_attention", uncompiled_flex)
    create = masks.create_block_mask
    monkeypatch.setattr(masks, "create_block_mask", lambda *args, _compile=False, **kwargs: create(*args, **kwargs))


def alone_logits(model, row: Tokenized):
    return model(input_ids=torch.tensor([row.input_ids])).logits[0]


def max_packed_diff(model, batch, rows, reference) -> float:
    """Largest |logit difference| of any packed example against the example run alone (on the
    reference model: same weights, sdpa)."""
    logits = model(**batch.model_inputs(CPU)).logits
    worst = 0.0
    for i, row in enumerate(rows):
        b, pos = (batch.segments == i).nonzero(as_tuple=True)
        assert torch.equal(batch.position_ids[b, pos], torch.arange(len(row.input_ids)))
        worst = max(worst, (logits[b, pos] - alone_logits(reference, row)).abs().max().item())
    return worst


def step_loss(model, batch, n_tasks) -> float:
    sums, _ = example_loss_sums(model, batch, CPU)
    weights = example_weights([batch], "token", n_tasks)[0]
    return float((sums * weights.to(sums.dtype)).sum())


@pytest.mark.parametrize("name", ON_CPU)
def test_packed_examples_equal_the_examples_alone(load, rows, index, tokenizer, name):
    model, pad = load(name), tokenizer.pad_token_id
    packed = collate(rows, index, pad, "packed", 256, name)
    assert packed.input_ids.shape[0] <= len(rows) // 3  # really packed: several examples a row
    with torch.no_grad():
        diff = max_packed_diff(model, packed, rows, load("sdpa"))
        loss_p, loss_u = step_loss(model, packed, len(index)), step_loss(model, collate(rows, index, pad), len(index))
    print(f"{name}: max |logit diff| {diff:.2e}; step loss packed {loss_p:.6f} unpacked {loss_u:.6f}")
    assert diff <= 1e-5
    assert loss_p == pytest.approx(loss_u, abs=1e-5)


def test_the_flash_layout_through_a_varlen_kernel_equals_the_examples_alone(load, rows, index, tokenizer):
    model, pad = load("varlen_reference"), tokenizer.pad_token_id
    flat = collate(rows, index, pad, "packed", 256, "flash_attention_2")
    assert flat.input_ids.shape == (1, sum(len(r.input_ids) for r in rows))  # one row, no padding
    inputs = flat.model_inputs(CPU)
    assert "attention_mask" not in inputs
    with torch.no_grad():
        with pytest.raises(AssertionError, match="needs cu_seq_lens"):  # the reference cannot go without
            model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"])
        diff = max_packed_diff(model, flat, rows, load("sdpa"))
        loss_p = step_loss(model, flat, len(index))
        loss_u = step_loss(load("sdpa"), collate(rows, index, pad), len(index))
    print(f"flash layout (varlen_reference): max |logit diff| {diff:.2e}; step loss {loss_p:.6f} vs {loss_u:.6f}")
    assert diff <= 1e-5
    assert loss_p == pytest.approx(loss_u, abs=1e-5)


def test_the_flattened_layout():
    rows = [Tokenized([5, 6, 7], [5, 6, 7], "a"), Tokenized([8, 9, 10, 11, 12], [IGNORE, IGNORE, 10, 11, 12], "b")]
    rows.append(Tokenized([13, 14], [13, 14], "a"))
    batch = collate(rows, {"a": 0, "b": 1}, 0, "packed", 4, "flash_attention_3")  # max_seq_len binds no row
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert batch.segments.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 2, 2]]
    assert batch.labels.tolist() == [[IGNORE, 6, 7, IGNORE, IGNORE, 10, 11, 12, IGNORE, 14]]
    assert batch.cu_seq_lens.dtype == torch.int32 and batch.cu_seq_lens.tolist() == [0, 3, 8, 10]
    assert batch.n_computed == batch.n_tokens == 10
    assert batch.example_counts().tolist() == [2, 3, 1]
    inputs = batch.model_inputs(CPU)
    varlen = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    assert set(inputs) == {"input_ids", "position_ids"} | varlen
    assert inputs["max_length_q"] == inputs["max_length_k"] == 5 and type(inputs["max_length_q"]) is int


def test_the_masks_of_each_implementation():
    from torch.nn.attention.flex_attention import create_mask

    segments = torch.tensor([[0, 0, 1, 1, 1, -1]])
    allowed = attention.allowed_pairs(segments)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0],
         [0, 0, 0, 0, 0, 1]], dtype=torch.bool,
    )
    assert torch.equal(allowed[0, 0], expected)
    additive = attention.additive_mask(allowed)
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, allowed) and (additive[~allowed] == torch.finfo(torch.float32).min).all()
    block = attention.block_mask(segments)
    assert torch.equal(create_mask(block.mask_mod, 1, 1, 6, 6, device="cpu"), allowed)


def test_a_boolean_mask_under_eager_mixes_examples(load, rows, index, tokenizer):
    """What the additive mask fixes: eager adds its mask, so True/False become +1/+0."""
    model = load("eager")
    packed = collate(rows, index, tokenizer.pad_token_id, "packed", 256, "eager")
    inputs = packed.model_inputs(CPU) | {"attention_mask": attention.allowed_pairs(packed.segments)}
    first = rows[packed.segments[0, -1].item()]  # the last example of row 0: others precede it
    with torch.no_grad():
        logits = model(**inputs).logits[0, packed.segments[0] == packed.segments[0, -1]]
        assert (logits - alone_logits(model, first)).abs().max() > 1e-2


def test_eager_under_bf16_autocast_keeps_examples_apart(load, rows, index, tokenizer):
    model = load("eager")
    packed = collate(rows, index, tokenizer.pad_token_id, "packed", 256, "eager")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**packed.model_inputs(CPU)).logits.float()
        assert torch.isfinite(logits).all()
        for i, row in enumerate(rows):
            alone = alone_logits(model, row).float()
            diff = (logits[packed.segments == i] - alone).abs().max().item()
            assert diff < 0.05, (i, diff)  # bf16 rounding; a leak across examples is O(1), see above


@pytest.mark.parametrize("name", ("eager", "flex_attention"))
def test_unpacked_right_padded_rows_need_no_mask(load, rows, tokenizer, index, name):
    """evaluate/loss.py's layout: one example per row, padding on the right, causal attention only."""
    model = load(name)
    batch = collate(rows[:4], index, tokenizer.pad_token_id)
    assert batch.model_inputs(CPU).keys() == {"input_ids"}
    with torch.no_grad():
        logits = model(**batch.model_inputs(CPU)).logits
        for i, row in enumerate(rows[:4]):
            torch.testing.assert_close(logits[i, : len(row.input_ids)], alone_logits(model, row), rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_flash_attention_2_packed_on_cuda(embedded_model_path, rows, index, tokenizer):
    pytest.importorskip("flash_attn")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from transformers import AutoModelForCausalLM

    cuda = torch.device("cuda")
    model = AutoModelForCausalLM.from_pretrained(
        embedded_model_path, dtype=torch.float32, attn_implementation="flash_attention_2"
    ).to(cuda)
    pad = tokenizer.pad_token_id
    flat = collate(rows, index, pad, "packed", 256, "flash_attention_2")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(**flat.model_inputs(cuda)).logits.float().cpu()
        padded = collate(rows, index, pad)  # unpacked right-padded rows: flash's plain causal kernel
        logits_u = model(**padded.model_inputs(cuda)).logits.float().cpu()
        for i, row in enumerate(rows):
            alone = model(input_ids=torch.tensor([row.input_ids], device=cuda)).logits[0].float().cpu()
            assert (logits[flat.segments == i] - alone).abs().max() < 0.05
            assert (logits_u[i, : len(row.input_ids)] - alone).abs().max() < 0.05
        sums_p, counts_p = example_loss_sums(model, flat, cuda, "bf16")
        sums_u, counts_u = example_loss_sums(model, padded, cuda, "bf16")
    assert torch.equal(counts_p, counts_u)
    assert F.l1_loss(sums_p / counts_p, sums_u / counts_u).item() < 1e-2


def test_load_model_names_the_key_when_transformers_refuses_the_implementation(embedded_model_path, tokenizer):
    """The last line of defence: from_pretrained's ImportError (flash_attn missing) or ValueError."""
    from sweep_sft.config.schema import ModelConfig
    from sweep_sft.errors import ConfigError
    from sweep_sft.modeling import load_model

    if attention._flash_installed("flash_attention_2"):
        pytest.skip("flash_attn is installed here")
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation=flash_attention_2: .*FlashAttention2"):
        load_model(ModelConfig(attn_implementation="flash_attention_2"), str(embedded_model_path), tokenizer, CPU)
