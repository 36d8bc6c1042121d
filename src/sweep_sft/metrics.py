"""The metrics a trial reports, by family: their names, which of them an objective may name, and
the final values a trial's series end on.

One list serves the objective check before training and the trial's own records: a metric the
trial writes to metrics.json is a metric `objective=` accepts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sweep_sft.errors import ConfigError

if TYPE_CHECKING:
    from sweep_sft.config.schema import EvalConfig

# Per task_type (`<family>/<task>`) and over all task_types (`<family>`), at every eval.
VAL_LOSS = "val/loss"
ANSWER_LOGPROB = "val/answer_logprob"
VAL_FAMILIES = (VAL_LOSS, ANSWER_LOGPROB)
# The final evaluation's generations, per task_type and overall, each task_type under its scorer
# (eval.scorers; exact unless set): task/exact_match/<task> is the mean score of the greedy
# generations (under exact: the share equal to the reference), task/train_recall the same on
# trained prompts, task/sample_match the share of samples scoring >= eval.pass_threshold.
EXACT_MATCH = "task/exact_match"
TRAIN_RECALL = "task/train_recall"
SAMPLE_MATCH = "task/sample_match"
# Per task_type and overall at every logged training step (train/loss); per task_type only: the
# share of the loss weight each task_type got.
TRAIN_LOSS = "train/loss"
TRAIN_WEIGHT_SHARE = "train/loss_weight_share"
# Over all task_types, at every logged training step (train.loop).
GRAD_NORM = "train/grad_norm"
LR = "train/lr"
TOKENS_PER_S = "train/tokens_per_s"
SUPERVISED_TOKENS_PER_S = "train/supervised_tokens_per_s"
PACKING_EFFICIENCY = "train/packing_efficiency"
SUPERVISED_FRACTION = "train/supervised_fraction"
EPOCH = "train/epoch"  # fractional epoch at each logged step
TRAIN_OVERALL = (GRAD_NORM, LR, TOKENS_PER_S, SUPERVISED_TOKENS_PER_S, PACKING_EFFICIENCY, SUPERVISED_FRACTION, EPOCH)
# Per task_type only, logged once at step 0: the realised data mix, and the training examples longer
# than data.max_seq_len: cut keeping every supervised token, cut losing some, dropped. Family: the
# key of the mix report (data/pipeline.py) it is read from.
MIX_KEYS = {
    "data/examples": "examples",
    "data/example_share": "example_share",
    "data/token_share": "token_share",
    "data/prompt_cut": "prompt_cut",
    "data/answer_cut": "answer_cut",
    "data/dropped": "dropped",
}
MIX_FAMILIES = tuple(MIX_KEYS)
TRAIN_TIME = "time/train_s"
TOTAL_TIME = "time/total_s"
EVAL_TIME = "time/eval_s"  # standalone evaluation only
TIMES = (TRAIN_TIME, TOTAL_TIME)
# The general-ability probe of the trained model, the base model's (`general/base_*`), and the drop.
GENERAL_SCORE = "general/score"
GENERAL_LOSS = "general/loss"
GENERAL_EXACT_MATCH = "general/exact_match"
GENERAL_PROBE = (GENERAL_SCORE, GENERAL_LOSS, GENERAL_EXACT_MATCH)
GENERAL_DROP = "general_drop"
# Against eval.baseline_run_id: deltas per task_type and the number of regressions.
COMPARE_REGRESSIONS = "compare/regressions"
COMPARE_DELTA = "compare/delta"
COMPARE_DELTAS = (f"{COMPARE_DELTA}/exact_match", f"{COMPARE_DELTA}/val_loss")

PASS_AT = re.compile(r"task/pass_at_(\d+)(/|$)")


def pass_at(k: int) -> str:
    """The pass@k family's name: task/pass_at_<k>."""
    return f"task/pass_at_{k}"


def base_name(probe_metric: str) -> str:
    """The base model's probe metric beside the trained one's: general/score -> general/base_score."""
    return f"general/base_{probe_metric.split('/')[1]}"


def pass_ks(metrics: dict[str, float]) -> set[int]:
    """The k of every pass@k a run reports (`task/pass_at_<k>[/<task>]`)."""
    return {int(m.group(1)) for key in metrics if (m := PASS_AT.match(key))}


def mix_metrics(report: dict[str, dict]) -> dict[str, float]:
    """The realised mix as metrics, so runs can be compared on it in the MLflow UI."""
    out: dict[str, float] = {}
    for task, s in report.items():
        for family, key in MIX_KEYS.items():
            out[f"{family}/{task}"] = s[key]
    return out


