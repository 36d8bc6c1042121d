"""General-ability probe: how likely a model still finds a general set, base model against trained.

The set (eval.general.source) is one of three, each a list of (context, scored) token ids:
the embedded toy's plain-text continuations (counting, the alphabet, weekdays, opposites), the base
model's own answers to shipped general prompts (evaluate.general_answers), or the user's own
JSONL set (evaluate.general_set). Every item is scored teacher-forced, so the probe is smooth:
`general/score` is the mean over items of the geometric-mean probability of the scored tokens
(exp of their mean log-probability; 1.0 = certain), beside `general/loss` (the mean negative
log-probability over all scored tokens) and `general/exact_match` (the share of items whose every
scored token is the model's top choice). `general_drop` is the base score minus the trained score.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep_sft.cache import build_once, source_hash
from sweep_sft.config.general import AUTO, BASE_ANSWERS, EMBEDDED
from sweep_sft.config.schema import Config
from sweep_sft.embedded import general
from sweep_sft.evaluate import general_answers, general_set
from sweep_sft.evaluate.general_set import Pair
from sweep_sft.metrics import GENERAL_EXACT_MATCH, GENERAL_LOSS, GENERAL_SCORE
from sweep_sft.names import GENERAL_SOURCE_PARAM
from sweep_sft.train.loss import autocast

if TYPE_CHECKING:
    from sweep_sft.evaluate.evaluator import Evaluator

PROBE_SPEC = {"version": source_hash(general), "n_items": 200, "seed": 99}
SCORES_FILE = "scores.json"  # in the base scores' cache folder
SOURCE_PARAM = GENERAL_SOURCE_PARAM  # the MLflow param naming the set the probe scored


@dataclass
class GeneralProbe:
    """A general set as token ids, the source it came from (embedded, base_answers or the set's
    path), and the base model's scores on it."""

    source: str
    pairs: list[Pair]
    base: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: which set, how many items, the base model's score on it."""
        base = f", base score {self.base[GENERAL_SCORE]:.3f}" if GENERAL_SCORE in self.base else ""
        return f"general probe: {self.source} ({len(self.pairs)} items){base}"


def resolve_source(config: Config) -> str:
    """eval.general.source with `auto` decided: the embedded probe for the embedded model (whose
    pretraining text it is), the base model's own answers for any other."""
    source = config.eval.general.source
    if source != AUTO:
        return source
    return EMBEDDED if config.model.name_or_path == "embedded" else BASE_ANSWERS


def probe_items() -> list[tuple[str, str]]:
    """The embedded probe's (prompt, continuation) pairs."""
    return general.probe_items(PROBE_SPEC["n_items"], PROBE_SPEC["seed"])


def embedded_pairs(tokenizer, max_items: int | None = None) -> list[Pair]:
    """The embedded probe as token ids: plain text, no chat template, the continuation scored."""
    items = probe_items()[:max_items]
    prompts = tokenizer([p for p, _ in items], add_special_tokens=False)["input_ids"]
    conts = tokenizer([c for _, c in items], add_special_tokens=False)["input_ids"]
    return [(list(p), list(c)) for p, c in zip(prompts, conts, strict=True)]


def probe_base(config: Config, ev: Evaluator, load_untrained: Callable[[], Any], model_id: str) -> GeneralProbe:
    """The general set of `config` as token ids, with the base model's scores on it (cached per
    model `model_id`, its weights' stamp and the set; `load_untrained` gives the base model, called
    once at most and only when a cache lacks what it gives)."""
    source, gen = resolve_source(config), config.eval.general
    # How the base computes is part of its scores: bf16 vs fp32, a 4-bit QLoRA base vs the full one.
    base = {"model": model_id, "stamp": stamp(model_id), "precision": ev.precision}
    base["quantize"] = config.model.lora.quantize
    loaded: list[Any] = []

    def untrained() -> Any:
        if not loaded:
            loaded.append(load_untrained())
        return loaded[0]

    if source == EMBEDDED:
        pairs = embedded_pairs(ev.tokenizer, gen.max_items)
    elif source == BASE_ANSWERS:
        items = general_answers.base_answers(gen, ev, untrained, base)
        pairs = general_set.pairs(items, ev.tokenizer, ev.end_of_turn_id, gen.max_seq_len)
    else:
        items = general_set.read_set(source, gen.max_items)
        pairs = general_set.pairs(items, ev.tokenizer, ev.end_of_turn_id, gen.max_seq_len)
    return GeneralProbe(source, pairs, base_scores(base, pairs, untrained, ev))


def base_scores(
    base: dict[str, Any], pairs: list[Pair], untrained: Callable[[], Any], ev: Evaluator
) -> dict[str, float]:
    """The base model's scores on `pairs`, computed once per base (model, weights' stamp,
    precision, quantization) and set, and cached."""
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    spec: dict[str, Any] = {
        **base,
        "pairs": digest,
        "version": source_hash(sys.modules[__name__]),
    }

    def build(folder: Path) -> None:
        scores = score(untrained(), ev.tokenizer.pad_token_id, ev.device, pairs, ev.eval.batch_size, ev.precision)
        (folder / SCORES_FILE).write_text(json.dumps(scores))

    return json.loads((build_once("probe", spec, build) / SCORES_FILE).read_text())


def score(
    model,
    pad_token_id: int,
    device,
    pairs: list[Pair],
    batch_size: int,
    precision: str = "fp32",
    advance: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """The model's probe scores on `pairs`: general/score, general/loss, general/exact_match;
    `advance(n)` is told as each batch of n pairs is done."""
    import torch

    scores, token_logps, exact = [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            width = max(len(p) + len(c) for p, c in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            for i, (p, c) in enumerate(chunk):
                ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            # Right padding under a causal mask: no real token sees a pad, so no attention mask is needed.
            with autocast(device, precision):
                logits = model(input_ids=ids.to(device)).logits
            for i, (p, c) in enumerate(chunk):
                # logits at position t predict token t + 1: the scored tokens' predictors
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
                logp = torch.log_softmax(logits[i, positions.to(logits.device)].float(), dim=-1).cpu()
                target = torch.tensor(c)
                item_logp = logp[torch.arange(len(c)), target]
                scores.append(item_logp.mean().exp().item())
                token_logps.append(item_logp)
                exact.append(bool((logp.argmax(-1) == target).all()))
            if advance is not None:
                advance(len(chunk))
    model.train(was_training)
    return {
        GENERAL_SCORE: sum(scores) / len(scores),
        GENERAL_LOSS: -torch.cat(token_logps).mean().item(),
        GENERAL_EXACT_MATCH: sum(exact) / len(exact),
    }


def stamp(model_id: str) -> float | None:
    """A local model folder's newest weights mtime (it may be rewritten in place); None for a hub id."""
    path = Path(model_id)
    if not path.is_dir():
        return None
    return max((f.stat().st_mtime for f in path.iterdir() if f.suffix in {".safetensors", ".bin"}), default=None)
