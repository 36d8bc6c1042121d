"""The `base_answers` general set: the base model's own greedy answers to a small shipped set of
general prompts (facts, reasoning, instructions, writing, code, maths), generated once per base
model and cached, so that any model has a general probe without data from a hub.

Base and trained model then score those answers teacher-forced: the base model scores high on
what it would say itself, and `general_drop` measures how far training moved the model away from
its base's own behaviour on general requests (drift), not whether the answers were right."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep_sft import embedded
from sweep_sft.cache import build_once, source_hash
from sweep_sft.config.general import GeneralConfig
from sweep_sft.data.records import Example
from sweep_sft.evaluate import generation
from sweep_sft.evaluate.general_set import GENERAL_TASK, GeneralItem

if TYPE_CHECKING:
    from sweep_sft.evaluate.evaluator import Evaluator

PROMPTS_FILE = Path(embedded.__file__).parent / "general_prompts.jsonl"  # package data
ANSWERS_FILE = "answers.jsonl"  # in the answers' cache folder


def shipped_prompts(max_items: int | None = None) -> list[tuple[str, str]]:
    """The shipped general prompts as (kind, prompt), the first `max_items` (kinds alternate)."""
    records = [json.loads(line) for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["kind"], r["prompt"]) for r in records][:max_items]


def base_answers(
    general: GeneralConfig, ev: Evaluator, load_untrained: Callable[[], Any], model_key: dict[str, Any]
) -> list[GeneralItem]:
    """Each shipped prompt with the base model's greedy answer as a chat item to score. The answers
    are cached under `model_key` (the base model's path and weights stamp), the prompts, the chat
    template, the end-of-turn id and the generation settings; `load_untrained` is called only to
    generate them."""
    prompts = shipped_prompts(general.max_items)
    spec = {
        **model_key,
        "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16],
        "template": hashlib.sha256(str(ev.tokenizer.chat_template).encode()).hexdigest()[:16],
        "end_of_turn": ev.end_of_turn_id,
        "max_new_tokens": general.max_new_tokens,
        "version": source_hash(sys.modules[__name__], generation),
    }

    def build(folder: Path) -> None:
        print(
            f"general probe: the base model answers {len(prompts)} general prompts (once per base model, then cached)",
            flush=True,
        )
        records = generate(prompts, replace(ev, model=load_untrained()), general.max_new_tokens)
        (folder / ANSWERS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    folder = build_once("general-answers", spec, build)
    records = [json.loads(line) for line in (folder / ANSWERS_FILE).read_text(encoding="utf-8").splitlines()]
    return [
        GeneralItem(
            f"{PROMPTS_FILE.name}:{i + 1} ({r['kind']})",
            messages=({"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}),
            ends_turn=not r["cut"],
        )
        for i, r in enumerate(records)
    ]


def generate(prompts: list[tuple[str, str]], ev: Evaluator, max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy answers of `ev`'s model to the prompts, through its chat template, stopped at end-of-turn."""
    examples = [
        Example(
            ({"role": "user", "content": prompt}, {"role": "assistant", "content": ""}),
            GENERAL_TASK,
            f"{PROMPTS_FILE.name}:{i + 1}",
        )
        for i, (_, prompt) in enumerate(prompts)
    ]
    ev = replace(ev, eval=replace(ev.eval, max_new_tokens=max_new_tokens))
    ended: list[list[bool]] = []
    answers = [answer for (answer,) in generation.generate_answers(ev, examples, ended=ended)]
    # An answer the budget cut is scored without an end-of-turn the base model never chose.
    cut = [not stopped for (stopped,) in ended]
    if any(cut):
        print(
            f"general probe: {sum(cut)} of {len(answers)} base answers reached eval.general.max_new_tokens="
            f"{max_new_tokens} and were cut there (raise it to score whole answers)",
            flush=True,
        )
    return [
        {"kind": kind, "prompt": prompt, "answer": answer, "cut": c}
        for (kind, prompt), answer, c in zip(prompts, answers, cut, strict=True)
    ]
