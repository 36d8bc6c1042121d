"""Scorers: how well a generated answer matches its reference, a number in [0, 1] (1: right).

Each task_type is scored by the scorer `eval.scorers` gives it (sweep_sft.config.scorers picks
it; exact when no pattern matches). Every final metric of a task_type uses it: the greedy
`task/exact_match/<task>` is the mean score, `task/train_recall/<task>` too, and a sampled
answer counts as right for pass@k and sample_match when its score >= `eval.pass_threshold`.

- exact: the stripped strings are equal (the only score before scorers existed).
- normalized: equal after `normalize` (Unicode NFKC, case folded, punctuation removed, the
  English articles a/an/the removed, whitespace collapsed; the SQuAD answer normalisation).
- contains: the normalised reference appears in the normalised generation as whole words
  ("4" is in "the answer is 4", not in "14"); a reference that normalises to nothing (only
  punctuation or articles) must appear as given.
- regex:<pattern>: the pattern's first match in the generation (its group 1 when it has a
  group) equals the same extraction from the reference, or the whole stripped reference when
  the pattern does not match the reference; no match in the generation scores 0.
- json_valid: the generation is one JSON value (NaN and Infinity are not JSON).
- json_equal: generation and reference parse to equal JSON values (key order ignored; true is
  not 1). For both JSON scorers an answer that is one fenced block (```json ... ``` or ``` ... ```)
  counts as its content.
- chrf: chrF (character n-gram F-score, sacrebleu's defaults: chars up to 6-grams, beta 2) / 100.
- rouge_l: ROUGE-L F-measure (longest common word subsequence; torchmetrics), over lower-cased
  words of letters and digits in any script. Text without spaces between words (Chinese,
  Japanese) is one word to it: use chrf there.
- module:function: your own `function(generated, reference) -> float in [0, 1]`, imported from a
  module on the Python path (installed, or in the folder you run from) when the trial starts.
"""

from __future__ import annotations

import functools
import importlib
import json
import numbers
import re
import string
import unicodedata
from collections.abc import Callable

from sweep_sft.config.scorers import (
    REGEX_PREFIX,
    SCORER_NAMES,
    is_function_spec,
    scorer_for,
    scorer_key,
)
from sweep_sft.errors import ConfigError

Scorer = Callable[[str, str], float]

