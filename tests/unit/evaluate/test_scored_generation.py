"""The final evaluation under scorers, on the real embedded model: greedy scores are the mean of
the task_type's scorer, pass@k counts samples at or above eval.pass_threshold, every generation
becomes a record, each phase shows its progress one way, and generate() warns about nothing."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import pytest
import torch

from helpers import load_embedded
from sweep_sft.config.schema import EvalConfig
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.final import final_evaluation, final_validation_loss
from sweep_sft.evaluate.generation import exact_match, generate_answers, sampled_pass_at_k
from sweep_sft.evaluate.progress import BAR, LINES, QUIET
from sweep_sft.evaluate.scorers import chrf

CPU = torch.device("cpu")
GREEDY = 1e-4  # a temperature at which sampling gives the greedy answer


@pytest.fixture(scope="module")
def setup(embedded_model_path, embedded_data_path):
    """The untrained embedded model and 8 validation examples whose references are its own greedy
    answers plus " extra words" on every other one: chrF of the answer is 1 or in between."""
    torch.set_num_threads(1)
    model, tokenizer = load_embedded(embedded_model_path)
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    examples = load_jsonl(embedded_data_path / "validation.jsonl")[::64][:8]
    greedy = generate_answers(Evaluator(model, tokenizer, CPU, eot, EvalConfig(max_new_tokens=3)), examples)
    made = []
    for i, (example, (answer,)) in enumerate(zip(examples, greedy, strict=True)):
        content = answer if i % 2 == 0 else answer + " extra words"
        made.append(replace(example, messages=(*example.messages[:-1], {"role": "assistant", "content": content})))
    return model, tokenizer, eot, made, [a for (a,) in greedy]


def evaluator(setup, **settings) -> Evaluator:
    model, tokenizer, eot, _, _ = setup
    return Evaluator(model, tokenizer, CPU, eot, EvalConfig(max_new_tokens=3, **settings))


def test_greedy_score_is_the_mean_of_the_task_types_scorer_and_every_generation_is_recorded(setup):
    _, _, _, examples, greedy = setup
    scores, records = exact_match(evaluator(setup, scorers={"*": "chrf"}), examples)
    expected: dict[str, list[float]] = {}
    for example, answer in zip(examples, greedy, strict=True):
        expected.setdefault(example.task_type, []).append(chrf(answer, example.messages[-1]["content"]))
    assert any(0 < v < 1 for vs in expected.values() for v in vs)  # partial credit, not 0 or 1
    for task, values in expected.items():
        assert scores[f"task/exact_match/{task}"] == pytest.approx(sum(values) / len(values))
    assert [r["generated"] for r in records] == greedy
    assert records[1] == {
        "split": "validation",
        "task_type": examples[1].task_type,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in examples[1].messages[:-1]],
        "reference": examples[1].messages[-1]["content"],
        "generated": greedy[1],
        "score": pytest.approx(chrf(greedy[1], greedy[1] + " extra words")),
        "scorer": "chrf",
    }
    exact_scores, exact_records = exact_match(evaluator(setup), examples)
    assert {r["scorer"] for r in exact_records} == {"exact"}
    assert [r["score"] for r in exact_records] == [float(i % 2 == 0) for i in range(8)]


def test_pass_at_k_counts_samples_at_or_above_the_threshold(setup):
    _, _, _, examples, greedy = setup
    partial = [chrf(a, e.messages[-1]["content"]) for a, e in zip(greedy, examples, strict=True)][1::2]
    assert 0 < min(partial) <= max(partial) < 1
    for threshold in (1.0, max(partial) + 1e-3, min(partial), min(partial) - 1e-3):
        ev = evaluator(setup, scorers={"*": "chrf"}, pass_k=2, temperature=GREEDY, pass_threshold=threshold)
        got = sampled_pass_at_k(ev, examples)
        right: dict[str, list[float]] = {}
        for i, (answer, example) in enumerate(zip(greedy, examples, strict=True)):
            value = 1.0 if i % 2 == 0 else chrf(answer, example.messages[-1]["content"])
            right.setdefault(example.task_type, []).append(float(value >= threshold))
        for task, hits in right.items():
            assert got[f"task/pass_at_2/{task}"] == pytest.approx(sum(hits) / len(hits)), (threshold, task)
            assert got[f"task/sample_match/{task}"] == pytest.approx(sum(hits) / len(hits))


def test_a_users_continuous_scorer_against_the_threshold(setup, tmp_path, monkeypatch):
    (tmp_path / "half_scorer.py").write_text("def half(generated, reference):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, _, _, examples, _ = setup
    settings = {"scorers": {"*": "half_scorer:half"}, "pass_k": 2, "temperature": 1.5}
    assert sampled_pass_at_k(evaluator(setup, pass_threshold=0.5, **settings), examples)["task/pass_at_2"] == 1.0
    assert sampled_pass_at_k(evaluator(setup, pass_threshold=0.51, **settings), examples)["task/pass_at_2"] == 0.0
    assert exact_match(evaluator(setup, **settings), examples)[0]["task/exact_match"] == 0.5


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """Every message transformers logs (its loggers do not propagate to pytest's caplog)."""
    handler = Captured()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_generate_warns_about_nothing_even_with_a_models_own_generation_settings(setup, transformers_log):
    model, tokenizer, eot, examples, greedy = setup
    # The capture sees the warning the old "off" values (min_length=0 with min_new_tokens=0) gave.
    ids = tokenizer("hi", return_tensors="pt")
    model.generate(**ids, max_new_tokens=1, min_length=0, min_new_tokens=0, pad_token_id=tokenizer.pad_token_id)
    assert any("min_new_tokens" in m for m in transformers_log.messages)
    transformers_log.messages.clear()
    saved = model.generation_config
    shipped = replace_generation(saved, min_length=5, min_new_tokens=4, temperature=0.6, top_p=0.9, top_k=3)
    shipped = replace_generation(shipped, repetition_penalty=1.3, do_sample=True)
    model.generation_config = shipped
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ev = evaluator(setup, pass_k=2, temperature=GREEDY)
            assert [a for (a,) in generate_answers(ev, examples)] == greedy  # the model's settings are not used
            sampled_pass_at_k(ev, examples)
            generate_answers(ev, examples)
        assert model.generation_config is shipped  # given back as it was
    finally:
        model.generation_config = saved
    assert transformers_log.messages == []
    assert [str(w.message) for w in caught] == []


def replace_generation(config, **changes):
    import copy

    changed = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(changed, key, value)
    return changed


def test_each_phase_prints_one_line_with_its_seconds_or_shows_a_bar(setup, capsys):
    _, _, _, examples, _ = setup
    ev = evaluator(setup, pass_k=2, train_recall_examples=1)
    ev.general_pairs = lambda: [([1], [2])] * 3  # the probe itself is not what is tested here
    ev.general_probe = lambda advance: advance(3) or {"general/score": 0.5}
    ev.validation_loss = lambda rows, tasks, advance: advance(len(rows)) or {"val/loss": 1.0}
    rows = [Tokenized([1], [1], e.task_type, example=e) for e in examples]
    assert final_validation_loss(ev, rows, ["t"], show=LINES) == {"val/loss": 1.0}
    final, records = final_evaluation(ev, examples, rows, {"general/score": 0.6}, show=LINES)
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("final evaluation:")]
    n_tasks = len({e.task_type for e in examples})
    assert [line.rsplit(" in ", 1)[0] for line in lines] == [
        "final evaluation: validation loss over 8 examples",
        "final evaluation: exact match over 8 prompts",
        "final evaluation: pass@2 over 8 prompts x 2 samples",
        f"final evaluation: train recall over {n_tasks} prompts",
        "final evaluation: general probe over 3 items",
    ]
    assert all(line.endswith("s") and float(line.rsplit(" in ", 1)[1][:-1]) >= 0 for line in lines)
    assert "exact match over" not in out.err  # no bar besides the lines
    assert [r["split"] for r in records] == ["validation"] * 8 + ["train"] * n_tasks
    assert final["general_drop"] == pytest.approx(0.1)

    final_validation_loss(ev, rows, ["t"], show=BAR)
    final_evaluation(ev, examples, rows, {"general/score": 0.6}, show=BAR)
    out = capsys.readouterr()
    assert "final evaluation:" not in out.out  # the bars instead of the lines
    titles = ("validation loss over 8 examples", "exact match over 8 prompts", "pass@2 over 8 prompts x 2 samples")
    for title in (*titles, "train recall over", "general probe over 3 items: 100%"):
        assert title in out.err

    final_validation_loss(ev, rows, ["t"], show=QUIET)  # another rank than the first
    final_evaluation(ev, examples, rows, {"general/score": 0.6}, show=QUIET)
    assert capsys.readouterr() == ("", "")


def test_a_scorer_that_does_not_load_fails_before_generating(setup, monkeypatch):
    from sweep_sft.errors import ConfigError

    model, bad = setup[0], "no_module_here_xyz:f"
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generated before the scorer loaded"))
    with pytest.raises(ConfigError, match=f"eval.scorers.x={bad}: cannot import"):
        exact_match(evaluator(setup, scorers={"x": bad}), setup[3])
