"""Examples longer than data.max_seq_len: the window data/truncation.py keeps (ending at the last
supervised token: prompt cut from the left, earlier trained turns cut when the supervised part is too
long, the final answer's end only when it alone is too long; drop, end), its counts per
task_type in tokenize(), the realised-mix report and its table, the metrics, the notice, the config."""

from __future__ import annotations

import pytest

from sweep_sft.config import data as data_config
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.data import truncation
from sweep_sft.data.pipeline import answer_cut_notice, mix_table, prepare
from sweep_sft.data.records import Example
from sweep_sft.data.tokenize import IGNORE, DatasetStats, TaskStats, tokenize
from sweep_sft.data.truncation import ANSWER_CUT, DROPPED, KEPT, PROMPT_CUT, fit
from sweep_sft.errors import ConfigError, DataError
from sweep_sft.metrics import mix_metrics


def ex(ids: list[int], supervised: set[int]) -> tuple[list[int], list[int]]:
    """The ids, with labels at the `supervised` positions."""
    return ids, [t if i in supervised else IGNORE for i, t in enumerate(ids)]


def seq(n: int) -> list[int]:
    return list(range(100, 100 + n))


# --- the function -----------------------------------------------------------------------------


def test_single_turn_long_prompt_is_cut_from_the_left_and_the_answer_stays():
    ids, labels = ex(seq(20), {17, 18, 19})  # prompt 0..16, answer 17..19 (its end token last)
    cut = fit(ids, labels, 8, "prompt")
    assert cut.outcome == PROMPT_CUT and (cut.left, cut.right, cut.supervised_cut) == (12, 0, 0)
    assert cut.input_ids == ids[12:] and cut.labels == labels[12:]
    assert [t for t in cut.labels if t != IGNORE] == ids[17:]


def test_a_bos_token_at_the_start_goes_with_the_cut_prompt():
    bos = 1
    ids, labels = ex([bos, *seq(19)], {18, 19})
    cut = fit(ids, labels, 10, "prompt")
    assert bos not in cut.input_ids and cut.input_ids == ids[-10:]


def test_multi_turn_keeps_every_trained_turn_and_cuts_the_first_prompt():
    # user 0..9, assistant 10..12, user 13..15, assistant 16..18: supervised part 10..18 (9 tokens)
    ids, labels = ex(seq(19), {10, 11, 12, 16, 17, 18})
    cut = fit(ids, labels, 9, "prompt")
    assert cut.outcome == PROMPT_CUT and cut.left == 10 and cut.labels == labels[10:]


def test_a_supervised_part_longer_than_max_seq_len_keeps_the_final_answer_and_cuts_the_earlier_turn():
    ids, labels = ex(seq(19), {10, 11, 12, 16, 17, 18})
    cut = fit(ids, labels, 8, "prompt")
    assert cut.outcome == ANSWER_CUT
    assert (cut.left, cut.right, cut.supervised_cut) == (11, 0, 1)
    assert cut.input_ids == ids[11:] and cut.labels[-3:] == ids[16:]


def test_multi_turn_too_long_keeps_the_final_answer_whole_and_ends_after_it():
    # 100 tokens: trained spans 10..30 and 80..95, then 4 unsupervised tokens (a closing user turn)
    ids, labels = ex(seq(100), set(range(10, 31)) | set(range(80, 96)))
    cut = fit(ids, labels, 50, "prompt")
    assert (cut.left, cut.left + len(cut.input_ids), cut.right) == (46, 96, 4)
    assert cut.outcome == ANSWER_CUT and cut.supervised_cut == 21  # the first trained turn, whole
    assert [t for t in cut.labels if t != IGNORE] == ids[80:96]
    assert cut.input_ids == ids[46:96]


