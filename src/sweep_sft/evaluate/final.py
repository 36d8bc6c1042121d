"""What a trial measures once training ends, and standalone evaluation measures again: exact
match, pass@k, train recall, and the general probe against the base model."""

from __future__ import annotations

from sweep_sft.data.records import Example, first_per_task
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.generation import trained_sample
from sweep_sft.metrics import GENERAL_DROP, GENERAL_SCORE, TRAIN_RECALL, base_name


def final_evaluation(
    evaluator: Evaluator,
    val_examples: list[Example],
    train_rows: list[Tokenized],
    base_probe: dict[str, float] | None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """The final metrics and a few generations to read; the general probe is compared with the
    base model's `base_probe` (None: not probed)."""
    ev = evaluator.eval
    final: dict[str, float] = {}
    samples: list[dict[str, str]] = []
    if ev.generate:
        scores, samples = evaluator.exact_match(val_examples)
        final.update(scores)
        if ev.pass_k:
            final.update(evaluator.pass_at_k(first_per_task(val_examples, ev.pass_k_examples)))
        if ev.train_recall_examples:
            trained = trained_sample(train_rows, ev.train_recall_examples, evaluator.seed)
            final.update(evaluator.exact_match(trained, prefix=TRAIN_RECALL)[0])
    if base_probe is not None:
        trained_probe = evaluator.general_probe()
        final.update(trained_probe)
        final.update({base_name(k): v for k, v in base_probe.items()})
        final[GENERAL_DROP] = base_probe[GENERAL_SCORE] - trained_probe[GENERAL_SCORE]
    return final, samples
