"""Scorers one by one (what each calls right, wrong and in between), the pattern that picks a
task_type's scorer, and the config errors a bad `eval.scorers` entry gives when the config is
read, with no scorer library imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from helpers import SRC
from sweep_sft.config.compose import compose
from sweep_sft.config.schema import EvalConfig
from sweep_sft.config.scorers import SCORER_NAMES, scorer_for, scorer_names
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError
from sweep_sft.evaluate.scorers import BY_NAME, TaskScorers, load_scorer, normalize, parse_json


def score(spec: str, generated: str, reference: str) -> float:
    return load_scorer(spec, "eval.scorers.t")(generated, reference)


def test_every_named_scorer_is_implemented_and_no_other():
    assert tuple(BY_NAME) == SCORER_NAMES


@pytest.mark.parametrize(
    "spec,generated,reference,expected",
    [
        ("exact", " positive\n", "positive", 1.0),
        ("exact", "Positive", "positive", 0.0),
        ("exact", "positive.", "positive", 0.0),
        ("normalized", "The  Answer: Paris!", "answer paris", 1.0),
        ("normalized", "“Paris”…", "paris", 1.0),  # Unicode punctuation too
        ("normalized", "ＰＡＲＩＳ", "paris", 1.0),  # NFKC: full-width letters
        ("normalized", "a cat", "the cat", 1.0),  # articles dropped
        ("normalized", "Paris, France", "paris", 0.0),
        ("normalized", "catalog", "the cat", 0.0),  # an article only as a whole word
        ("contains", "I think the answer is 4.", "4", 1.0),
        ("contains", "The answer is 14", "4", 0.0),  # whole words, not a substring
        ("contains", "New York City is big", "new york", 1.0),
        ("contains", "York New", "new york", 0.0),
        ("contains", "it is", "the", 0.0),  # a reference that normalises to nothing must appear as given
        ("contains", "say the word", "the", 1.0),
        ("json_valid", '{"a": 1}', "", 1.0),
        ("json_valid", '```json\n{"a": 1}\n```', "", 1.0),
        ("json_valid", "```\n[1, 2]\n```", "", 1.0),
        ("json_valid", '{"a": 1', "", 0.0),
        ("json_valid", 'Here it is: {"a": 1}', "", 0.0),  # prose around is not JSON
        ("json_valid", "NaN", "", 0.0),  # Python's json takes it; JSON does not
        ("json_valid", "", "", 0.0),
        ("json_equal", '{"b": [1, 2], "a": "x"}', '{"a": "x", "b": [1, 2]}', 1.0),  # key order ignored
        ("json_equal", '```json\n{"a": 1.0}\n```', '{"a": 1}', 1.0),
        ("json_equal", '{"a": true}', '{"a": 1}', 0.0),  # true is not 1
        ("json_equal", '{"a": [2, 1]}', '{"a": [1, 2]}', 0.0),  # lists keep their order
        ("json_equal", '{"a": 1, "b": 2}', '{"a": 1}', 0.0),
        ("json_equal", "not json", "not json", 0.0),
        ("chrf", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("chrf", "", "", 1.0),
        ("chrf", "xyz", "the cat sat on the mat", 0.0),
        ("rouge_l", "the cat sat on the mat", "The cat sat on the mat.", 1.0),
        ("rouge_l", "dog", "the cat sat on the mat", 0.0),
        ("rouge_l", "кот сидел", "Кот сидел.", 1.0),  # non-Latin words count too
    ],
)
def test_named_scorers(spec, generated, reference, expected):
    assert score(spec, generated, reference) == pytest.approx(expected)


def test_chrf_and_rouge_l_give_partial_credit_in_order():
    ref = "Expect thick fog until noon, so drive with your lights on."
    close = "Expect thick fog until noon, so drive carefully."
    far = "Sunny all day."
    for spec in ("chrf", "rouge_l"):
        values = [score(spec, g, ref) for g in (ref, close, far)]
        assert values[0] == 1.0 > values[1] > values[2] >= 0.0, (spec, values)
        assert 0.3 < values[1] < 1.0
    # rouge_l is the F-measure of the longest common word subsequence: 7 of 8 and 7 of 11 words here.
    p, r = 7 / 8, 7 / 11
    assert score("rouge_l", close, ref) == pytest.approx(2 * p * r / (p + r), abs=1e-4)


@pytest.mark.parametrize(
    "pattern,generated,reference,expected",
    [
        (r"\(([A-D])\)", "The answer is (B).", "(B)", 1.0),
        (r"\(([A-D])\)", "The answer is (C).", "(B)", 0.0),
        (r"\(([A-D])\)", "The answer is (B).", "B", 1.0),  # the reference does not match: as it is
        (r"\(([A-D])\)", "I am not sure.", "(B)", 0.0),  # no match in the generation
        (r"\(([A-D])\)", "(A) no wait, (B)", "(B)", 0.0),  # the first match counts
        (r"answer is (\d+)", "so the answer is 42", "The answer is 42", 1.0),
        (r"\d+", "about 47 apples", "47", 1.0),  # no group: the whole match
        (r"(?i)answer: (yes|no)", "ANSWER: yes", "answer: yes", 1.0),
    ],
)
def test_regex_scorer_compares_the_extracted_answers(pattern, generated, reference, expected):
    assert score(f"regex:{pattern}", generated, reference) == expected


def test_normalize_is_the_squad_normalisation():
    assert normalize("  The Quick, brown—fox's  tail! ") == "quick brownfoxs tail"


def test_a_fenced_block_counts_only_when_it_is_the_whole_answer():
    assert parse_json('```JSON\n{"a": 1}\n```') == (True, {"a": 1})
    assert parse_json('text ```json\n{"a": 1}\n```')[0] is False


def test_the_first_matching_pattern_wins_and_exact_is_the_default():
    scorers = {"summ*": "chrf", "mcq/*": "regex:\\(([A-D])\\)", "*": "normalized"}
    assert scorer_for("summarise/news", scorers) == "chrf"
    assert scorer_for("mcq/arc/easy", scorers) == "regex:\\(([A-D])\\)"  # `*` matches `/` too
    assert scorer_for("qa", scorers) == "normalized"
    assert scorer_for("qa", {"QA": "chrf"}) == "exact"  # case-sensitive
    ordered = {"mcq/*": "exact", "*": "chrf"}
    assert scorer_names(ordered, ["mcq/a", "b"]) == {"mcq/a": "exact", "b": "chrf"}
    assert scorer_names({}, ["a"]) == {"a": "exact"}
    task_scorers = TaskScorers(scorers)
    assert task_scorers.score("mcq/x", "so (A)", "(A)") == 1.0
    assert task_scorers.score("other", "The Paris", "paris") == 1.0


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of scorers, as a user writes one."""
    (tmp_path / "my_scorers.py").write_text(
        textwrap.dedent(
            """
            NOT_A_FUNCTION = 3

            def overlap(generated, reference):
                g, r = set(generated.split()), set(reference.split())
                return len(g & r) / len(r) if r else 0.0

            def too_big(generated, reference):
                return 2.0

            class Scorers:
                @staticmethod
                def first_word(generated, reference):
                    return float(generated.split()[:1] == reference.split()[:1])
            """
        )
    )
    (tmp_path / "broken_scorers.py").write_text("raise RuntimeError('bad module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_scorers", "broken_scorers"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_users_function_is_imported_and_its_score_checked(user_module):
    assert score("my_scorers:overlap", "a b c", "a b x y") == 0.5
    assert score("my_scorers:Scorers.first_word", "yes it is", "yes") == 1.0
    with pytest.raises(ValueError, match=r"eval.scorers.t=my_scorers:too_big returned 2.0; .*\[0, 1\]"):
        score("my_scorers:too_big", "a", "a")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_module_xyz:f", r"eval.scorers.t=no_such_module_xyz:f: cannot import no_such_module_xyz"),
        ("broken_scorers:f", r"cannot import broken_scorers \(RuntimeError: bad module\)"),
        ("my_scorers:missing", r"my_scorers has no missing"),
        ("my_scorers:NOT_A_FUNCTION", r"NOT_A_FUNCTION is a int, not a function"),
    ],
)
def test_a_users_function_that_cannot_be_used_is_a_config_error(user_module, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_scorer(spec, "eval.scorers.t")


@pytest.mark.parametrize(
    "scorers,message",
    [
        ({"summ*": "chfr"}, r"eval.scorers.summ\*: unknown scorer 'chfr'; the scorers are exact, normalized, "
         r"contains, json_valid, json_equal, chrf, rouge_l, regex:<pattern> or module:function"),
        ({"a": "regex:(("}, r"eval.scorers.a=regex:\(\(: not a valid regular expression"),
        ({"a": "regex:"}, r"eval.scorers.a=regex:: expected a regular expression"),
        ({"a": "my mod:f"}, r"eval.scorers.a=my mod:f: expected module:function"),
        ({"a": "mod:"}, r"eval.scorers.a=mod:: expected module:function"),
        ({"a": ""}, r"eval.scorers.a: expected a scorer"),
        ({"": "chrf"}, r"eval.scorers: a task_type pattern is empty"),
    ],
)
def test_a_bad_scorer_is_named_when_the_config_is_read(scorers, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(scorers=scorers)


@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_pass_threshold_is_in_0_1(value):
    with pytest.raises(ConfigError, match=r"eval.pass_threshold must be a finite number in \(0, 1\]"):
        EvalConfig(pass_threshold=value)


def test_the_command_line_form_composes_in_order_and_validates():
    config = validate(compose(['eval.scorers={summ*: chrf, mcq/*: "regex:\\(([A-D])\\)", qa/*: contains}']))
    expected = [("summ*", "chrf"), ("mcq/*", r"regex:\(([A-D])\)"), ("qa/*", "contains")]
    assert list(config.eval.scorers.items()) == expected
    with pytest.raises(ConfigError, match="eval.scorers.x: unknown scorer 'nope'"):
        validate(compose(["eval.scorers={x: nope}"]))
    assert validate(compose(["eval.scorers.x=chrf"])).eval.scorers == {"x": "chrf"}  # a new key needs no +


def test_checking_the_names_imports_no_scorer_library_and_no_users_module():
    code = textwrap.dedent(
        """
        import sys
        from sweep_sft.config.compose import compose
        from sweep_sft.config.validate import validate
        validate(compose(['eval.scorers={a: chrf, b: rouge_l, c: "some_module_xyz:f", d: json_equal}']))
        heavy = {"sacrebleu", "torchmetrics", "torch", "some_module_xyz"} & set(sys.modules)
        print("imported:", sorted(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC, check=True)
    assert "imported: []" in out.stdout, out.stdout + out.stderr


def test_standalone_evaluation_runs_no_function_the_trials_config_names_unless_its_command_line_does(tmp_path):
    """A trial folder or a logged run can be written by anyone: its config.yaml naming a
    module:function scorer imports and runs nothing until this command's line names it too."""
    from omegaconf import OmegaConf

    from sweep_sft.evaluate.standalone import load_config
    from sweep_sft.evaluate.target import Target

    file = tmp_path / "config.yaml"
    file.write_text(OmegaConf.to_yaml(compose(["eval.scorers={a/*: chrf, b/*: some_module_xyz:score}"])))
    target = Target(file, None, None, tmp_path)
    with pytest.raises(ConfigError, match=r"eval.scorers.b/\*=some_module_xyz:score names a function to import"):
        load_config(target, [])
    config = load_config(target, ["eval.scorers.b/*=some_module_xyz:score"])
    assert config.eval.scorers == {"a/*": "chrf", "b/*": "some_module_xyz:score"}
    assert "some_module_xyz" not in sys.modules  # named, not imported
    assert load_config(target, ["eval.scorers.b/*=exact"]).eval.scorers["b/*"] == "exact"