def test_a_final_answer_alone_longer_than_max_seq_len_keeps_its_start_and_loses_its_end():
    # trained 10..20 and a final answer 40..99 (60 tokens) in a window of 50
    ids, labels = ex(seq(100), set(range(10, 21)) | set(range(40, 100)))
    cut = fit(ids, labels, 50, "prompt")
    assert cut.outcome == ANSWER_CUT and (cut.left, cut.right) == (40, 10)
    assert cut.input_ids == ids[40:90] and cut.supervised_cut == 11 + 10
    # single turn: prompt 0..9, answer 10..99
    single = fit(*ex(seq(100), set(range(10, 100))), 50, "prompt")
    assert (single.left, single.right, single.supervised_cut) == (10, 40, 40)


def test_unsupervised_tokens_after_the_answer_are_cut_and_the_context_before_it_stays():
    # a trailing weight-0 turn (or a long tail): no loss after the last label, so it goes first
    ids, labels = ex(seq(20), {5, 6, 7})
    cut = fit(ids, labels, 6, "prompt")
    assert cut.outcome == PROMPT_CUT and (cut.left, cut.right) == (2, 12)
    assert cut.input_ids == ids[2:8] and cut.labels[3:] == ids[5:8]


def test_weight_0_turns_are_not_part_of_the_supervised_part():
    # assistant 2..7 has weight 0 (labels IGNORE), the trained turn is 14..15: 2 tokens must stay
    ids, labels = ex(seq(16), {14, 15})
    cut = fit(ids, labels, 4, "prompt")
    assert cut.outcome == PROMPT_CUT and cut.input_ids == ids[12:]


@pytest.mark.parametrize("mode", truncation.MODES)
def test_exact_boundary(mode):
    ids, labels = ex(seq(10), {8, 9})
    assert fit(ids, labels, 10, mode).outcome == KEPT
    assert fit(ids, labels, 10, mode).input_ids == ids
    one_over = fit([*ids, 200], [*labels, IGNORE], 10, mode)
    assert one_over.outcome == {"prompt": PROMPT_CUT, "drop": DROPPED, "end": PROMPT_CUT}[mode]
    if mode == "prompt":  # the trailing unsupervised token goes, the prompt stays whole
        assert (one_over.left, one_over.right) == (0, 1)


def test_a_supervised_part_exactly_max_seq_len_long_fits_whole():
    ids, labels = ex(seq(12), set(range(4, 12)))
    cut = fit(ids, labels, 8, "prompt")
    assert cut.outcome == PROMPT_CUT and cut.labels == ids[4:]
    assert fit(ids, labels, 7, "prompt").outcome == ANSWER_CUT


def test_drop_and_end():
    ids, labels = ex(seq(20), {17, 18, 19})
    dropped = fit(ids, labels, 8, "drop")
    assert dropped.outcome == DROPPED and dropped.input_ids == [] and not dropped.keeps_all_supervised
    end = fit(ids, labels, 8, "end")
    assert end.outcome == ANSWER_CUT and end.input_ids == ids[:8] and end.supervised_cut == 3


def test_no_supervised_token_keeps_the_end():
    ids, labels = ex(seq(10), set())
    cut = fit(ids, labels, 4, "prompt")
    assert cut.outcome == PROMPT_CUT and cut.input_ids == ids[-4:]


def test_an_unknown_mode_fails():
    with pytest.raises(ValueError, match="expected one of prompt, drop, end"):
        fit(seq(10), seq(10), 4, "truncate")


# --- tokenize() with the embedded tokenizer -----------------------------------------------------

LONG_PROMPT = "word " * 60


def single(prompt: str, answer: str = "42", task: str = "reasoning/long") -> Example:
    return Example(({"role": "user", "content": prompt}, {"role": "assistant", "content": answer}), task, "t:1")


def multi(first: str, middle: str, weights=(1, 1)) -> Example:
    return Example(
        (
            {"role": "user", "content": first},
            {"role": "assistant", "content": "Noted: cat.", "weight": weights[0]},
            {"role": "user", "content": middle},
            {"role": "assistant", "content": "cat", "weight": weights[1]},
        ),
        "dialogue/multi_turn",
        "t:2",
    )


