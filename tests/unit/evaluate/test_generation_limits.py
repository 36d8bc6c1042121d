"""What generation is given and where it stops: prompts cut as training cut them, examples dropped
from validation left out of generation too, every EOS id a stop, a thinking model's empty
<think></think> block not part of the scored answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers import load_embedded
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.data.pipeline import prepare
from sweep_sft.data.records import Example
from sweep_sft.evaluate.generation import _prompt_ids, answer_text, stop_ids


def single(prompt: str, answer: str = "42") -> Example:
    turns = ({"role": "user", "content": prompt}, {"role": "assistant", "content": answer})
    return Example(turns, "reasoning/long", "t:1")


@pytest.fixture(scope="module")
def tokenizer():
    return load_embedded()[1]


def test_a_prompt_keeps_its_last_max_seq_len_tokens(tokenizer):
    examples = [single("word " * 60), single("What is 2 + 3?")]
    whole = _prompt_ids(tokenizer, examples, None)
    cut = _prompt_ids(tokenizer, examples, 12)
    assert len(whole[0]) > 12 and cut[0] == whole[0][-12:]
    assert cut[1] == whole[1][-12:]


def test_examples_dropped_from_validation_are_not_generated(tokenizer):
    config = validate(compose(["data.max_seq_len=32", "data.truncation=drop"]))
    long, short = single("word " * 60), single("What is 2 + 3?", "5")
    prepared = prepare(config, tokenizer, tokenizer.eos_token_id, ({"embedded": [short, single("x")]}, [long, short]))
    assert prepared.val_examples == [short] and len(prepared.val_rows) == 1
    loaded = ({"embedded": [short, single("x")]}, [long, short])
    kept = prepare(validate(compose(["data.max_seq_len=32"])), tokenizer, tokenizer.eos_token_id, loaded)
    assert kept.val_examples == [long, short]  # a prompt cut keeps the example


@pytest.mark.parametrize(
    ("configured", "expected"),
    [(None, [7, 2]), (2, [7, 2]), ([128001, 128008, 7], [7, 2, 128001, 128008])],
)
def test_every_eos_the_model_names_stops_generation(configured, expected):
    ev = SimpleNamespace(
        end_of_turn_id=7,
        tokenizer=SimpleNamespace(eos_token_id=2),
        model=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=configured)),
    )
    assert stop_ids(ev) == expected


@pytest.mark.parametrize(
    ("decoded", "answer"),
    [
        ("<think>\n\n</think>\n\nParis.", "Paris."),
        ("  <think>the capital... France</think> Paris ", "Paris"),
        ("Paris <think>x</think>", "Paris <think>x</think>"),  # only a leading block
        (" plain answer\n", "plain answer"),
    ],
)
def test_a_leading_think_block_is_not_scored(decoded, answer):
    assert answer_text(decoded) == answer



def test_each_answer_says_whether_it_stopped_or_ran_out_of_tokens(tokenizer):
    import torch
    from transformers import GenerationConfig

    from sweep_sft.config.schema import EvalConfig
    from sweep_sft.evaluate.evaluator import Evaluator
    from sweep_sft.evaluate.generation import generate_answers

    eot = tokenizer.convert_tokens_to_ids("<|end|>")
    word = tokenizer.encode(" five", add_special_tokens=False)[0]

    class Stub:
        """Row 0 ends its answer with end-of-turn, row 1 runs to the budget."""

        training = False
        generation_config = GenerationConfig()

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, input_ids, **_):
            new = torch.tensor([[word, eot, tokenizer.pad_token_id], [word, word, word]])
            return torch.cat([input_ids, new], dim=1)

    ended: list[list[bool]] = []
    ev = Evaluator(Stub(), tokenizer, torch.device("cpu"), eot, EvalConfig(max_new_tokens=3))
    answers = generate_answers(ev, [single("What is 2 + 3?")] * 2, ended=ended)
    assert answers == [["five"], ["five five five"]]
    assert ended == [[True], [False]]
