"""One model under evaluation with everything each evaluation needs beside it (tokenizer, device,
end-of-turn id, the eval settings): built once by a trial or standalone evaluation, where the
evaluation functions (evaluate.loss, evaluate.generation) take it in place of the same seven values each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweep_sft import modeling
from sweep_sft.config.schema import Config, EvalConfig
from sweep_sft.data.records import Example
from sweep_sft.data.tokenize import Tokenized
from sweep_sft.evaluate import general_probe
from sweep_sft.evaluate.general_set import Pair
from sweep_sft.evaluate.generation import VALIDATION, exact_match, sampled_pass_at_k
from sweep_sft.evaluate.loss import validation_loss
from sweep_sft.evaluate.progress import LINES
from sweep_sft.metrics import EXACT_MATCH


@dataclass
class Evaluator:
    """A model and what evaluating it takes: its tokenizer and device, the id that ends a turn,
    the eval settings, the training precision (fp32 or bf16, trainer.precision resolved for the
    device) and the seed of sampled evaluations."""

    model: Any
    tokenizer: Any
    device: Any
    end_of_turn_id: int
    eval: EvalConfig
    precision: str = "fp32"
    seed: int = 0
    # The general set the base model was probed on (general_probe.probe_base), which the trained
    # model is scored on too; None: the embedded probe.
    general: general_probe.GeneralProbe | None = None
    # A generation prompt keeps its last this many tokens (data.max_seq_len: what training saw,
    # its prompt cut from the left as data.truncation cuts it); None: whole prompts.
    max_prompt_len: int | None = None

    @classmethod
    def for_trial(cls, model, tokenizer, device, config: Config) -> Evaluator:
        """The evaluator of a trial's (or a trained) model under the trial's config, its
        trainer.precision resolved for `device` (auto: bf16 on a CUDA device that supports it)."""
        eot_id = tokenizer.convert_tokens_to_ids(modeling.end_of_turn(config.model, tokenizer))
        return cls(
            model,
            tokenizer,
            device,
            eot_id,
            config.eval,
            modeling.resolve_precision(config.trainer.precision, device),
            config.trainer.seed,
            max_prompt_len=config.data.max_seq_len,
        )

    def validation_loss(
        self, rows: list[Tokenized], tasks: list[str], advance: Callable[[int], None] | None = None
    ) -> dict[str, float]:
        """Validation loss and answer log-probability, overall and per task_type; `advance(n)`
        told as each batch of n rows is done."""
        return validation_loss(self, rows, tasks, advance)

    def exact_match(
        self, examples: list[Example], prefix: str = EXACT_MATCH, split: str = VALIDATION, show: str = LINES
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Per task_type, the mean score of greedy generations under the task_type's scorer, and
        every generation as a record (generations.jsonl); `show`: BAR, LINES or QUIET (evaluate.progress)."""
        return exact_match(self, examples, prefix, split, show)

    def pass_at_k(self, examples: list[Example], show: str = LINES) -> dict[str, float]:
        """pass@k and the share of right samples (score >= eval.pass_threshold) per task_type,
        from samples seeded by `seed`."""
        return sampled_pass_at_k(self, examples, show)

    def general_pairs(self) -> list[Pair]:
        """The general set the probe scores: the one the base model was probed on, else the embedded one."""
        return self.general.pairs if self.general is not None else general_probe.embedded_pairs(self.tokenizer)

    def general_probe(self, advance: Callable[[int], None] | None = None) -> dict[str, float]:
        """The general-ability probe's scores of this model, on the set the base model was probed
        on; `advance(n)` told as each batch of n items is scored."""
        return general_probe.score(
            self.model,
            self.tokenizer.pad_token_id,
            self.device,
            self.general_pairs(),
            self.eval.batch_size,
            self.precision,
            advance,
        )
