"""General-ability probe: how well a model still continues plain general text.

Scored teacher-forced, so it is smooth: `general/score` is the mean over probe items of the
geometric-mean probability of the right continuation tokens (1.0 = certain), beside its
token loss and the greedy exact match. `general_drop` is base score minus trained score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sweep_sft.cache import build_once
from sweep_sft.embedded import general

PROBE_SPEC = {"version": 1, "n_items": 200, "seed": 99}


def probe_items() -> list[tuple[str, str]]:
    return general.probe_items(PROBE_SPEC["n_items"], PROBE_SPEC["seed"])


def score(model, tokenizer, device, batch_size: int = 128) -> dict[str, float]:
    import torch

    items = probe_items()
    prompts = tokenizer([p for p, _ in items], add_special_tokens=False)["input_ids"]
    conts = tokenizer([c for _, c in items], add_special_tokens=False)["input_ids"]
    item_logp, item_len, item_exact = [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            rows = [p + c for p, c in zip(prompts[start : start + batch_size], conts[start : start + batch_size])]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
            logp = torch.log_softmax(model(input_ids=ids.to(device)).logits.float(), dim=-1).cpu()
            for i, (p, c) in enumerate(zip(prompts[start : start + batch_size], conts[start : start + batch_size])):
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
                target = torch.tensor(c)
                token_logp = logp[i, positions, target]
                item_logp.append(token_logp.sum().item())
                item_len.append(len(c))
                item_exact.append(bool((logp[i, positions].argmax(-1) == target).all()))
    model.train(was_training)
    n = len(items)
    return {
        "general/score": sum(torch.tensor(lp / ln).exp().item() for lp, ln in zip(item_logp, item_len)) / n,
        "general/loss": -sum(item_logp) / sum(item_len),
        "general/exact_match": sum(item_exact) / n,
    }


def base_scores(model_id: str, untrained_model, tokenizer, device) -> dict[str, float]:
    """The model's probe scores before any SFT step, computed once per model and cached."""
    spec: dict[str, Any] = {"probe": PROBE_SPEC, "model": model_id, "stamp": _stamp(model_id)}

    def build(folder: Path) -> None:
        (folder / "scores.json").write_text(json.dumps(score(untrained_model, tokenizer, device)))

    return json.loads((build_once("probe", spec, build) / "scores.json").read_text())


def _stamp(model_id: str) -> float | None:
    # A local model folder may be rewritten in place: its weights' mtime keys the cache.
    path = Path(model_id)
    if not path.is_dir():
        return None
    return max((f.stat().st_mtime for f in path.iterdir() if f.suffix in {".safetensors", ".bin"}), default=None)
