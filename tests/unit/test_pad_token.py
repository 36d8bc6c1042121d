"""A pad token equal to EOS needs no new token (sweep_sft.modeling.load_tokenizer): padding is told
apart by explicit label masks and lengths, never by its id, so the EOS label stays supervised, the
vocabulary and the embeddings stay the base model's, and padding changes no loss."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers import load_embedded
from sweep_sft import modeling
from sweep_sft.config.compose import compose
from sweep_sft.config.schema import EvalConfig, ModelConfig
from sweep_sft.data.batches import collate
from sweep_sft.data.records import load_jsonl
from sweep_sft.data.tokenize import IGNORE, tokenize
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.loss import validation_loss
from sweep_sft.train.loss import example_loss_sums


@pytest.fixture(scope="module")
def pad_is_eos(tmp_path_factory, embedded_model_path):
    """The embedded model folder, its tokenizer's pad token set to its EOS (<|end|>)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("pad_is_eos") / "model"
    shutil.copytree(embedded_model_path, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(folder)
    return folder


def test_a_pad_token_equal_to_eos_adds_no_token(pad_is_eos, tokenizer):
    tok = modeling.load_tokenizer(ModelConfig(name_or_path=str(pad_is_eos)), str(pad_is_eos))
    assert tok.pad_token == tok.eos_token == "<|end|>"
    assert len(tok) == len(tokenizer) and tok.get_vocab() == tokenizer.get_vocab()
    model = modeling.load_model(ModelConfig(name_or_path=str(pad_is_eos)), str(pad_is_eos), tok, "cpu")
    base, _ = load_embedded(pad_is_eos)
    assert model.get_input_embeddings().num_embeddings == base.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == tok.eos_token_id


def test_no_pad_token_pads_with_eos_and_an_explicit_one_is_used(tmp_path, embedded_model_path, tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = modeling.load_tokenizer(ModelConfig(name_or_path=str(tmp_path)), str(tmp_path))
    assert loaded.pad_token == "<|end|>" and len(loaded) == len(tokenizer)
    # model.pad_token names the token to pad with: one in the vocabulary is used as it is ...
    asked = modeling.load_tokenizer(ModelConfig(name_or_path=str(tmp_path), pad_token="<|pad|>"), str(tmp_path))
    assert asked.pad_token == "<|pad|>" and len(asked) == len(tokenizer)
    # ... a new one is added (and the embeddings grow to fit it)
    new = modeling.load_tokenizer(ModelConfig(name_or_path=str(tmp_path), pad_token="<|newpad|>"), str(tmp_path))
    assert new.pad_token == "<|newpad|>" and len(new) == len(tokenizer) + 1


def test_the_eos_label_stays_supervised_and_padding_changes_no_loss(pad_is_eos, embedded_data_path):
    tok = modeling.load_tokenizer(ModelConfig(name_or_path=str(pad_is_eos)), str(pad_is_eos))
    model, _ = load_embedded(pad_is_eos)
    eos = tok.eos_token_id
    examples = load_jsonl(embedded_data_path / "validation.jsonl")[::41][:10]
    rows, _ = tokenize(examples, tok, "all_assistant", 256, "prompt", eos)
    assert len({len(r.input_ids) for r in rows}) > 1  # a batch of them is padded
    tasks = sorted({r.task_type for r in rows})
    batch = collate(rows, {t: i for i, t in enumerate(tasks)}, tok.pad_token_id)
    real = batch.segments >= 0
    assert (batch.input_ids[~real] == eos).all()  # padded with the EOS id ...
    assert (batch.labels[~real] == IGNORE).all()  # ... which never carries a label there
    for b, row in enumerate(rows):
        ends = [i for i, t in enumerate(row.input_ids) if t == eos and row.labels[i] != IGNORE]
        assert ends and all(batch.labels[b, i] == eos for i in ends)  # every answer's EOS is trained

    with torch.no_grad():
        sums, counts = example_loss_sums(model, batch, torch.device("cpu"))
        for i, row in enumerate(rows):
            alone = collate([row], {row.task_type: 0}, tok.pad_token_id)
            alone_sums, alone_counts = example_loss_sums(model, alone, torch.device("cpu"))
            assert alone.input_ids.shape[1] == len(row.input_ids)  # no padding at all
            assert float(sums[i]) == pytest.approx(float(alone_sums[0]), rel=1e-5, abs=1e-5)
            assert int(counts[i]) == int(alone_counts[0])
    metrics = validation_loss(Evaluator(model, tok, torch.device("cpu"), eos, EvalConfig(batch_size=4)), rows, tasks)
    assert metrics["val/loss"] == pytest.approx(float(sums.sum() / counts.sum()), rel=1e-5)


def test_a_trial_with_pad_equal_to_eos_keeps_the_base_vocabulary(pad_is_eos, tiny_overrides, tmp_path, tokenizer):
    from transformers import AutoConfig, AutoTokenizer

    from sweep_sft.trial.run import run_trial

    result = run_trial(compose([*tiny_overrides, f"model.name_or_path={pad_is_eos}", "eval.generate=false"]))
    assert result.metrics["val/loss"] > 0
    saved = tmp_path / "trial" / "model"
    assert len(AutoTokenizer.from_pretrained(saved)) == len(tokenizer)
    assert AutoConfig.from_pretrained(saved).vocab_size == AutoConfig.from_pretrained(pad_is_eos).vocab_size
