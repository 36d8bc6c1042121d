"""A trained model evaluated after the fact, with the same code and data as its trial's final
evaluation: validation loss and answer log-probability, exact match, pass@k, train recall and
the general probe, per task_type (`python -m sweep_sft.evaluate`)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sweep_sft.config import Config, StudyLinkConfig, validate
from sweep_sft.eval_target import Target

RESULT_FILE = "evaluation.json"


def load_config(target: Target, overrides: list[str]) -> Config:
    """The trial's own config, with `key=value` overrides (eval.* usually) applied."""
    from omegaconf import OmegaConf

    from sweep_sft.errors import ConfigError

    try:
        extra = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(f"overrides {overrides}: expected key=value pairs ({exc})") from exc
    merged = OmegaConf.merge(_schema(), OmegaConf.load(target.config_file), extra)
    # Pruning links and checkpointing belong to training; evaluation reports to no study.
    return replace(validate(merged), study=StudyLinkConfig())


def _schema():
    """The typed config with its mappings empty: merging would otherwise add the trial's data
    sources to the default's (the embedded one) instead of standing for them."""
    from omegaconf import DictConfig, OmegaConf

    def empty_mappings(node: DictConfig) -> None:
        for key in list(node.keys()):
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none():
                if OmegaConf.get_type(child) is dict:
                    node[key] = {}
                else:
                    empty_mappings(child)

    schema = OmegaConf.structured(Config)
    empty_mappings(schema)
    return schema


def load_trained(config: Config, target: Target, device):
    """Tokenizer and model: a saved model folder as is, or a checkpoint's weights over the base model."""
    import torch

    from sweep_sft import modeling

    if target.model_dir is not None:
        model_cfg = replace(config.model, name_or_path=str(target.model_dir), chat_template_path=None)
        tokenizer = modeling.load_tokenizer(model_cfg, str(target.model_dir))
        return tokenizer, modeling.load_model(model_cfg, str(target.model_dir), tokenizer, device)
    base = modeling.resolve_model_path(config.model)
    tokenizer = modeling.load_tokenizer(config.model, base)
    model = modeling.load_model(config.model, base, tokenizer, device)
    model.load_state_dict(torch.load(target.checkpoint / "model.pt", map_location="cpu", weights_only=True))
    return tokenizer, model


def evaluate(target: Target, config: Config) -> dict[str, Any]:
    """Every final metric of the trial, recomputed for the target's weights."""
    import torch

    from sweep_sft import general_probe, modeling
    from sweep_sft.data.pipeline import prepare
    from sweep_sft.evaluate import final_evaluation, validation_loss
    from sweep_sft.trial import torch_device

    started = time.perf_counter()
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    device = torch_device(config.trainer.device)
    tokenizer, model = load_trained(config, target, device)
    eot_id = tokenizer.convert_tokens_to_ids(modeling.end_of_turn(config.model, tokenizer))
    data = prepare(config, tokenizer, eot_id)
    metrics = validation_loss(
        model,
        data.val_rows,
        data.tasks,
        device,
        config.eval.batch_size,
        tokenizer.pad_token_id,
        config.trainer.precision,
    )
    base = None
    if config.eval.general_probe:
        base_path = modeling.resolve_model_path(config.model)
        base = general_probe.base_scores(
            base_path, lambda: modeling.load_model(config.model, base_path, tokenizer, device), tokenizer, device
        )
    final, samples = final_evaluation(
        model, tokenizer, data.val_examples, data.train_rows, config, device, eot_id, base
    )
    metrics.update(final)
    metrics["time/eval_s"] = time.perf_counter() - started
    return {"tasks": data.tasks, "metrics": metrics, "samples": samples}


def write(result: dict[str, Any], target: Target, ref: str, overrides: list[str], out: Path | None) -> Path:
    path = out or target.trial_dir / RESULT_FILE
    weights = target.model_dir or target.checkpoint
    record = {"target": ref, "weights": str(weights), "overrides": overrides, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path
