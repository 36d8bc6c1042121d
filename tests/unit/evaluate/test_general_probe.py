"""The general probe on the embedded model: a user's set scored as a hand computation of mean
log-probability says; base_answers (the embedded model standing in for a real one) generated once
per base model and cached, a drop of 0 for the untrained model that moves after a training step;
`auto` picks the embedded probe for the embedded model only."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from helpers import load_embedded
from sweep_sft.config.compose import compose
from sweep_sft.config.general import GeneralConfig
from sweep_sft.config.validate import validate
from sweep_sft.evaluate import general_answers, general_probe, generation
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.metrics import GENERAL_EXACT_MATCH, GENERAL_LOSS, GENERAL_SCORE

CHAT = {"messages": [{"role": "user", "content": "count: one two"}, {"role": "assistant", "content": "three four"}]}
TEXT = {"text": "days: monday tuesday wednesday thursday"}


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_embedded()
    return model, tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, so that what it counts is built here."""
    monkeypatch.setenv("SWEEP_SFT_CACHE", str(tmp_path / "cache"))


def setup(embedded, embedded_model_path, **general):
    model, tokenizer = embedded
    config = validate(compose([]))
    config = replace(config, eval=replace(config.eval, general=GeneralConfig(**general)))
    return config, Evaluator.for_trial(model, tokenizer, torch.device("cpu"), config)