# A finished trial's headline numbers once more, final values under one prefix: the printed
# table's "all" row, the general probe's drop and the objective. MLflow's charts put metrics in
# sections by the prefix before their last "/", sorted by name: all/ comes first (before data/,
# general/, task/...), one bar per child run, ready to compare across a sweep.
HEADLINE_PREFIX = "all/"


def headline_metrics(metrics: dict[str, float], objective: float | None) -> dict[str, float]:
    """The headline numbers of a finished trial's final `metrics` (all/val_loss, all/exact_match,
    all/pass_at_<k>, all/train_recall, all/general_drop where measured, all/objective)."""
    keys = {"val_loss": VAL_LOSS, "exact_match": EXACT_MATCH, "train_recall": TRAIN_RECALL}
    keys["general_drop"] = GENERAL_DROP
    k = max(pass_ks(metrics), default=None)
    if k:
        keys[f"pass_at_{k}"] = pass_at(k)
    out = {HEADLINE_PREFIX + short: metrics[key] for short, key in keys.items() if key in metrics}
    if objective is not None:
        out[HEADLINE_PREFIX + "objective"] = objective
    return out


def _eval_families(ev: EvalConfig) -> list[str]:
    """The per-task_type families of the final evaluation, as eval settings switch them on."""
    families = []
    if ev.generate:
        families.append(EXACT_MATCH)
        if ev.train_recall_examples:
            families.append(TRAIN_RECALL)
        if ev.pass_k:
            families += [pass_at(ev.pass_k), SAMPLE_MATCH]
    return families


def metric_names(tasks: list[str], ev: EvalConfig) -> list[str]:
    """Every metric a trial with these eval settings reports at its end (objective checks
    before training): every key of its metrics.json."""
    per_task = [*VAL_FAMILIES, TRAIN_LOSS, *_eval_families(ev)]
    overall = list(TIMES)
    if ev.general_probe:
        overall += [*GENERAL_PROBE, GENERAL_DROP]
    names = per_task + overall + [f"{p}/{task}" for task in tasks for p in per_task]
    names += TRAIN_OVERALL
    names += [f"{p}/{task}" for task in tasks for p in (TRAIN_WEIGHT_SHARE, *MIX_FAMILIES)]
    if ev.general_probe:
        names += [base_name(m) for m in GENERAL_PROBE]
    if ev.baseline_run_id is not None:
        names += [COMPARE_REGRESSIONS] + [f"{p}/{task}" for task in tasks for p in COMPARE_DELTAS]
    return names


def _switched_off(name: str, ev: EvalConfig) -> str | None:
    """The eval setting that keeps a known metric from being measured, if that is why it is missing."""
    family = name if name.startswith("general") else "/".join(name.split("/")[:2])
    if family in (EXACT_MATCH, TRAIN_RECALL) or family.startswith(("task/pass_at_", "task/sample_")):
        if not ev.generate:
            return "eval.generate=false"
    if family == TRAIN_RECALL and not ev.train_recall_examples:
        return "eval.train_recall_examples=0"
    if family.startswith("task/pass_at_") or family == SAMPLE_MATCH:
        if not ev.pass_k:
            return "eval.pass_k=0"
        if family.startswith("task/pass_at_") and family != pass_at(ev.pass_k):
            return f"eval.pass_k={ev.pass_k} (it measures {pass_at(ev.pass_k)})"
    if family.startswith("general") and not ev.general_probe:
        return "eval.general_probe=false"
    return None


def check_objective(name: str, tasks: list[str], ev: EvalConfig) -> None:
    """Fail before training when `objective=name` is no metric a trial with these settings reports."""
    names = metric_names(tasks, ev)
    if name in names:
        return
    off = _switched_off(name, ev)
    if off:
        raise ConfigError(f"objective={name}: not measured with {off}; measure it or choose another objective")
    raise ConfigError(f"objective: unknown metric {name!r}; the metrics are: {', '.join(names)}")


def objective_value(name: str, metrics: dict[str, float]) -> float:
    """The objective's final value among a trial's metrics."""
    if name not in metrics:
        raise ConfigError(
            f"objective: metric {name!r} was not produced by this trial (is its evaluation switched off?); "
            f"produced: {', '.join(sorted(metrics))}"
        )
    return metrics[name]


def final_values(series: dict[str, list[list[float]]]) -> dict[str, float]:
    """The last logged value of every series: a trial's final metrics."""
    return {key: values[-1][1] for key, values in series.items()}
