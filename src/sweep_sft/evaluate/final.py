"""What a trial measures once training ends, and standalone evaluation measures again: the
validation loss, exact match, pass@k and train recall (each task_type under its own scorer), and
the general probe against the base model; each phase shown as it runs (evaluate.progress)."""

from __future__ import annotations

from typing import Any

from sweep_sft.data.records import Example, first_per_task
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.generation import TRAIN, trained_sample
from sweep_sft.evaluate.progress import LINES, Phase
from sweep_sft.metrics import GENERAL_DROP, GENERAL_SCORE, TRAIN_RECALL, base_name


def final_validation_loss(
    evaluator: Evaluator, rows: list[Tokenized], tasks: list[str], show: str = LINES
) -> dict[str, float]:
    """The validation loss of the final evaluation, shown as its first phase (the evaluations
    during training are not: the training bar is showing)."""
    with Phase(f"validation loss over {len(rows)} examples", len(rows), show) as phase:
        return evaluator.validation_loss(rows, tasks, phase.advance)


def final_evaluation(
    evaluator: Evaluator,
    val_examples: list[Example],
    train_rows: list[Tokenized],
    base_probe: dict[str, float] | None,
    show: str = LINES,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The final metrics, and every greedy generation (validation, then train recall) as a
    record for generations.jsonl; the general probe is compared with the base model's
    `base_probe` (None: not probed). `show`: progress bars (BAR), a line per phase (LINES) or
    nothing (QUIET)."""
    ev = evaluator.eval
    final: dict[str, float] = {}
    generations: list[dict[str, Any]] = []
    if ev.generate:
        scores, generations = evaluator.exact_match(val_examples, show=show)
        final.update(scores)
        if ev.pass_k:
            final.update(evaluator.pass_at_k(first_per_task(val_examples, ev.pass_k_examples), show=show))
        if ev.train_recall_examples:
            trained = trained_sample(train_rows, ev.train_recall_examples, evaluator.seed)
            recall, recalled = evaluator.exact_match(trained, prefix=TRAIN_RECALL, split=TRAIN, show=show)
            final.update(recall)
            generations += recalled
    if base_probe is not None:
        pairs = len(evaluator.general_pairs())
        with Phase(f"general probe over {pairs} items", pairs, show) as phase:
            trained_probe = evaluator.general_probe(phase.advance)
        final.update(trained_probe)
        final.update({base_name(k): v for k, v in base_probe.items()})
        final[GENERAL_DROP] = base_probe[GENERAL_SCORE] - trained_probe[GENERAL_SCORE]
    return final, generations