def hand_logps(model, context: list[int], scored: list[int]) -> torch.Tensor:
    """log P of each scored token given everything before it: one unpadded forward pass, a plain log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + scored])).logits[0]
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[len(context) + j - 1, t] for j, t in enumerate(scored)])


def test_a_user_set_is_scored_by_mean_token_log_probability(tmp_path, cache, embedded, embedded_model_path):
    model, tokenizer = embedded
    path = tmp_path / "general.jsonl"
    path.write_text(json.dumps(TEXT) + "\n" + json.dumps(CHAT) + "\n")
    config, ev = setup(embedded, embedded_model_path, source=str(path))
    probe = general_probe.probe_base(config, ev, lambda: model, str(embedded_model_path))

    # The text: every token after the first; the chat: the answer and its end-of-turn, given the
    # conversation rendered with the generation prompt (the embedded template: <|user|>..<|end|><|assistant|>).
    text_ids = tokenizer(TEXT["text"])["input_ids"]
    prompt = tokenizer.apply_chat_template(CHAT["messages"][:1], add_generation_prompt=True, return_dict=True)
    answer = tokenizer.encode("three four", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|end|>")]
    expected_pairs = [(text_ids[:1], text_ids[1:]), (list(prompt["input_ids"]), answer)]
    assert probe.pairs == expected_pairs
    logps = [hand_logps(model, c, s) for c, s in expected_pairs]
    assert probe.source == str(path)
    assert probe.base[GENERAL_SCORE] == pytest.approx(sum(math.exp(lp.mean()) for lp in logps) / 2, abs=1e-5)
    assert probe.base[GENERAL_LOSS] == pytest.approx(-float(torch.cat(logps).mean()), abs=1e-5)
    assert 0 < probe.base[GENERAL_SCORE] < 1
    ev.general = probe
    assert ev.general_probe() == pytest.approx(probe.base, abs=1e-6)  # the untouched model: drop 0


def test_exact_match_is_every_scored_token_being_the_top_choice(cache, embedded, embedded_model_path):
    model, tokenizer = embedded
    config, ev = setup(embedded, embedded_model_path, source="embedded", max_items=12)
    probe = general_probe.probe_base(config, ev, lambda: model, str(embedded_model_path))
    tops = []
    for context, scored in probe.pairs:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context + scored])).logits[0]
        tops.append(logits[len(context) - 1 : -1].argmax(-1).tolist() == scored)
    assert len(probe.pairs) == 12
    assert probe.base[GENERAL_EXACT_MATCH] == pytest.approx(sum(tops) / 12)


def test_long_items_are_cut_from_the_prompt_first(tmp_path, cache, embedded, embedded_model_path):
    model, _ = embedded
    long_chat = {"messages": [{"role": "user", "content": "one two three " * 20}, CHAT["messages"][1]]}
    path = tmp_path / "general.jsonl"
    path.write_text(json.dumps(long_chat) + "\n" + json.dumps({"text": "a b c d e f g h i j k l m n o p"}) + "\n")
    config, ev = setup(embedded, embedded_model_path, source=str(path), max_seq_len=10)
    (chat_context, chat_scored), (text_context, text_scored) = general_probe.probe_base(
        config, ev, lambda: model, str(embedded_model_path)
    ).pairs
    whole = setup(embedded, embedded_model_path, source=str(path))
    uncut = general_probe.probe_base(whole[0], whole[1], lambda: model, str(embedded_model_path)).pairs
    assert chat_scored == uncut[0][1] and chat_context == uncut[0][0][-(10 - len(chat_scored)) :]
    assert len(text_context) + len(text_scored) == 10 and text_context + text_scored == (uncut[1][0] + uncut[1][1])[:10]


def counting_generate(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = generation.generate_answers

    def counted(ev, examples, *args, **kwargs):
        calls.append(len(examples))
        return real(ev, examples, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_answers", counted)
    return calls


def test_base_answers_are_generated_once_per_base_model_and_cached(cache, embedded, embedded_model_path, monkeypatch):
    model, tokenizer = embedded
    calls = counting_generate(monkeypatch)
    loads: list[int] = []

    def load_untrained():
        loads.append(1)
        return model

    config, ev = setup(embedded, embedded_model_path, source="base_answers", max_items=3, max_new_tokens=6)
    first = general_probe.probe_base(config, ev, load_untrained, str(embedded_model_path))
    assert calls == [3] and len(loads) == 1  # one load serves both the answers and their scores
    again = general_probe.probe_base(config, ev, load_untrained, str(embedded_model_path))
    assert calls == [3] and len(loads) == 1  # neither generated nor scored again
    assert again.pairs == first.pairs and again.base == first.base and first.source == "base_answers"
    # The answers are the base model's own greedy ones, behind the shipped prompts, through its template.
    prompts = general_answers.shipped_prompts(3)
    for (context, _), (_, prompt) in zip(first.pairs, prompts, strict=True):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
        )
        assert context == list(rendered["input_ids"])
    # Other generation settings are another cache entry.
    config, ev = setup(embedded, embedded_model_path, source="base_answers", max_items=3, max_new_tokens=7)
    general_probe.probe_base(config, ev, load_untrained, str(embedded_model_path))
    assert calls == [3, 3]
    # So is a base computing in another precision (bf16 autocast on a GPU, fp32 on a CPU).
    general_probe.probe_base(config, replace(ev, precision="bf16"), load_untrained, str(embedded_model_path))
    assert calls == [3, 3, 3]


def test_base_answers_drop_is_zero_untrained_and_moves_after_a_training_step(
    cache, embedded, embedded_model_path, embedded_data_path
):
    model, tokenizer = embedded
    trained = copy.deepcopy(model)
    config, ev = setup(embedded, embedded_model_path, source="base_answers", max_items=4, max_new_tokens=8)
    probe = general_probe.probe_base(config, ev, lambda: model, str(embedded_model_path))
    ev = replace(ev, model=trained, general=probe)
    assert ev.general_probe()[GENERAL_SCORE] - probe.base[GENERAL_SCORE] == pytest.approx(0, abs=1e-6)

    batch = tokenizer(["classification: the film was dreadful -> negative"] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    loss = trained(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    drop = probe.base[GENERAL_SCORE] - ev.general_probe()[GENERAL_SCORE]
    assert abs(drop) > 1e-3


def test_a_base_answer_that_ran_out_of_tokens_scores_no_end_of_turn(cache, embedded, embedded_model_path, monkeypatch):
    model, tokenizer = embedded
    eot = tokenizer.convert_tokens_to_ids("<|end|>")
    def generate_answers(ev, examples, ended):
        ended[:] = [[False], [True]]  # the first ran out of tokens, the second stopped at end-of-turn
        return [["monday tuesday wednesday thursday friday"], ["ok"]]

    monkeypatch.setattr(generation, "generate_answers", generate_answers)
    config, ev = setup(embedded, embedded_model_path, source="base_answers", max_items=2, max_new_tokens=4)
    (_, cut), (_, finished) = general_probe.probe_base(config, ev, lambda: model, str(embedded_model_path)).pairs
    assert cut == tokenizer.encode("monday tuesday wednesday thursday friday", add_special_tokens=False)
    assert finished == tokenizer.encode("ok", add_special_tokens=False) + [eot]


@pytest.mark.parametrize(
    "overrides,source",
    [
        ([], "embedded"),
        (["model.name_or_path=/models/any"], "base_answers"),
        (["model.name_or_path=/models/any", "eval.general.source=embedded"], "embedded"),
        (["eval.general.source=base_answers"], "base_answers"),
        (["eval.general.source=/data/general.jsonl"], "/data/general.jsonl"),
    ],
)
def test_auto_is_the_embedded_probe_for_the_embedded_model_and_base_answers_for_any_other(overrides, source):
    assert general_probe.resolve_source(validate(compose(overrides))) == source


def test_the_shipped_prompts_are_diverse_general_requests():
    prompts = general_answers.shipped_prompts()
    kinds = [kind for kind, _ in prompts]
    assert 24 <= len(prompts) <= 40 and len(set(p for _, p in prompts)) == len(prompts)
    assert set(kinds) == {"facts", "reasoning", "instructions", "writing", "code", "maths"}
    assert len(set(kinds[:6])) == 6  # kinds alternate, so a small eval.general.max_items still mixes them
