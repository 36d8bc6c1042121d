"""`eval.scorers` as the config names it: which scorer each task_type gets (the first task_type
pattern that matches, in the order given; exact when none does) and the checks made when the
config is read, with no scorer's library and no user's module imported: a known name, a regex
that compiles, a `module:function` spelled as one. What each scorer computes, and the import of
a user's function at the trial's start: sweep_sft.evaluate.scorers."""

from __future__ import annotations

import fnmatch
import re

from sweep_sft.errors import ConfigError

DEFAULT_SCORER = "exact"
# The scorers known by name (sweep_sft.evaluate.scorers.BY_NAME implements each).
SCORER_NAMES = (DEFAULT_SCORER, "normalized", "contains", "json_valid", "json_equal", "chrf", "rouge_l")
REGEX_PREFIX = "regex:"
# `package.module:function` (or `module:Class.method`): Python names only, so a typo is named
# when the config is read rather than when the import fails.
FUNCTION_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
SPEC_FORMS = f"{', '.join(SCORER_NAMES)}, {REGEX_PREFIX}<pattern> or module:function"


def is_function_spec(spec: str) -> bool:
    """Whether the spec names a user's function (`module:function`) rather than a built-in scorer."""
    return not spec.startswith(REGEX_PREFIX) and ":" in spec


def check_scorer_spec(key: str, spec: str) -> None:
    """One scorer spec, checked without importing anything: ConfigError naming `key` otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{key}: expected a scorer ({SPEC_FORMS}), got {spec!r}")
    if spec.startswith(REGEX_PREFIX):
        pattern = spec[len(REGEX_PREFIX) :]
        if not pattern:
            raise ConfigError(f"{key}={spec}: expected a regular expression after {REGEX_PREFIX}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{key}={spec}: not a valid regular expression ({exc})") from None
    elif ":" in spec:
        if not FUNCTION_SPEC.fullmatch(spec):
            raise ConfigError(
                f"{key}={spec}: expected module:function (Python names, e.g. my_scorers:rouge_2) "
                f"or {REGEX_PREFIX}<pattern>"
            )
    elif spec not in SCORER_NAMES:
        raise ConfigError(f"{key}: unknown scorer {spec!r}; the scorers are {SPEC_FORMS}")


def check_scorers(scorers: dict[str, str]) -> None:
    """Every `eval.scorers` entry: a non-empty task_type pattern and a scorer spec that can exist."""
    for pattern, spec in scorers.items():
        if not str(pattern).strip():
            raise ConfigError("eval.scorers: a task_type pattern is empty; expected e.g. 'summ*' or 'mcq/*'")
        check_scorer_spec(scorer_key(pattern), spec)


def scorer_key(pattern: str) -> str:
    """The config key an error about one entry names: eval.scorers.<pattern>."""
    return f"eval.scorers.{pattern}"


def matching_pattern(task: str, scorers: dict[str, str]) -> str | None:
    """The first pattern (fnmatch, case-sensitive; `*` also matches `/`) that matches the task_type."""
    return next((p for p in scorers if fnmatch.fnmatchcase(task, p)), None)


def scorer_for(task: str, scorers: dict[str, str]) -> str:
    """The scorer spec of a task_type: its first matching pattern's, else exact."""
    pattern = matching_pattern(task, scorers)
    return DEFAULT_SCORER if pattern is None else scorers[pattern]


def scorer_names(scorers: dict[str, str], tasks: list[str]) -> dict[str, str]:
    """Each task_type's scorer spec."""
    return {task: scorer_for(task, scorers) for task in tasks}
