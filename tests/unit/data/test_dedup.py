"""Tests for de-duplication: exact duplicates, near-duplicate answers (MinHash LSH), protected examples."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import SRC, TESTS
from sweep_sft.data.dedup import (
    PROTECTED_TAG,
    DedupStats,
    answer_text,
    deduplicate,
    jaccard,
    normalise,
    shingles,
)
from sweep_sft.data.records import Example
from sweep_sft.errors import ConfigError

# 20 words; LONG_LAST differs only in the last word (17 of 19 shingles shared: Jaccard 0.895),
# LONG_MIDDLE only in the 10th word (15 of 21 shingles shared: Jaccard 0.714).
LONG = "the quick brown fox jumps over the lazy dog while the farmer sleeps under an oak tree near the river"
LONG_LAST = LONG.rsplit(" ", 1)[0] + " lake"
LONG_MIDDLE = LONG.replace(" dog ", " cat ")


def ex(user: str, answer: str, task: str = "qa", tags: tuple[str, ...] = (), source: str = "") -> Example:
    return Example(
        messages=({"role": "user", "content": user}, {"role": "assistant", "content": answer}),
        task_type=task,
        source=source or f"data.jsonl:{user}",
        tags=tags,
    )


def test_fixture_similarities_are_what_the_tests_assume():
    words = normalise(LONG)
    assert len(words) == 20
    assert jaccard(shingles(words, 3), shingles(normalise(LONG_LAST), 3)) == pytest.approx(17 / 19)
    assert jaccard(shingles(words, 3), shingles(normalise(LONG_MIDDLE), 3)) == pytest.approx(15 / 21)


def test_normalise_and_shingles():
    assert normalise("  Don't   STOP,\n now! foo_bar ") == ["dont", "stop", "now", "foobar"]
    assert shingles(["a", "b", "c", "d"], 3) == {"a b c", "b c d"}
    assert shingles(["a", "b"], 3) == {"a b"}
    assert shingles([], 3) == {""}


def test_answer_text_joins_assistant_turns():
    example = Example(
        messages=(
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ),
        task_type="chat",
        source="x:1",
    )
    assert answer_text(example) == "a1\na2"


def test_exact_duplicates_removed_first_kept_order_preserved():
    a = ex("2+2?", "4", task="math", source="a:1")
    b = ex("capital of France?", "Paris", task="geo", source="a:2")
    a_again = ex("  2+2?\n", "4  ", task="math", source="a:3")  # whitespace around content is ignored
    c = ex("3+3?", "6", task="math", source="a:4")
    a_third = ex("2+2?", "4", task="math", source="a:5", tags=("other",))  # tags are not compared
    b_again = ex("capital of France?", "Paris", task="geo", source="a:6")
    not_dup = ex("2 + 2?", "4", task="math", source="a:7")  # inner whitespace differs: not exact

    kept, stats = deduplicate([a, b, a_again, c, a_third, b_again, not_dup])

    assert [k.source for k in kept] == ["a:1", "a:2", "a:4", "a:7"]
    assert kept[0] is a and kept[1] is b
    assert stats.exact == {"math": 2, "geo": 1}
    assert stats.near == {"math": 0, "geo": 0}
    assert stats.as_dict() == {"geo": {"exact": 1, "near": 0}, "math": {"exact": 2, "near": 0}}


def test_roles_are_part_of_exact_identity():
    one = Example(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}), "t", "s:1")
    two = Example(({"role": "system", "content": "hi"}, {"role": "assistant", "content": "yo"}), "t", "s:2")
    extra = Example(one.messages + ({"role": "user", "content": ""},), "t", "s:3")
    kept, stats = deduplicate([one, two, extra], near_threshold=None)
    assert kept == [one, two, extra]
    assert stats.exact == {"t": 0}


def test_same_messages_under_different_task_types_are_kept():
    first = ex("q", LONG, task="a")
    second = ex("q", LONG, task="b")
    kept, stats = deduplicate([first, second])
    assert kept == [first, second]
    assert stats.as_dict() == {"a": {"exact": 0, "near": 0}, "b": {"exact": 0, "near": 0}}


def test_near_duplicate_answers_removed_at_0_8_kept_at_0_99():
    examples = [ex("q1", LONG), ex("q2", "something else entirely, " * 5), ex("q3", LONG_LAST)]

    kept, stats = deduplicate(examples, near_threshold=0.8)
    assert [k.source for k in kept] == ["data.jsonl:q1", "data.jsonl:q2"]
    assert stats.as_dict() == {"qa": {"exact": 0, "near": 1}}

    kept, stats = deduplicate(examples, near_threshold=0.99)
    assert kept == examples
    assert stats.as_dict() == {"qa": {"exact": 0, "near": 0}}


def test_near_uses_shingle_jaccard_not_word_overlap():
    # One word changed mid-answer breaks 3 shingles: Jaccard 0.714, below 0.8, so both stay.
    examples = [ex("q1", LONG), ex("q2", LONG_MIDDLE)]
    assert deduplicate(examples, near_threshold=0.8)[0] == examples
    assert deduplicate(examples, near_threshold=0.7)[0] == examples[:1]
    # With 1-word shingles the sets differ in one word of 17 distinct: Jaccard 16/18.
    assert deduplicate(examples, near_threshold=0.8, shingle=1)[0] == examples[:1]


def test_near_ignores_case_punctuation_and_whitespace_and_is_per_task_type():
    shouty = LONG.upper().replace(" ", " ,  ") + "!!!"
    examples = [ex("q1", LONG), ex("q2", shouty), ex("q3", shouty, task="other")]
    kept, stats = deduplicate(examples, near_threshold=1.0)
    assert kept == [examples[0], examples[2]]
    assert stats.as_dict() == {"other": {"exact": 0, "near": 0}, "qa": {"exact": 0, "near": 1}}


def test_near_compares_all_assistant_turns():
    def two_turns(user: str, second: str) -> Example:
        return Example(
            messages=(
                {"role": "user", "content": user},
                {"role": "assistant", "content": LONG},
                {"role": "user", "content": "and then?"},
                {"role": "assistant", "content": second},
            ),
            task_type="chat",
            source=f"c:{user}",
        )

    same_first = [two_turns("a", "a completely different ending with many other words here"), two_turns("b", LONG)]
    kept, stats = deduplicate(same_first, near_threshold=0.9)
    assert kept == same_first  # the first turns match, the joined answers do not
    assert stats.near == {"chat": 0}


def test_near_keeps_first_and_compares_with_kept_only():
    # b is a near-duplicate of a; c is a near-duplicate of b but not of a: only b goes.
    a = "one two three four five six seven eight nine ten eleven twelve"
    b = a + " thirteen"
    c = b + " fourteen fifteen"
    examples = [ex("qa", a), ex("qb", b), ex("qc", c)]
    sim = lambda x, y: jaccard(shingles(normalise(x), 3), shingles(normalise(y), 3))  # noqa: E731
    assert sim(a, b) >= 0.9 and sim(b, c) >= 0.8 and sim(a, c) < 0.8
    kept, stats = deduplicate(examples, near_threshold=0.8)
    assert kept == [examples[0], examples[2]]
    assert stats.near == {"qa": 1}


def test_short_answers_never_near_deduped():
    labels = [ex(f"review {i}", "positive" if i % 2 else "Negative.", task="sentiment") for i in range(50)]
    kept, stats = deduplicate(labels, near_threshold=0.5)
    assert kept == labels
    assert stats.as_dict() == {"sentiment": {"exact": 0, "near": 0}}

    seven = "the answer is forty two my friend"  # 7 words, one short of the default minimum
    pair = [ex("q1", seven), ex("q2", seven)]
    assert deduplicate(pair)[0] == pair
    assert deduplicate(pair, min_answer_words=7)[0] == pair[:1]


def test_short_answers_still_exact_deduped():
    labels = [ex("same review", "positive", task="sentiment") for _ in range(3)]
    kept, stats = deduplicate(labels)
    assert kept == labels[:1]
    assert stats.exact == {"sentiment": 2}


def test_robustness_examples_never_removed_nor_used_as_reference():
    tag = (PROTECTED_TAG, "noisy")
    plain = ex("q", LONG, source="p:1")
    protected_exact = ex("q", LONG, tags=tag, source="p:2")
    protected_near = ex("q-near", LONG_LAST, tags=tag, source="p:3")
    protected_twice = ex("q", LONG, tags=(PROTECTED_TAG,), source="p:4")
    kept, stats = deduplicate([plain, protected_exact, protected_near, protected_twice], near_threshold=0.8)
    assert [k.source for k in kept] == ["p:1", "p:2", "p:3", "p:4"]
    assert stats.as_dict() == {"qa": {"exact": 0, "near": 0}}

    # A protected example first does not make a later untagged copy a duplicate...
    first_protected = [ex("q", LONG, tags=tag, source="r:1"), ex("q", LONG, source="r:2"), ex("x", LONG_LAST)]
    kept, stats = deduplicate(first_protected, near_threshold=0.8)
    # ...but the untagged copy is still the reference for the untagged near-duplicate after it.
    assert [k.source for k in kept] == ["r:1", "r:2"]
    assert stats.as_dict() == {"qa": {"exact": 0, "near": 1}}


def test_none_disables_near():
    examples = [ex("q1", LONG), ex("q2", LONG), ex("q1", LONG)]
    kept, stats = deduplicate(examples, near_threshold=None)
    assert kept == examples[:2]
    assert stats.as_dict() == {"qa": {"exact": 1, "near": 0}}


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.01, 2, float("nan"), float("inf"), True, "0.9"])
def test_bad_threshold_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"data\.dedup\.near_threshold"):
        deduplicate([ex("q", LONG)], near_threshold=bad)


def test_bad_shingle_and_min_words_raise_config_error():
    with pytest.raises(ConfigError, match=r"data\.dedup\.shingle"):
        deduplicate([], shingle=0)
    with pytest.raises(ConfigError, match=r"data\.dedup\.min_answer_words"):
        deduplicate([], min_answer_words=-1)


def test_threshold_one_is_allowed_and_empty_input_is_fine():
    assert deduplicate([], near_threshold=1) == ([], DedupStats())
    assert DedupStats().as_dict() == {}


def _words(rng: random.Random, count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(count)]


def _synthetic(n: int, seed: int, near_every: int = 0) -> list[Example]:
    """n examples of one task_type with random 12-word answers.

    Every near_every-th answer copies an earlier one: alternately verbatim (Jaccard 1) or with the last word
    replaced (9 of 10 shingles unchanged: Jaccard >= 9/11).
    """
    rng = random.Random(seed)
    vocab = _words(rng, 5000)
    examples: list[Example] = []
    for i in range(n):
        if near_every and i and i % near_every == 0:
            words = answer_text(examples[rng.randrange(len(examples))]).split()
            if (i // near_every) % 2:
                words[-1] = rng.choice(vocab)
            answer = " ".join(words)
        else:
            answer = " ".join(rng.choice(vocab) for _ in range(12))
        examples.append(ex(f"prompt {i}", answer, task="gen", source=f"s:{i}"))
    return examples


def _brute_force(examples: list[Example], threshold: float) -> list[Example]:
    """Reference: greedy O(n^2) near-dedup against kept answers, exact Jaccard everywhere."""
    kept: list[Example] = []
    kept_sets: list[set[str]] = []
    for example in examples:
        s = shingles(normalise(answer_text(example)), 3)
        if all(jaccard(s, other) < threshold for other in kept_sets):
            kept.append(example)
            kept_sets.append(s)
    return kept


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_lsh_matches_brute_force(threshold):
    examples = _synthetic(1500, seed=7, near_every=5)
    kept, stats = deduplicate(examples, near_threshold=threshold)
    expected = _brute_force(examples, threshold)
    assert kept == expected
    assert stats.near == {"gen": len(examples) - len(expected)}
    assert stats.near["gen"] >= 140  # the near copies really were found


def _result(examples: list[Example]) -> dict:
    kept, stats = deduplicate(examples, near_threshold=0.8)
    return {"kept": [k.source for k in kept], "stats": stats.as_dict()}


def test_deterministic_within_and_across_processes():
    examples = _synthetic(600, seed=3, near_every=4)
    examples += [ex(f"dup {i}", "short") for i in range(5)] + [ex("dup 0", "short")]
    here = _result(examples)
    assert here == _result(examples)
    assert here["stats"]["qa"]["exact"] == 1 and here["stats"]["gen"]["near"] > 0

    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(TESTS)!r}]
        import test_dedup as t
        examples = t._synthetic(600, seed=3, near_every=4)
        examples += [t.ex(f"dup {{i}}", "short") for i in range(5)] + [t.ex("dup 0", "short")]
        print(json.dumps(t._result(examples)))
        """
    )
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(SRC)}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here


def test_scale_20k_distinct_answers():
    examples = _synthetic(20_000, seed=11)
    start = time.perf_counter()
    kept, stats = deduplicate(examples)
    elapsed = time.perf_counter() - start
    assert len(kept) == 20_000
    assert stats.as_dict() == {"gen": {"exact": 0, "near": 0}}
    print(f"deduplicate: 20k examples in {elapsed:.2f}s")
