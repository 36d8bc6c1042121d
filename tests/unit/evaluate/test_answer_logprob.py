"""val/answer_logprob: the mean over examples of log P(supervised tokens | prompt), per task_type,
checked against each example scored alone, unpadded, with a plain log-softmax."""

from __future__ import annotations

import pytest
import torch

from helpers import load_embedded
from sweep_sft.config.schema import EvalConfig
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import tokenize
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.loss import validation_loss


def test_answer_logprob_is_the_mean_log_probability_of_each_answer(tokenizer, embedded_model_path, embedded_data_path):
    model, _ = load_embedded(embedded_model_path)
    examples = load_jsonl(embedded_data_path / "validation.jsonl")[::37][:12]
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    rows = tokenize(examples, tokenizer, "all_assistant", 256, "prompt", eot)[0]
    tasks = sorted({r.task_type for r in rows})
    # Batches of 5 mix lengths and tasks, so padding and batching must not change the numbers.
    evaluator = Evaluator(model, tokenizer, torch.device("cpu"), eot, EvalConfig(batch_size=5))
    metrics = validation_loss(evaluator, rows, tasks)

    expected: dict[str, list[float]] = {t: [] for t in tasks}
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0, :-1]
            targets = torch.tensor(row.labels[1:])
            picked = torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets.clamp(min=0)]
            expected[row.task_type].append(float(picked[targets >= 0].sum()))
    for task in tasks:
        assert metrics[f"val/answer_logprob/{task}"] == pytest.approx(
            sum(expected[task]) / len(expected[task]), abs=1e-4
        )
    every = [v for values in expected.values() for v in values]
    assert metrics["val/answer_logprob"] == pytest.approx(sum(every) / len(every), abs=1e-4)
    assert all(metrics[f"val/answer_logprob/{t}"] < 0 for t in tasks)