def run(tokenizer, examples, max_seq_len, mode="prompt", loss_on="all_assistant"):
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return tokenize(examples, tokenizer, loss_on, max_seq_len, mode, eot)


def supervised_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE])


def test_a_long_prompt_keeps_the_whole_answer_and_its_end_token_supervised(tokenizer):
    (whole,), _ = run(tokenizer, [single(LONG_PROMPT)], 1024)
    assert len(whole.input_ids) > 64
    (row,), stats = run(tokenizer, [single(LONG_PROMPT)], 32)
    assert len(row.input_ids) == 32 and row.truncated
    assert row.input_ids == whole.input_ids[-32:]
    assert supervised_text(tokenizer, row) == " 42<|end|>"
    assert (stats.per_task["reasoning/long"].prompt_cut, stats.per_task["reasoning/long"].answer_cut) == (1, 0)
    # the old end-cut, on request, loses the answer and says so
    (end_row, _), end_stats = run(tokenizer, [single(LONG_PROMPT), single("2 + 3?", "5")], 32, "end")
    assert supervised_text(tokenizer, end_row) == "" and end_stats.per_task["reasoning/long"].answer_cut == 1
    with pytest.raises(DataError, match="'reasoning/long' has no supervised token left: 1 of its 1 examples lost"):
        run(tokenizer, [single(LONG_PROMPT)], 32, "end")


def test_multi_turn_keeps_earlier_trained_turns(tokenizer):
    (row,), stats = run(tokenizer, [multi(LONG_PROMPT, "What is my pet?")], 24)
    assert supervised_text(tokenizer, row) == " Noted: cat.<|end|> cat<|end|>"
    assert stats.per_task["dialogue/multi_turn"].prompt_cut == 1


def test_a_supervised_part_too_long_is_an_answer_cut_except_for_the_turns_not_trained(tokenizer):
    example = multi("Hi", LONG_PROMPT)  # the user turn between the answers is long
    (whole,), _ = run(tokenizer, [example], 1024)
    (row,), stats = run(tokenizer, [example], 32)
    assert supervised_text(tokenizer, row) == " cat<|end|>"  # the final answer whole, the first one cut
    assert row.input_ids == whole.input_ids[-32:] and tokenizer.decode(row.input_ids).endswith("cat<|end|>")
    counts = stats.per_task["dialogue/multi_turn"]
    assert (counts.answer_cut, counts.prompt_cut) == (1, 0)
    # only the last turn is trained (last_assistant, or the first one weight 0): it fits whole
    for loss_on, weighted in (("last_assistant", example), ("all_assistant", multi("Hi", LONG_PROMPT, (0, 1)))):
        (row,), stats = run(tokenizer, [weighted], 32, loss_on=loss_on)
        assert supervised_text(tokenizer, row) == " cat<|end|>", loss_on
        assert stats.per_task["dialogue/multi_turn"].prompt_cut == 1


