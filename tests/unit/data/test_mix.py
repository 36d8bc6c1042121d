"""The data mix: scaling, task shares (examples or supervised tokens), families, source
weights, de-duplication in a trial, and errors that name the config key."""

from __future__ import annotations

import json
import random

import pytest

from sweep_sft.config.compose import compose
from sweep_sft.data.mix import apply_task_mix, realised_mix, scale
from sweep_sft.data.tokenize import IGNORE, Tokenized
from sweep_sft.errors import ConfigError
from sweep_sft.trial.run import run_trial


def rows_of(counts: dict[str, int], supervised: dict[str, int] | None = None) -> list[Tokenized]:
    rows = []
    for task, n in counts.items():
        k = (supervised or {}).get(task, 1)
        rows += [Tokenized([1] * (k + 2), [IGNORE, IGNORE] + [5] * k, task) for _ in range(n)]
    return rows


def test_scale_repeats_then_samples_the_fraction_in_order():
    items = list(range(10))
    out = scale(items, 2.5, random.Random(0))
    assert len(out) == 25 and out == sorted(out)
    assert {out.count(i) for i in items} == {2, 3}
    assert scale(items, 0.3, random.Random(0)) == scale(items, 0.3, random.Random(0))
    assert len(scale(items, 0.3, random.Random(0))) == 3 and scale(items, 0, random.Random(0)) == []


def test_task_share_of_examples():
    rows = rows_of({"a/x": 100, "a/y": 100, "b": 200})
    mix = realised_mix(apply_task_mix(rows, {}, {"a": {"x": 0.5}}, "examples", 0))
    assert mix["a/x"]["examples"] == 300 and mix["a/x"]["example_share"] == pytest.approx(0.5)
    assert (mix["a/y"]["examples"], mix["b"]["examples"]) == (100, 200)  # the others keep their size


def test_shares_summing_to_one_leave_the_other_tasks_out():
    rows = rows_of({"a/x": 100, "a/y": 50, "b": 200})
    mix = realised_mix(apply_task_mix(rows, {}, {"a": {"x": 1.0}}, "examples", 0))
    assert mix == {"a/x": {"examples": 100, "supervised_tokens": 100, "example_share": 1.0, "token_share": 1.0}}
    mix = realised_mix(apply_task_mix(rows, {}, {"a": {"x": 0.5, "y": 0.5}}, "examples", 0))
    assert (mix["a/x"]["examples"], mix["a/y"]["examples"], "b" in mix) == (75, 75, False)


def test_only_keeps_one_task_or_family():
    rows = rows_of({"a/x": 100, "a/y": 50, "b": 200})
    assert set(realised_mix(apply_task_mix(rows, {}, {}, "examples", 0, only="a/y"))) == {"a/y"}
    assert set(realised_mix(apply_task_mix(rows, {}, {}, "examples", 0, only="a"))) == {"a/x", "a/y"}
    with pytest.raises(ConfigError, match="data.mix.only.c: no task_type 'c'"):
        apply_task_mix(rows, {}, {}, "examples", 0, only="c")


def test_family_share_scales_its_members_together():
    mix = realised_mix(apply_task_mix(rows_of({"a/x": 100, "a/y": 100, "b": 200}), {}, {"a": 0.2}, "examples", 0))
    assert (mix["a/x"]["examples"], mix["a/y"]["examples"], mix["b"]["examples"]) == (25, 25, 200)


def test_task_share_of_supervised_tokens():
    rows = rows_of({"short": 100, "long": 100}, supervised={"short": 1, "long": 9})
    mix = realised_mix(apply_task_mix(rows, {}, {"short": 0.5}, "supervised_tokens", 0))
    assert mix["short"]["token_share"] == pytest.approx(0.5)
    assert mix["short"]["examples"] == 900


def test_repeat_then_share():
    mix = realised_mix(apply_task_mix(rows_of({"a": 10, "b": 10}), {"a": 3}, {}, "examples", 0))
    assert mix["a"]["examples"] == 30 and mix["b"]["examples"] == 10


@pytest.mark.parametrize(
    "repeat,ratio,message",
    [
        ({}, {"a": -0.1}, r"data.mix.task_ratio.a must be >= 0"),
        ({}, {"c": {"z": 0.1}}, r"data.mix.task_ratio.c.z: no task_type 'c/z'.*task_types: a/x, a/y, b"),
        ({}, {"a": 0.2, "b": 0.9}, r"shares sum to 1.1"),
        ({"a": 2, "a/x": 1}, {}, r"both set task_type 'a/x'"),
        ({"a": 0, "b": 0}, {}, r"leaves no training examples"),
        ({}, {"b": "lots"}, r"data.mix.task_ratio.b must be a number"),
    ],
)
def test_mix_errors_name_the_key(repeat, ratio, message):
    with pytest.raises(ConfigError, match=message):
        apply_task_mix(rows_of({"a/x": 10, "a/y": 10, "b": 10}), repeat, ratio, "examples", 0)


