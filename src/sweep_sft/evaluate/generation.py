"""Generated answers scored per task_type by each task_type's scorer (evaluate.scorers): the
mean score of greedy generations (`task/exact_match`), pass@k of sampled ones, and recall on
trained prompts; with every greedy generation as a record to read (generations.jsonl)."""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sweep_sft.data.records import Example
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.evaluate.progress import LINES, Phase
from sweep_sft.evaluate.scorers import TaskScorers
from sweep_sft.metrics import EXACT_MATCH, SAMPLE_MATCH, pass_at
from sweep_sft.train.loss import autocast

if TYPE_CHECKING:
    from sweep_sft.evaluate.evaluator import Evaluator

# What a model's generation_config keeps while evaluation generates: its special token ids and
# cache settings. The rest (a repetition penalty, a minimum length that forbids stopping, a
# temperature or top_p of its own) would change what exact match and pass@k measure.
KEPT_GENERATION = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache")
VALIDATION, TRAIN = "validation", "train"  # a generation record's `split`


@contextmanager
def plain_generation(model) -> Iterator[None]:
    """The model's generation_config replaced, while the block runs, by transformers' defaults
    with only KEPT_GENERATION kept. Passing "off" values for the rest instead (min_length=0 with
    min_new_tokens=0, ...) makes transformers warn on every generate() call that both are set."""
    from transformers import GenerationConfig

    # A peft model's generate() copies its own config into the model it wraps: both are swapped
    # and both restored, so the base (saved when merged) keeps its own sampling defaults.
    models = [model, model.get_base_model()] if hasattr(model, "get_base_model") else [model]
    saved = [m.generation_config for m in models]
    kept = {key: getattr(saved[0], key) for key in KEPT_GENERATION if getattr(saved[0], key, None) is not None}
    for m in models:
        m.generation_config = GenerationConfig(**kept)
    try:
        yield
    finally:
        for m, config in zip(models, saved, strict=True):
            m.generation_config = config


def _prompt_ids(tokenizer, examples: list[Example], max_len: int | None) -> list[list[int]]:
    prompts = tokenizer.apply_chat_template(
        [list(e.messages[:-1]) for e in examples], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    # Cut from the left as training cut them: a prompt longer than the model saw in training
    # would cost memory (or overrun the context) after the whole training run.
    return [list(p[-max_len:]) if max_len else list(p) for p in prompts]


def stop_ids(ev: Evaluator) -> list[int]:
    """Token ids that end a generated answer: the end-of-turn token, and every EOS the tokenizer
    and the model's generation_config name (Llama 3.1 lists three; Qwen ends text with another)."""
    found = [ev.end_of_turn_id, ev.tokenizer.eos_token_id]
    configured = getattr(ev.model.generation_config, "eos_token_id", None)
    found += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in found if i is not None))


# A thinking model's template (Qwen3) writes an empty <think></think> block into every trained
# answer, so the trained model writes one before its answer: the reference has none.
THINK_BLOCK = re.compile(r"\A\s*<think>.*?</think>\s*", re.DOTALL)


def answer_text(decoded: str) -> str:
    """A generated answer as it is scored: stripped, without a leading <think>...</think> block."""
    return THINK_BLOCK.sub("", decoded).strip()


