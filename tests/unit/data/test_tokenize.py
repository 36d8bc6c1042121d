"""Loss masks: which tokens are supervised, for single- and multi-turn chats, and the
pre-flight check that stops a trial before it trains on nothing."""

from __future__ import annotations

import pytest

from sweep_sft.data.records import Example
from sweep_sft.data.tokenize import IGNORE, tokenize
from sweep_sft.errors import DataError

SINGLE = Example(
    messages=(
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "42"},
    ),
    task_type="reasoning/addition",
    source="test:1",
)
MULTI = Example(
    messages=(
        {"role": "user", "content": "My pet is a cat."},
        {"role": "assistant", "content": "Noted: cat."},
        {"role": "user", "content": "What is my pet?"},
        {"role": "assistant", "content": "cat"},
    ),
    task_type="dialogue/multi_turn",
    source="test:2",
)


def supervised_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE])


def run(tokenizer, examples, loss_on="all_assistant", max_seq_len=256, truncation="prompt"):
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return tokenize(examples, tokenizer, loss_on, max_seq_len, truncation, eot)


def test_single_turn_supervises_only_the_answer_and_its_end_token(tokenizer):
    (row,), stats = run(tokenizer, [SINGLE])
    assert supervised_text(tokenizer, row) == " 42<|end|>"
    assert stats.per_task["reasoning/addition"].supervised_tokens == sum(label != IGNORE for label in row.labels)
    # labels equal the input ids wherever they are set
    assert all(label in (IGNORE, tok) for tok, label in zip(row.input_ids, row.labels, strict=True))


def test_multi_turn_all_assistant_turns(tokenizer):
    (row,), _ = run(tokenizer, [MULTI], "all_assistant")
    assert supervised_text(tokenizer, row) == " Noted: cat.<|end|> cat<|end|>"


def test_multi_turn_last_assistant_turn_only(tokenizer):
    (row,), _ = run(tokenizer, [MULTI], "last_assistant")
    assert supervised_text(tokenizer, row) == " cat<|end|>"


def test_all_tokens(tokenizer):
    (row,), _ = run(tokenizer, [MULTI], "all_tokens")
    assert row.labels == row.input_ids
    assert "<|user|>" in supervised_text(tokenizer, row)


def test_user_and_system_tokens_never_supervised(tokenizer):
    (row,), _ = run(tokenizer, [SINGLE])
    text = supervised_text(tokenizer, row)
    assert "<|user|>" not in text and "<|system|>" not in text and "12" not in text


def test_pad_differs_from_end_of_turn(tokenizer):
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|end|>"


def test_cut_and_drop_are_counted(tokenizer):
    full = len(run(tokenizer, [MULTI])[0][0].input_ids)
    rows, stats = run(tokenizer, [SINGLE, MULTI], max_seq_len=full - 3)
    assert [len(r.input_ids) for r in rows][1] == full - 3
    # the first user turn is cut: both answers stay (data/truncation.py; tests/unit/data/test_truncation.py)
    assert supervised_text(tokenizer, rows[1]) == " Noted: cat.<|end|> cat<|end|>"
    multi = stats.per_task["dialogue/multi_turn"]
    assert (multi.prompt_cut, multi.answer_cut) == (1, 0)
    short = Example(
        ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}), "dialogue/multi_turn", "test:3"
    )
    rows, stats = run(tokenizer, [SINGLE, short, MULTI], max_seq_len=full - 3, truncation="drop")
    assert len(rows) == 2
    assert (stats.per_task["dialogue/multi_turn"].dropped, stats.per_task["dialogue/multi_turn"].examples) == (1, 1)
    # a task_type whose every example was dropped stops the trial, naming it
    with pytest.raises(DataError, match="dialogue/multi_turn.*dropped"):
        run(tokenizer, [MULTI], max_seq_len=full - 3, truncation="drop")