def test_trial_with_a_share_override_and_a_weighted_second_source(tmp_path, tiny_overrides):
    extra = tmp_path / "extra.jsonl"
    record = {
        "task_type": "extra/greeting",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    extra.write_text(
        (json.dumps(record) + "\n") * 3
        + json.dumps(
            {
                **record,
                "messages": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Hello there"}],
            }
        )
        + "\n"
    )
    overrides = [o for o in tiny_overrides if not o.startswith("data.max_train_examples")] + [
        "data.mix.task_ratio.classification.sentiment=0.25",
        f"+data.mix.sources.extra={{train: {extra}, weight: 2, format: messages}}",
        "data.dedup.exact=true",
    ]
    result = run_trial(compose(overrides + ["eval.generate=false", "eval.general_probe=false"]))
    stats = json.loads((tmp_path / "trial" / "dataset_stats.json").read_text())
    assert stats["classification/sentiment"]["example_share"] == pytest.approx(0.25, abs=0.001)
    # 3 identical greetings de-duplicated to 1, plus the other: 2 examples, weight 2 -> 4
    assert stats["extra/greeting"]["examples"] == 4 and stats["extra/greeting"]["dedup_exact"] == 2
    assert result.metrics["val/loss"] > 0


def test_share_and_repeat_are_override_paths_without_plus():
    from sweep_sft.config.validate import validate

    cfg = validate(compose(["data.mix.task_ratio.reasoning.addition=0.3", "data.mix.task_repeat.classification=2"]))
    assert cfg.data.mix.task_ratio == {"reasoning": {"addition": 0.3}}
    assert cfg.data.mix.task_repeat == {"classification": 2}
    with pytest.raises(ConfigError, match="data.mix.ratio_of"):
        validate(compose(["data.mix.ratio_of=bytes"]))
    with pytest.raises(Exception, match="data.mix.foo|foo"):
        validate(compose(["data.mix.foo=1"]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.mix.task_ratio.reasoning=0.3", "data.mix.task_ratio.reasoning.addition=0.2"],
        ["data.mix.task_ratio.reasoning.addition=0.2", "data.mix.task_ratio.reasoning=0.3"],
        ["data.mix.task_repeat.reasoning=2", "+data.mix.task_repeat.reasoning.addition=3"],
    ],
)
def test_a_family_and_a_task_type_inside_it_in_two_overrides_is_an_error(overrides):
    """Hydra's merge would keep the last of the two and drop the other without a word."""
    short, long = sorted(overrides, key=len)
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert f"{short} and {long}: " in str(err.value) and "cannot be a number and hold addition too" in str(err.value)


def test_a_mapping_for_a_family_merges_with_a_key_inside_it():
    from sweep_sft.config.validate import validate

    cfg = validate(compose(["data.mix.task_ratio.reasoning={addition: 0.2}", "data.mix.task_ratio.reasoning.x=0.1"]))
    assert cfg.data.mix.task_ratio == {"reasoning": {"addition": 0.2, "x": 0.1}}


def _examples(counts: dict[str, int], source: str) -> list:
    from sweep_sft.data.records import Example

    tasks = [t for t, n in counts.items() for _ in range(n)]
    return [
        Example(({"role": "user", "content": f"{t} {i}"}, {"role": "assistant", "content": "a"}), t, f"{source}:{i}")
        for i, t in enumerate(tasks)
    ]


def test_hold_out_takes_a_seeded_share_of_each_task_type_and_never_its_last_example(capsys):
    from sweep_sft.data.pipeline import hold_out

    by_source = {"a": _examples({"x": 50, "y": 1}, "a"), "b": _examples({"x": 50, "z": 2}, "b")}
    rest, val, counts = hold_out(by_source, 0.1, seed=3)
    assert counts == {"x": 10, "y": 0, "z": 1}
    assert [e.task_type for e in val].count("x") == 10 and len(val) == 11
    kept = [e for examples in rest.values() for e in examples]
    assert len(kept) == 103 - 11 and not {id(e) for e in kept} & {id(e) for e in val}
    assert [e.source for e in val] == sorted((e.source for e in val), key=lambda s: (s[0], int(s.split(":")[1])))
    assert [e.source for e in hold_out(by_source, 0.1, seed=3)[1]] == [e.source for e in val]
    assert [e.source for e in hold_out(by_source, 0.1, seed=4)[1]] != [e.source for e in val]
    assert "held out 11 training examples (10% of each task_type, data.val_holdout)" in capsys.readouterr().out


def test_trial_without_a_validation_file_validates_on_held_out_training_examples(tmp_path, tiny_overrides):
    """data.mix.sources.files.val=null (one source, no val file): the trial holds out a share of
    its training examples, trains on the rest and evaluates on them."""
    from sweep_sft.embedded.build import embedded_data

    train = tmp_path / "train.jsonl"
    lines = (embedded_data() / "train.jsonl").read_text().splitlines()
    train.write_text("\n".join(lines[::25]) + "\n")  # 256 examples, every task_type
    overrides = [
        *tiny_overrides,
        "data=jsonl",
        f"data.mix.sources.files.train={train}",
        "data.mix.sources.files.val=null",
        "data.val_holdout=0.25",
        "data.max_train_examples=null",
        "eval.general_probe=false",
    ]
    result = run_trial(compose(overrides))
    stats = json.loads((tmp_path / "trial" / "dataset_stats.json").read_text())
    held = {task: s["val_held_out"] for task, s in stats.items()}
    assert len(held) == 8 and all(n > 0 for n in held.values())
    trained, removed = (sum(s.get(k, 0) for s in stats.values()) for k in ("examples", "dedup_exact"))
    assert trained + sum(held.values()) + removed == 256  # each example trained or held out, never both
    assert sum(held.values()) == pytest.approx(0.25 * (256 - removed), abs=8)
    assert result.metrics["val/loss"] > 0
    assert all(f"val/loss/{task}" in result.metrics and f"task/exact_match/{task}" in result.metrics for task in held)