def generate_answers(
    ev: Evaluator,
    examples: list[Example],
    samples: int = 1,
    temperature: float | None = None,
    advance: Callable[[int], None] | None = None,
    ended: list[list[bool]] | None = None,
) -> list[list[str]]:
    """Answers to each example's last assistant turn, generated from the conversation before it
    and stopped at end-of-turn: greedy (temperature None, one answer) or `samples` sampled ones.
    `advance(n)` is told as each batch of n prompts is done; `ended`, when given, gets for each
    example whether each answer stopped on a stop id (else eval.max_new_tokens cut it)."""
    import torch

    model, tokenizer = ev.model, ev.tokenizer
    prompts = _prompt_ids(tokenizer, examples, ev.max_prompt_len)
    stop = stop_ids(ev)
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    answers: list[list[str]] = [[] for _ in examples]
    flags: list[list[bool]] = [[] for _ in examples]
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature is not None:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    per_batch = max(1, ev.eval.batch_size // samples)
    was_training = model.training
    model.eval()
    with torch.no_grad(), plain_generation(model), autocast(ev.device, ev.precision):
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
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            for row, i in enumerate(chunk):
                for j in range(samples):
                    generated = out[row * samples + j, width:]
                    answers[i].append(answer_text(tokenizer.decode(generated, skip_special_tokens=True)))
                    flags[i].append(any(token in stop for token in generated.tolist()))
            if advance is not None:
                advance(len(chunk))
    model.train(was_training)
    if ended is not None:
        ended[:] = flags
    return answers


def reference(example: Example) -> str:
    """The reference answer: the example's last assistant turn."""
    return example.messages[-1]["content"].strip()


def prompt_messages(example: Example) -> list[dict[str, str]]:
    """The conversation an answer is generated from: every turn before the last, role and content."""
    return [{"role": m["role"], "content": m["content"]} for m in example.messages[:-1]]


def per_task_mean(prefix: str, values: dict[str, list[float]]) -> dict[str, float]:
    """`prefix/<task>` means, and `prefix` itself: the mean over task_types (each weighs the same)."""
    scores = {f"{prefix}/{t}": sum(v) / len(v) for t, v in sorted(values.items()) if v}
    scores[prefix] = sum(scores.values()) / max(len(scores), 1)
    return scores


def exact_match(
    ev: Evaluator, examples: list[Example], prefix: str = EXACT_MATCH, split: str = VALIDATION, show: str = LINES
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per task_type, the mean score of greedy generations under the task_type's scorer (1 or 0
    each under the default exact scorer: the share equal to the reference); and every generation
    as a record: split, task_type, prompt (the messages before the answer), reference, generated,
    score, scorer. `show`: how the phase shows its progress (evaluate.progress)."""
    scorers = TaskScorers(ev.eval.scorers)
    scorers.load_all()  # a user's function that fails to import fails before the generating
    what = "exact match" if split == VALIDATION else "train recall"
    with Phase(f"{what} over {len(examples)} prompts", len(examples), show) as phase:
        answers = generate_answers(ev, examples, advance=phase.advance)
    scores: dict[str, list[float]] = defaultdict(list)
    records: list[dict[str, Any]] = []
    for example, (answer,) in zip(examples, answers, strict=True):
        task, ref = example.task_type, reference(example)
        score = scorers.score(task, answer, ref)
        scores[task].append(score)
        prompt, spec = prompt_messages(example), scorers.spec(task)
        records.append(
            dict(split=split, task_type=task, prompt=prompt, reference=ref, generated=answer, score=score, scorer=spec)
        )
    return per_task_mean(prefix, scores), records


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is right) from n samples with c right
    (Chen et al. 2021, "Evaluating Large Language Models Trained on Code")."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sampled_pass_at_k(ev: Evaluator, examples: list[Example], show: str = LINES) -> dict[str, float]:
    """pass@k per task_type (`task/pass_at_<k>/<task>`) and the share of right samples
    (`task/sample_match/<task>`, an estimate of pass@1 under sampling), from samples seeded by
    `ev.seed`; a sample is right when its score under the task_type's scorer is at least
    `eval.pass_threshold`."""
    import torch

    cfg, device = ev.eval, ev.device
    n = cfg.num_samples
    scorers = TaskScorers(cfg.scorers)
    scorers.load_all()
    title = f"pass@{cfg.pass_k} over {len(examples)} prompts x {n} samples"
    with Phase(title, len(examples) * n, show) as phase:
        with torch.random.fork_rng(devices=[device] if getattr(device, "type", "cpu") == "cuda" else []):
            torch.manual_seed(ev.seed)  # the same samples for the same model, whatever ran before
            answers = generate_answers(ev, examples, n, cfg.temperature, advance=lambda k: phase.advance(k * n))
    passed: dict[str, list[float]] = defaultdict(list)
    matched: dict[str, list[float]] = defaultdict(list)
    for example, sampled in zip(examples, answers, strict=True):
        task, ref = example.task_type, reference(example)
        right = sum(scorers.score(task, a, ref) >= cfg.pass_threshold for a in sampled)
        passed[task].append(pass_at_k(n, right, cfg.pass_k))
        matched[task].append(right / n)
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
