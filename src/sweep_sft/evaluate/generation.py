"""Generated answers scored per task_type: exact match of greedy generations, pass@k of sampled
ones, and recall on trained prompts."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import TYPE_CHECKING

from sweep_sft.data.records import Example
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.metrics import EXACT_MATCH, SAMPLE_MATCH, pass_at

if TYPE_CHECKING:
    from sweep_sft.evaluate.evaluator import Evaluator

# A model's own generation_config fills every setting a generate() call leaves unset; these
# would change what exact match and pass@k measure (a repetition penalty, a minimum length
# that forbids stopping), so they are set to "off" explicitly.
PLAIN_DECODING = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0}
PLAIN_SAMPLING = {"typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, **PLAIN_DECODING}


def generate_answers(
    ev: Evaluator, examples: list[Example], samples: int = 1, temperature: float | None = None
) -> list[list[str]]:
    """Answers to each example's last assistant turn, generated from the conversation before it
    and stopped at end-of-turn: greedy (temperature None, one answer) or `samples` sampled ones."""
    import torch

    model, tokenizer = ev.model, ev.tokenizer
    prompts = tokenizer.apply_chat_template(
        [list(e.messages[:-1]) for e in examples], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    answers: list[list[str]] = [[] for _ in examples]
    sampling = {"do_sample": False, **PLAIN_DECODING}
    if temperature is not None:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, **PLAIN_SAMPLING}
    per_batch = max(1, ev.eval.batch_size // samples)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), per_batch):
            chunk = order[start : start + per_batch]
            width = max(len(prompts[i]) for i in chunk)
            # Left padding, so every prompt ends where generation starts.
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                attention[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(ev.device),
                attention_mask=attention.to(ev.device),
                max_new_tokens=ev.eval.max_new_tokens,
                num_return_sequences=samples,
                eos_token_id=ev.end_of_turn_id,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            for row, i in enumerate(chunk):
                for j in range(samples):
                    generated = out[row * samples + j, width:]
                    answers[i].append(tokenizer.decode(generated, skip_special_tokens=True).strip())
    model.train(was_training)
    return answers


def reference(example: Example) -> str:
    """The reference answer: the example's last assistant turn."""
    return example.messages[-1]["content"].strip()


def per_task_mean(prefix: str, values: dict[str, list[float]]) -> dict[str, float]:
    """`prefix/<task>` means, and `prefix` itself: the mean over task_types (each weighs the same)."""
    scores = {f"{prefix}/{t}": sum(v) / len(v) for t, v in sorted(values.items()) if v}
    scores[prefix] = sum(scores.values()) / max(len(scores), 1)
    return scores


def exact_match(
    ev: Evaluator, examples: list[Example], prefix: str = EXACT_MATCH
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Per task_type, the share of greedy generations equal to the reference; and the first three
    generations of each task_type, to read."""
    answers = generate_answers(ev, examples)
    hits: dict[str, list[float]] = defaultdict(list)
    samples: list[dict[str, str]] = []
    for example, (answer,) in zip(examples, answers, strict=True):
        hits[example.task_type].append(float(answer == reference(example)))
        if len(hits[example.task_type]) <= 3:
            samples.append({"task_type": example.task_type, "reference": reference(example), "generated": answer})
    return per_task_mean(prefix, hits), samples


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is right) from n samples with c right
    (Chen et al. 2021, "Evaluating Large Language Models Trained on Code")."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sampled_pass_at_k(ev: Evaluator, examples: list[Example]) -> dict[str, float]:
    """pass@k per task_type (`task/pass_at_<k>/<task>`) and the share of right samples
    (`task/sample_match/<task>`, an estimate of pass@1 under sampling), from samples seeded by `ev.seed`."""
    import torch

    cfg, device = ev.eval, ev.device
    n = cfg.num_samples
    with torch.random.fork_rng(devices=[device] if getattr(device, "type", "cpu") == "cuda" else []):
        torch.manual_seed(ev.seed)  # the same samples for the same model, whatever ran before
        answers = generate_answers(ev, examples, n, cfg.temperature)
    passed: dict[str, list[float]] = defaultdict(list)
    matched: dict[str, list[float]] = defaultdict(list)
    for example, sampled in zip(examples, answers, strict=True):
        right = sum(a == reference(example) for a in sampled)
        passed[example.task_type].append(pass_at_k(n, right, cfg.pass_k))
        matched[example.task_type].append(right / n)
    return {**per_task_mean(pass_at(cfg.pass_k), passed), **per_task_mean(SAMPLE_MATCH, matched)}


def trained_sample(rows: list[Tokenized], n: int, seed: int) -> list[Example]:
    """Up to `n` distinct trained examples per task_type, drawn with `seed`."""
    by_task: dict[str, dict[int, Example]] = defaultdict(dict)
    for row in rows:
        if row.example is not None:  # repeats of a task share their Example
            by_task[row.task_type][id(row.example)] = row.example
    rng = random.Random(seed)
    picked: list[Example] = []
    for task in sorted(by_task):
        pool = list(by_task[task].values())
        picked += rng.sample(pool, min(n, len(pool)))
    return picked