ARTICLES = frozenset({"a", "an", "the"})
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```", re.S | re.I)


def exact(generated: str, reference: str) -> float:
    """1.0 when the stripped strings are equal."""
    return float(generated.strip() == reference.strip())


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize(text: str) -> str:
    """NFKC, case folded, punctuation dropped, articles a/an/the dropped, single spaces."""
    text = "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if not _is_punctuation(ch))
    return " ".join(word for word in text.split() if word not in ARTICLES)


def normalized(generated: str, reference: str) -> float:
    """1.0 when the answers are equal once normalised."""
    return float(normalize(generated) == normalize(reference))


def contains(generated: str, reference: str) -> float:
    """1.0 when the normalised reference appears in the normalised generation, as whole words."""
    want = normalize(reference)
    if not want:
        return float(reference.strip() in generated)
    return float(f" {want} " in f" {normalize(generated)} ")


def regex(pattern: str) -> Scorer:
    """The scorer of `regex:<pattern>`: the extracted answers are equal."""
    compiled = re.compile(pattern)

    def extract(text: str) -> str | None:
        match = compiled.search(text)
        if match is None:
            return None
        return ((match.group(1) if compiled.groups else match.group(0)) or "").strip()

    def score(generated: str, reference: str) -> float:
        got = extract(generated)
        if got is None:
            return 0.0
        want = extract(reference)
        return float(got == (reference.strip() if want is None else want))

    return score


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> tuple[bool, object]:
    """(True, value) when the text, or the content of the one fenced block it is, is JSON."""
    body = text.strip()
    fenced = _FENCE.fullmatch(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return True, json.loads(body, parse_constant=_no_constants)
    except ValueError:  # json.JSONDecodeError is one
        return False, None


def json_valid(generated: str, reference: str) -> float:
    """1.0 when the generation is JSON."""
    return float(parse_json(generated)[0])


def _same_json(a: object, b: object) -> bool:
    # Python's == takes True for 1 and 1.0 for 1: JSON tells booleans from numbers.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def json_equal(generated: str, reference: str) -> float:
    """1.0 when both parse as JSON to the same value."""
    (ok_g, got), (ok_r, want) = parse_json(generated), parse_json(reference)
    return float(ok_g and ok_r and _same_json(got, want))


@functools.cache
def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(generated: str, reference: str) -> float:
    """chrF of the generation against the reference, scaled to [0, 1]."""
    generated, reference = generated.strip(), reference.strip()
    if generated == reference:  # sacrebleu scores two empty strings 0
        return 1.0
    return min(1.0, max(0.0, _chrf_metric().sentence_score(generated, [reference]).score / 100))


def _rouge_words(text: str) -> str:
    # torchmetrics' own normaliser keeps only a-z and 0-9: every non-Latin word would vanish.
    return re.sub(r"[\W_]+", " ", text.casefold())


def rouge_l(generated: str, reference: str) -> float:
    """ROUGE-L F-measure of the generation against the reference."""
    generated, reference = generated.strip(), reference.strip()
    if generated == reference:
        return 1.0
    from torchmetrics.functional.text import rouge_score

    scores = rouge_score(generated, reference, rouge_keys="rougeL", normalizer=_rouge_words)
    return float(scores["rougeL_fmeasure"])


BY_NAME: dict[str, Scorer] = {
    "exact": exact,
    "normalized": normalized,
    "contains": contains,
    "json_valid": json_valid,
    "json_equal": json_equal,
    "chrf": chrf,
    "rouge_l": rouge_l,
}


def load_function(spec: str, key: str) -> Scorer:
    """A user's `module:function`, imported; ConfigError naming `key` when it does not import or
    is not callable."""
    module_name, _, attribute = spec.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise ConfigError(f"{key}={spec}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{key}={spec}: {module_name} has no {attribute}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"{key}={spec}: {attribute} is a {type(found).__name__}, not a function")
    return found  # type: ignore[return-value]


def load_scorer(spec: str, key: str) -> Scorer:
    """The scorer a spec names (a user's function imported); ConfigError naming `key` otherwise."""
    if spec.startswith(REGEX_PREFIX):
        return regex(spec[len(REGEX_PREFIX) :])
    if is_function_spec(spec):
        return _checked(load_function(spec, key), spec, key)
    if spec not in BY_NAME:
        raise ConfigError(f"{key}: unknown scorer {spec!r}; the scorers are {', '.join(SCORER_NAMES)}")
    return BY_NAME[spec]


def _checked(function: Callable, spec: str, key: str) -> Scorer:
    """A user's function whose every score must be a number in [0, 1]."""

    def score(generated: str, reference: str) -> float:
        value = function(generated, reference)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) <= 1:  # nan too
            raise ValueError(f"{key}={spec} returned {value!r}; a scorer returns a number in [0, 1]")
        return float(value)

    return score


class TaskScorers:
    """The scorer of every task_type under `eval.scorers`, each loaded once."""

    def __init__(self, scorers: dict[str, str]) -> None:
        self.scorers = dict(scorers)
        self._loaded: dict[str, Scorer] = {}

    def spec(self, task: str) -> str:
        """The task_type's scorer spec (exact when no pattern matches)."""
        return scorer_for(task, self.scorers)

    def scorer(self, task: str) -> Scorer:
        """The task_type's scorer, loaded on first use."""
        spec = self.spec(task)
        if spec not in self._loaded:
            pattern = next((p for p, s in self.scorers.items() if s == spec), spec)
            self._loaded[spec] = load_scorer(spec, scorer_key(pattern))
        return self._loaded[spec]

    def score(self, task: str, generated: str, reference: str) -> float:
        """The task_type's score of one generation."""
        return self.scorer(task)(generated, reference)

    def load_all(self) -> None:
        """Every scorer the patterns name, loaded now (a user's module imported): errors before the work."""
        for pattern, spec in self.scorers.items():
            self._loaded.setdefault(spec, load_scorer(spec, scorer_key(pattern)))
