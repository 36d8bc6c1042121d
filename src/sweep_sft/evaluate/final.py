"""Evaluation per task_type: validation loss, answer log-probability, exact match of greedy
generations, pass@k of sampled ones, recall on trained prompts, and the general-ability probe."""

from __future__ import annotations

import math
import random
from collections import defaultdict

from sweep_sft.config.schema import Config, EvalConfig
from sweep_sft.data.batches import collate
from sweep_sft.data.records import Example, first_per_task
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


# A model's own generation_config fills every setting a generate() call leaves unset; these
# would change what exact match and pass@k measure (a repetition penalty, a minimum length
# that forbids stopping), so they are set to "off" explicitly.
PLAIN_DECODING = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0}
PLAIN_SAMPLING = {"typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, **PLAIN_DECODING}


def generate_answers(
    model,
    tokenizer,
    examples: list[Example],
    device,
    max_new_tokens: int,
    batch_size: int,
    end_of_turn_id: int,
    samples: int = 1,
    temperature: float | None = None,
) -> list[list[str]]:
    """Answers to each example's last assistant turn, generated from the conversation before it
    and stopped at end-of-turn: greedy (temperature None, one answer) or `samples` sampled ones."""
    import torch

    prompts = tokenizer.apply_chat_template(
        [list(e.messages[:-1]) for e in examples], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    answers: list[list[str]] = [[] for _ in examples]
    sampling = {"do_sample": False, **PLAIN_DECODING}
    if temperature is not None:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, **PLAIN_SAMPLING}
    per_batch = max(1, batch_size // samples)
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
                input_ids=ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                eos_token_id=end_of_turn_id,
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
    return example.messages[-1]["content"].strip()


def per_task_mean(prefix: str, values: dict[str, list[float]]) -> dict[str, float]:
    """`prefix/<task>` means, and `prefix` itself: the mean over task_types (each weighs the same)."""
    scores = {f"{prefix}/{t}": sum(v) / len(v) for t, v in sorted(values.items()) if v}
    scores[prefix] = sum(scores.values()) / max(len(scores), 1)
    return scores


def exact_match(
    model,
    tokenizer,
    examples: list[Example],
    device,
    max_new_tokens: int,
    batch_size: int,
    end_of_turn_id: int,
    prefix: str = "task/exact_match",
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Per task_type, the share of greedy generations equal to the reference; and the first three
    generations of each task_type, to read."""
    answers = generate_answers(model, tokenizer, examples, device, max_new_tokens, batch_size, end_of_turn_id)
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


def sampled_pass_at_k(
    model, tokenizer, examples: list[Example], device, cfg: EvalConfig, end_of_turn_id: int, seed: int
) -> dict[str, float]:
    """pass@k per task_type (`task/pass_at_<k>/<task>`) and the share of right samples
    (`task/sample_match/<task>`, an estimate of pass@1 under sampling), from seeded samples."""
    import torch

    n = cfg.num_samples
    with torch.random.fork_rng(devices=[device] if getattr(device, "type", "cpu") == "cuda" else []):
        torch.manual_seed(seed)  # the same samples for the same model, whatever ran before
        answers = generate_answers(
            model, tokenizer, examples, device, cfg.max_new_tokens, cfg.batch_size, end_of_turn_id, n, cfg.temperature
        )
    passed: dict[str, list[float]] = defaultdict(list)
    matched: dict[str, list[float]] = defaultdict(list)
    for example, sampled in zip(examples, answers, strict=True):
        right = sum(a == reference(example) for a in sampled)
        passed[example.task_type].append(pass_at_k(n, right, cfg.pass_k))
        matched[example.task_type].append(right / n)
    return {**per_task_mean(f"task/pass_at_{cfg.pass_k}", passed), **per_task_mean("task/sample_match", matched)}


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


def final_evaluation(
    model,
    tokenizer,
    val_examples: list[Example],
    train_rows: list[Tokenized],
    config: Config,
    device,
    end_of_turn_id: int,
    base_probe: dict[str, float] | None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """What a trial measures once training ends (and what standalone evaluation measures): exact
    match, pass@k, train recall, and the general probe against the base model's `base_probe`."""
    from sweep_sft.evaluate import general_probe

    ev = config.eval
    final: dict[str, float] = {}
    samples: list[dict[str, str]] = []
    if ev.generate:
        args = (device, ev.max_new_tokens, ev.batch_size, end_of_turn_id)
        scores, samples = exact_match(model, tokenizer, val_examples, *args)
        final.update(scores)
        if ev.pass_k:
            sampled = first_per_task(val_examples, ev.pass_k_examples)
            final.update(sampled_pass_at_k(model, tokenizer, sampled, device, ev, end_of_turn_id, config.trainer.seed))
        if ev.train_recall_examples:
            trained = trained_sample(train_rows, ev.train_recall_examples, config.trainer.seed)
            final.update(exact_match(model, tokenizer, trained, *args, prefix="task/train_recall")[0])
    if base_probe is not None:
        trained_probe = general_probe.score(model, tokenizer, device)
        final.update(trained_probe)
        final.update({f"general/base_{k.split('/')[1]}": v for k, v in base_probe.items()})
        final["general_drop"] = base_probe["general/score"] - trained_probe["general/score"]
    return final, samples


def main(argv: list[str] | None = None) -> int:
    """`python -m sweep_sft.evaluate TARGET [key=value ...]`: evaluate a trained model again."""
    import argparse
    import sys
    from pathlib import Path

    from sweep_sft.errors import UserInputError

    parser = argparse.ArgumentParser(
        prog="python -m sweep_sft.evaluate",
        description="Evaluate a trial's saved model, one of its checkpoints, or an MLflow run's model per task_type, "
        "with the trial's own data and eval settings (key=value overrides change them, e.g. eval.pass_k=8).",
    )
    parser.add_argument("target", help="trial folder, its model/ folder, a checkpoints/step-N folder, or a run id")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.temperature=1.0 eval.pass_k=8")
    parser.add_argument("--tracking-uri", help="MLflow store holding a run id (default: sqlite:///./mlflow.db)")
    parser.add_argument("--out", type=Path, help="result file (default: <trial folder>/evaluation.json)")
    # Options may sit among the overrides (`RUN_ID --tracking-uri URI eval.pass_k=8`).
    args = parser.parse_intermixed_args(argv)
    from transformers.utils import logging as hf_logging

    from sweep_sft.evaluate import standalone as standalone_eval
    from sweep_sft.evaluate import target as eval_target

    hf_logging.disable_progress_bar()  # loading a tiny model: bars are noise beside the table
    from sweep_sft.trial.run import general_lines, task_table

    try:
        target = eval_target.resolve(args.target, args.tracking_uri)
        config = standalone_eval.load_config(target, args.overrides)
        if config.eval.baseline_run_id is not None:
            from sweep_sft.evaluate.baseline import load_baseline

            baseline = load_baseline(config, args.tracking_uri)  # the store the target came from
        result = standalone_eval.evaluate(target, config)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = result["metrics"]
    print(f"evaluated {target.model_dir or target.checkpoint} with {target.config_file}")
    print(task_table(metrics, result["tasks"]))
    print("\n".join(general_lines(metrics)))
    path = standalone_eval.write(result, target, args.target, args.overrides, args.out)
    print(f"results in {path} ({metrics['time/eval_s']:.1f}s)")
    if config.eval.baseline_run_id is not None:
        from sweep_sft.compare import table
        from sweep_sft.evaluate.baseline import compare_with_baseline

        comparison = compare_with_baseline(config, baseline, metrics)
        print(table(comparison, baseline, metrics, (f"baseline {config.eval.baseline_run_id}", str(path))))
        return 1 if comparison.regressions else 0
    return 0

