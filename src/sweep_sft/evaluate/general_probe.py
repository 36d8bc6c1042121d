"""General-ability probe: how well a model still continues plain general text.

Scored teacher-forced, so it is smooth: `general/score` is the mean over probe items of the
geometric-mean probability of the right continuation tokens (1.0 = certain), beside its
token loss and the greedy exact match. `general_drop` is base score minus trained score.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep_sft.cache import build_once, source_hash
from sweep_sft.embedded import general
from sweep_sft.metrics import GENERAL_EXACT_MATCH, GENERAL_LOSS, GENERAL_SCORE

PROBE_SPEC = {"version": source_hash(general, sys.modules[__name__]), "n_items": 200, "seed": 99}


def probe_items() -> list[tuple[str, str]]:
    """The probe's (prompt, continuation) pairs."""
    return general.probe_items(PROBE_SPEC["n_items"], PROBE_SPEC["seed"])


def score(model, tokenizer, device, batch_size: int = 128) -> dict[str, float]:
    """The model's probe scores: general/score, general/loss, general/exact_match."""
    import torch

    items = probe_items()
    prompts = tokenizer([p for p, _ in items], add_special_tokens=False)["input_ids"]
    conts = tokenizer([c for _, c in items], add_special_tokens=False)["input_ids"]
    pairs = list(zip(prompts, conts, strict=True))
    scores, token_logps, exact = [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            width = max(len(p) + len(c) for p, c in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            for i, (p, c) in enumerate(chunk):
                ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            logp = torch.log_softmax(model(input_ids=ids.to(device)).logits.float(), dim=-1).cpu()
            for i, (p, c) in enumerate(chunk):
                # logits at position t predict token t + 1: the continuation's predictors
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
                target = torch.tensor(c)
                item_logp = logp[i, positions, target]
                scores.append(item_logp.mean().exp().item())
                token_logps.append(item_logp)
                exact.append(bool((logp[i, positions].argmax(-1) == target).all()))
    model.train(was_training)
    return {
        GENERAL_SCORE: sum(scores) / len(scores),
        GENERAL_LOSS: -torch.cat(token_logps).mean().item(),
        GENERAL_EXACT_MATCH: sum(exact) / len(exact),
    }


def base_scores(model_id: str, load_untrained: Callable[[], Any], tokenizer, device) -> dict[str, float]:
    """The model's probe scores before any SFT step, computed once per model and cached
    (`load_untrained` gives the base model, called only when the cache lacks them)."""
    spec: dict[str, Any] = {"probe": PROBE_SPEC, "model": model_id, "stamp": _stamp(model_id)}

    def build(folder: Path) -> None:
        (folder / "scores.json").write_text(json.dumps(score(load_untrained(), tokenizer, device)))

    return json.loads((build_once("probe", spec, build) / "scores.json").read_text())


def _stamp(model_id: str) -> float | None:
    # A local model folder may be rewritten in place: its weights' mtime keys the cache.
    path = Path(model_id)
    if not path.is_dir():
        return None
    return max((f.stat().st_mtime for f in path.iterdir() if f.suffix in {".safetensors", ".bin"}), default=None)
