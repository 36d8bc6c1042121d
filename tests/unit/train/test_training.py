"""The trainer's loss normalisation across gradient accumulation, and a loss regression."""

from __future__ import annotations

import pytest
import torch

from helpers import load_embedded
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.data.batches import collate
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import tokenize
from sweep_sft.train.loop import backward_window, train


@pytest.fixture(scope="module")
def rows(tokenizer, embedded_data_path):
    examples = load_jsonl(embedded_data_path / "train.jsonl")[:32]
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return tokenize(examples, tokenizer, "all_assistant", 256, "prompt", eot)[0]


def window_grads(model, rows, tokenizer, batch_size):
    tasks = sorted({r.task_type for r in rows})
    index = {t: i for i, t in enumerate(tasks)}
    pad = tokenizer.pad_token_id
    batches = [collate(rows[i : i + batch_size], index, pad) for i in range(0, len(rows), batch_size)]
    model.zero_grad(set_to_none=True)
    loss = backward_window(model, batches, torch.device("cpu"), "fp32")
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_accum_8x4_equals_1x32(embedded_model_path, tokenizer, rows):
    torch.set_num_threads(1)
    model = load_embedded(embedded_model_path)[0]
    loss_1, grads_1 = window_grads(model, rows, tokenizer, 32)
    loss_8, grads_8 = window_grads(model, rows, tokenizer, 4)
    # Reference: the mean over every supervised token of the 32 examples, computed directly.
    batch = collate(rows, {t: 0 for t in {r.task_type for r in rows}}, tokenizer.pad_token_id)
    logits = model(input_ids=batch.input_ids).logits[:, :-1]
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.labels[:, 1:].reshape(-1))
    assert loss_1 == pytest.approx(reference.item(), abs=1e-5)
    assert loss_8 == pytest.approx(loss_1, abs=1e-5)
    for name in grads_1:
        torch.testing.assert_close(grads_8[name], grads_1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_is_invariant_to_the_micro_batch_split(embedded_model_path, tokenizer, rows, tmp_path):
    """Same examples per optimizer step (batch 32 x GA 1, batch 4 x GA 8, packed): same weights. Packed
    runs on eager, whose packed mask is one the loop must build for it (sdpa's boolean one would mix examples)."""
    torch.set_num_threads(1)
    finals = []
    runs = ((32, 1, "none", "sdpa"), (4, 8, "none", "sdpa"), (8, 4, "packed", "eager"))
    for batch_size, grad_accum, packing, attn in runs:
        cfg = validate(
            compose(
                [
                    f"trainer.batch_size={batch_size}",
                    f"grad_accum={grad_accum}",
                    f"data.packing={packing}",
                    f"model.attn_implementation={attn}",
                    "trainer.max_steps=3",
                    "trainer.progress=false",
                    "lr=1e-3",
                    "epochs=3",
                ]
            )
        )
        model = load_embedded(embedded_model_path)[0]
        model.set_attn_implementation(attn)
        losses: list[float] = []
        train(
            model,
            rows,
            sorted({r.task_type for r in rows}),
            cfg,
            torch.device("cpu"),
            tokenizer.pad_token_id,
            lambda metrics, step, out=losses: out.append(metrics["train/loss"]),
            lambda step: {},
        )
        finals.append((dict(model.named_parameters()), losses))
    (params_a, losses_a), *others = finals
    for params_b, losses_b in others:
        assert losses_b == pytest.approx(losses_a, abs=1e-5)
        for name, param in params_a.items():
            torch.testing.assert_close(params_b[name], param, rtol=1e-4, atol=1e-5, msg=name)


# Train losses of the first 6 optimizer steps for a seeded, freshly initialised Llama of the
# embedded shape on the embedded data (fp32, one thread). Update only for an intended change.
EXPECTED_LOSSES = [
    6.944980094103309,
    6.576519692779347,
    6.392876047837107,
    6.252125099727086,
    6.150693706959985,
    6.25111067044985,
]


def test_loss_regression(tmp_path, embedded_model_path, tiny_overrides):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(embedded_model_path))
    model.save_pretrained(tmp_path / "seeded")
    AutoTokenizer.from_pretrained(embedded_model_path).save_pretrained(tmp_path / "seeded")
    from sweep_sft.trial.run import run_trial

    cfg = compose(
        tiny_overrides
        + [
            f"model.name_or_path={tmp_path / 'seeded'}",
            "trainer.max_steps=6",
            "eval.generate=false",
            "eval.general_probe=false",
        ]
    )
    result = run_trial(cfg)
    losses = [value for _, value in result.series["train/loss"]]
    assert losses == pytest.approx(EXPECTED_LOSSES, abs=1e-4), losses