def test_the_end_of_turn_check_covers_prompt_cut_rows(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = tok.chat_template.replace("<|end|>{% endgeneration %}", "{% endgeneration %}<|end|>")
    with pytest.raises(DataError, match=r"reasoning/long.*end-of-turn token '<\|end\|>' is not supervised after 1 of"):
        run(tok, [single(LONG_PROMPT)], 32)


def test_the_end_of_turn_check_covers_the_final_turn_an_answer_cut_keeps_whole(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = tok.chat_template.replace("<|end|>{% endgeneration %}", "{% endgeneration %}<|end|>")
    with pytest.raises(DataError, match=r"dialogue/multi_turn.*'<\|end\|>' is not supervised after 1 of 1 trained"):
        run(tok, [multi("Hi", LONG_PROMPT)], 32)  # an answer-cut: the first turn is cut, the final one checked


def test_validation_rows_follow_the_same_rule(tokenizer):
    config = validate(compose(["data.max_seq_len=32"]))
    long = single(LONG_PROMPT)
    short = single("What is 2 + 3?", "5")
    prepared = prepare(config, tokenizer, tokenizer.eos_token_id, ({"embedded": [short, long]}, [long, short]))
    assert [supervised_text(tokenizer, r) for r in prepared.val_rows] == [" 42<|end|>", " 5<|end|>"]
    assert prepared.report["reasoning/long"]["prompt_cut"] == 1
    assert prepared.report["reasoning/long"]["val_prompt_cut"] == 1


# --- counts in the report, the table, the metrics and the notice --------------------------------


def test_counts_reach_the_report_table_and_metrics(tokenizer, capsys):
    config = validate(compose(["data.max_seq_len=32"]))
    train = [single(LONG_PROMPT), single("What is 2 + 3?", "5"), single("x", "word " * 40, "summary/long")]
    train += [single("y", "ok", "summary/long")]
    prepared = prepare(config, tokenizer, tokenizer.eos_token_id, ({"embedded": train}, [single("z", "5")]))
    report = prepared.report
    assert {k: report["reasoning/long"][k] for k in ("prompt_cut", "answer_cut", "dropped")} == {
        "prompt_cut": 1, "answer_cut": 0, "dropped": 0
    }
    assert report["summary/long"]["answer_cut"] == 1
    table = mix_table(report).splitlines()
    assert table[0].split()[5:8] == ["prompt_cut", "answer_cut", "dropped"]
    assert table[1].split()[0] == "reasoning/long" and table[1].split()[5:8] == ["1", "0", "0"]
    assert table[2].split()[0] == "summary/long" and table[2].split()[5:8] == ["0", "1", "0"]
    metrics = mix_metrics(report)
    assert metrics["data/prompt_cut/reasoning/long"] == 1 and metrics["data/answer_cut/summary/long"] == 1
    assert metrics["data/dropped/summary/long"] == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: answers cut: 1 of 4 training examples (summary/long: 1) lost supervised tokens to "
        "data.max_seq_len=32 (their supervised part alone is longer); raise data.max_seq_len to train on them whole"
    ]


def test_no_notice_when_no_answer_is_cut():
    stats = DatasetStats({"a/b": TaskStats(examples=3, prompt_cut=2, dropped=1)})
    assert answer_cut_notice(stats, DatasetStats(), 256, "prompt") is None


def test_the_notice_counts_validation_and_names_the_end_mode():
    train = DatasetStats({"a/b": TaskStats(examples=5, answer_cut=2), "a/c": TaskStats(examples=5)})
    val = DatasetStats({"a/b": TaskStats(examples=2, answer_cut=1)})
    notice = answer_cut_notice(train, val, 128, "end")
    assert notice.count("\n") == 0
    assert "2 of 10 training examples (a/b: 2) and 1 of 2 validation examples (a/b: 1)" in notice
    assert "data.max_seq_len=128" in notice and "data.truncation=prompt" in notice


# --- the config -----------------------------------------------------------------------------------


def test_config_values_are_the_functions_modes_and_prompt_is_the_default():
    assert data_config.TRUNCATION == truncation.MODES
    assert validate(compose([])).data.truncation == "prompt"
    files = ["data=jsonl", "data.mix.sources.files.train=a", "data.mix.sources.files.val=b"]
    assert validate(compose(files)).data.truncation == "prompt"
    with pytest.raises(ConfigError, match="data.truncation must be one of prompt, drop, end; got 'left'"):
        validate(compose(["data.truncation=left"]))


def test_the_old_value_truncate_is_end_with_a_note(capsys):
    """Trial folders made before keep `truncation: truncate` in config.yaml and are evaluated again."""
    assert validate(compose(["data.truncation=truncate"])).data.truncation == "end"
    assert "data.truncation=truncate is the old name of data.truncation=end" in capsys.readouterr().err