def test_a_template_without_markers_is_read_off_its_renderings(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    for loss_on in ("all_assistant", "last_assistant", "all_tokens"):
        marked, _ = run(tokenizer, [SINGLE, MULTI, _weighted(0, None)], loss_on)
        plain, _ = run(tok, [SINGLE, MULTI, _weighted(0, None)], loss_on)
        assert [r.labels for r in plain] == [r.labels for r in marked]


def test_preflight_no_supervised_token(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    # Markers that mark nothing: the template is read by its markers, and they select no token.
    tok.chat_template = tok.chat_template.replace(
        "{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}",
        "{{ message['content'] }}<|end|>{% generation %}{% endgeneration %}",
    )
    with pytest.raises(DataError, match="reasoning/addition.*no supervised token") as err:
        run(tok, [SINGLE])
    # The fix offered is the template's; training on the prompts (loss_on=all_tokens) is none.
    assert "{% generation %}" in str(err.value) and "model.chat_template_path" in str(err.value)
    assert "loss_on" not in str(err.value) and "all_tokens" not in str(err.value)


def test_all_tokens_says_it_trains_on_the_prompts_with_the_counts(tokenizer, capsys):
    rows, stats = run(tokenizer, [SINGLE, MULTI], "all_tokens")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: data.loss_on=all_tokens trains on every token")
    assert "system and user prompts" in lines[0]
    total = sum(t.supervised_tokens for t in stats.per_task.values())
    assistant_rows, assistant_stats = run(tokenizer, [SINGLE, MULTI], "all_assistant")
    assistant = sum(t.supervised_tokens for t in assistant_stats.per_task.values())
    assert total == sum(len(r.input_ids) for r in rows) and assistant < total
    assert f"{total} supervised tokens, of which {assistant} are the assistant turns'" in lines[0]
    assert "warning" not in capsys.readouterr().err  # all_assistant says nothing


def test_preflight_end_of_turn_not_supervised(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = tok.chat_template.replace("<|end|>{% endgeneration %}", "{% endgeneration %}<|end|>")
    with pytest.raises(DataError, match="dialogue/multi_turn.*end-of-turn token '<\\|end\\|>' is not supervised"):
        run(tok, [MULTI])


def _weighted(*weights: int | None) -> Example:
    """MULTI with these weights on its two assistant turns (None: no weight key)."""
    messages = [dict(m) for m in MULTI.messages]
    for message, weight in zip((messages[1], messages[3]), weights, strict=True):
        if weight is not None:
            message["weight"] = weight
    return Example(tuple(messages), MULTI.task_type, "test.jsonl:7")


@pytest.mark.parametrize(
    "loss_on, weights, supervised",
    [
        ("all_assistant", (0, None), " cat<|end|>"),
        ("all_assistant", (None, 0), " Noted: cat.<|end|>"),
        ("last_assistant", (None, 0), " Noted: cat.<|end|>"),  # the last turn that is trained
        ("last_assistant", (0, None), " cat<|end|>"),
    ],
)
def test_a_weight_0_turn_carries_no_supervised_token(tokenizer, loss_on, weights, supervised):
    (row,), stats = run(tokenizer, [_weighted(*weights)], loss_on)
    assert supervised_text(tokenizer, row) == supervised
    assert stats.per_task["dialogue/multi_turn"].supervised_tokens == sum(label != IGNORE for label in row.labels)
    (plain,), _ = run(tokenizer, [MULTI], loss_on)
    assert row.input_ids == plain.input_ids  # the weight changes the labels, never the tokens


@pytest.mark.parametrize("loss_on", ["all_assistant", "last_assistant"])
def test_preflight_names_weight_0_when_no_assistant_turn_is_trained(tokenizer, loss_on):
    with pytest.raises(DataError) as err:
        run(tokenizer, [_weighted(0, 0), _weighted(0, 0), SINGLE], loss_on)
    message = str(err.value)
    assert message.startswith(
        "task_type 'dialogue/multi_turn': all 4 assistant turns of its 2 examples have `weight: 0`"
    )
    assert "at least one assistant turn per task_type must be trained" in message
    assert "max_seq_len" not in message  # not the cause
    run(tokenizer, [_weighted(0, 0), _weighted(0, None), SINGLE], loss_on)  # one trained turn is enough


def test_a_weight_0_turn_is_not_trained_under_all_tokens(tokenizer):
    (row,), _ = run(tokenizer, [_weighted(0, None)], "all_tokens")
    text = supervised_text(tokenizer, row)
    assert "<|user|>" in text and " cat<|end|>" in text and "Noted" not in text


def test_weight_0_needs_one_generation_block_per_assistant_turn(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    # One block around the whole conversation: no way to tell which tokens are the weight-0 turn's.
    tok.chat_template = (
        "{% generation %}" + tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    ).replace("{%- if add_generation_prompt", "{% endgeneration %}{%- if add_generation_prompt")
    with pytest.raises(DataError, match=r"^test.jsonl:7: a turn has weight 0 but the chat template marks 1 assistant"):
        run(tok, [_weighted(0, None)])


def test_no_examples_give_no_rows(tokenizer):
    rows, stats = run(tokenizer, [])
    assert rows == [] and stats.per_task == {}


def test_a_record_the_tokenizer_cannot_take_is_named(tokenizer):
    bad = Example(({"role": "user", "content": "x\ud800"}, {"role": "assistant", "content": "y"}), "t", "f.jsonl:3")
    with pytest.raises(DataError, match=r"^f.jsonl:3: the tokenizer's chat template cannot take this record"):
        run(tokenizer, [SINGLE, bad, MULTI])
