"""Evaluation per task_type: validation loss, answer log-probability, and exact match of greedy
generations."""

from __future__ import annotations

from collections import defaultdict

from sweep_sft.data.batches import collate
from sweep_sft.data.records import Example
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.train.loss import TaskAccumulator, example_loss_sums


def validation_loss(
    model, rows: list[Tokenized], tasks: list[str], device, batch_size: int, pad_id: int, precision: str = "fp32"
) -> dict[str, float]:
    """Token-mean loss over the validation split, overall and per task_type; and the mean over
    examples of log P(supervised tokens | prompt) (`val/answer_logprob`), which moves before exact
    match does: an answer can become much likelier while greedy decoding still misses it."""
    import torch

    task_index = {t: i for i, t in enumerate(tasks)}
    acc = TaskAccumulator(tasks)
    logprob: dict[str, float] = defaultdict(float)
    examples: dict[str, int] = defaultdict(int)
    # Length-sorted batches: evaluation order does not matter, padding does.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate([rows[i] for i in order[start : start + batch_size]], task_index, pad_id)
            sums, counts = example_loss_sums(model, batch, device, precision)
            acc.add(batch.example_tasks, sums, counts)
            for task, loss_sum in zip(batch.example_tasks.tolist(), sums.tolist(), strict=True):
                logprob[tasks[task]] -= loss_sum
                examples[tasks[task]] += 1
    metrics = acc.means("val/loss")
    metrics.update({f"val/answer_logprob/{t}": logprob[t] / examples[t] for t in tasks if examples[t]})
    metrics["val/answer_logprob"] = sum(logprob.values()) / max(sum(examples.values()), 1)
    return metrics


def exact_match(
    model, tokenizer, examples: list[Example], device, max_new_tokens: int, batch_size: int, end_of_turn_id: int
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Greedy-generate the last assistant turn from the conversation before it, stopping at
    end-of-turn; score per task_type the share that equals the reference exactly."""
    import torch

    prompts = tokenizer.apply_chat_template(
        [list(e.messages[:-1]) for e in examples], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    hits: dict[str, list[bool]] = defaultdict(list)
    samples: list[dict[str, str]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            # Left padding, so every prompt ends where generation starts.
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                attention[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end_of_turn_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row, i in enumerate(chunk):
                answer = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
                reference = examples[i].messages[-1]["content"].strip()
                hits[examples[i].task_type].append(answer == reference)
                if len(hits[examples[i].task_type]) <= 3:
                    samples.append({"task_type": examples[i].task_type, "reference": reference, "generated": answer})
    scores = {f"task/exact_match/{t}": sum(h) / len(h) for t, h in sorted(hits.items())}
    scores["task/exact_match"] = sum(scores.values()) / max(len(scores), 1)
    return scores, samples
