"""pass@k from sampled generations, and recall on trained prompts: the estimator against brute
force, and the sampling against a real model whose greedy answers are made the references."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from helpers import load_embedded
from sweep_sft.config.schema import EvalConfig
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.generation import exact_match, generate_answers, pass_at_k, sampled_pass_at_k, trained_sample

CPU = torch.device("cpu")


def evaluator(model, tokenizer, eot: int, **settings) -> Evaluator:
    """The model on the CPU with these eval settings (max_new_tokens, batch_size, ...)."""
    return Evaluator(model, tokenizer, CPU, eot, EvalConfig(**settings))


@pytest.mark.parametrize("n,c", [(4, 0), (4, 1), (4, 4), (5, 2), (8, 3), (10, 9)])
def test_estimator_equals_the_share_of_k_subsets_with_a_right_answer(n, c):
    right = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(right, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


@pytest.fixture(scope="module")
def setup(embedded_model_path, embedded_data_path):
    """The untrained embedded model and validation examples whose references are its own greedy
    answers (every other one), so exact match is known: 1 on half of them, 0 on the others."""
    torch.set_num_threads(1)
    model, tokenizer = load_embedded(embedded_model_path)
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    examples = load_jsonl(embedded_data_path / "validation.jsonl")[::64][:8]
    # Short answers, so samples can match.
    greedy = generate_answers(evaluator(model, tokenizer, eot, max_new_tokens=2, batch_size=8), examples)
    made = []
    for i, (example, (answer,)) in enumerate(zip(examples, greedy, strict=True)):
        content = answer if i % 2 == 0 else answer + " never generated"
        made.append(replace(example, messages=(*example.messages[:-1], {"role": "assistant", "content": content})))
    return model, tokenizer, eot, made


def test_greedy_references_give_the_expected_exact_match(setup):
    model, tokenizer, eot, examples = setup
    scores, _ = exact_match(evaluator(model, tokenizer, eot, max_new_tokens=2, batch_size=8), examples)
    expected: dict[str, list[float]] = {}
    for i, example in enumerate(examples):  # even ones carry the greedy answer
        expected.setdefault(example.task_type, []).append(float(i % 2 == 0))
    for task, hits in expected.items():
        assert scores[f"task/exact_match/{task}"] == sum(hits) / len(hits)
    assert scores["task/exact_match"] == pytest.approx(sum(sum(h) / len(h) for h in expected.values()) / len(expected))


def test_sampling_at_a_tiny_temperature_is_greedy(setup):
    model, tokenizer, eot, examples = setup
    cfg = EvalConfig(max_new_tokens=2, batch_size=8, pass_k=3, temperature=1e-4)
    sampled = sampled_pass_at_k(Evaluator(model, tokenizer, CPU, eot, cfg, seed=0), examples)
    greedy, _ = exact_match(evaluator(model, tokenizer, eot, max_new_tokens=2, batch_size=8), examples)
    for key, value in greedy.items():
        task = key.removeprefix("task/exact_match")
        assert sampled[f"task/pass_at_3{task}"] == pytest.approx(value)
        assert sampled[f"task/sample_match{task}"] == pytest.approx(value)


def test_hot_sampling_misses_some_and_pass_at_k_grows_with_k(setup):
    model, tokenizer, eot, examples = setup
    results = {
        k: sampled_pass_at_k(
            Evaluator(model, tokenizer, CPU, eot, EvalConfig(max_new_tokens=2, pass_k=k, samples=8, temperature=1.5)),
            examples,
        )
        for k in (1, 2, 8)
    }
    # The same seed and samples for every k: pass@1 is the share of right samples.
    assert results[1]["task/pass_at_1"] == pytest.approx(results[1]["task/sample_match"])
    assert results[1]["task/sample_match"] == results[8]["task/sample_match"]
    assert 0 < results[1]["task/pass_at_1"] < 0.5  # at temperature 1.5, samples stray from the greedy answer
    assert results[1]["task/pass_at_1"] <= results[2]["task/pass_at_2"] <= results[8]["task/pass_at_8"]
    assert results[8]["task/pass_at_8"] > results[1]["task/pass_at_1"]


def test_sampling_is_seeded(setup):
    model, tokenizer, eot, examples = setup
    cfg = EvalConfig(max_new_tokens=2, pass_k=4, temperature=1.5)
    first = sampled_pass_at_k(Evaluator(model, tokenizer, CPU, eot, cfg, seed=3), examples)
    torch.rand(100)  # whatever ran before must not change the samples
    assert sampled_pass_at_k(Evaluator(model, tokenizer, CPU, eot, cfg, seed=3), examples) == first
    assert sampled_pass_at_k(Evaluator(model, tokenizer, CPU, eot, cfg, seed=4), examples) != first


def test_train_recall_samples_distinct_trained_examples_per_task(setup):
    _, _, _, examples = setup
    rows = [Tokenized([1], [1], e.task_type, example=e) for e in examples for _ in range(3)]  # repeats
    picked = trained_sample(rows, 2, seed=0)
    per_task = {t: [e for e in picked if e.task_type == t] for t in {e.task_type for e in examples}}
    for task, chosen in per_task.items():
        available = [e for e in examples if e.task_type == task]
        assert len(chosen) == min(2, len(available))
        assert len({id(e) for e in chosen}) == len(chosen)
        assert all(any(e is a for a in available) for e in chosen)
    assert trained_sample(rows, 2, seed=0) == picked
    assert trained_sample([Tokenized([1], [1], "packed")], 2, seed=0) == []  # no example: nothing to recall


def test_the_models_own_generation_config_does_not_change_what_is_measured(setup):
    """A repetition penalty or a minimum length in a model's generation_config (some released
    models ship them) would change greedy answers and samples: evaluation decodes plainly."""
    model, tokenizer, eot, examples = setup
    plain = generate_answers(evaluator(model, tokenizer, eot, max_new_tokens=4, batch_size=8), examples)
    cfg = EvalConfig(max_new_tokens=4, pass_k=2, temperature=1.0)
    sampled = sampled_pass_at_k(Evaluator(model, tokenizer, CPU, eot, cfg, seed=0), examples)
    saved = model.generation_config
    model.generation_config = replace_generation(saved, repetition_penalty=50.0, min_new_tokens=4, top_k=1, min_p=0.5)
    try:
        assert generate_answers(evaluator(model, tokenizer, eot, max_new_tokens=4, batch_size=8), examples) == plain
        assert sampled_pass_at_k(Evaluator(model, tokenizer, CPU, eot, cfg, seed=0), examples) == sampled
    finally:
        model.generation_config = saved


def replace_generation(config, **changes):
    import copy

    changed = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(changed, key, value)
    return changed
