"""A trained model evaluated after the fact, with the same code and data as its trial's final
evaluation: validation loss and answer log-probability, exact match, pass@k, train recall and
the general probe, per task_type (`python -m sweep_sft.evaluate`).

The trial's config.yaml (from its folder or its MLflow run) says what to measure, never what may
run: a model's own Python (`model.trust_remote_code`) or a kernel from the hub
(`model.attn_implementation=<org>/<repo>`) runs only when this command's line asks for it."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep_sft import lora, modeling
from sweep_sft.config.general import EMBEDDED
from sweep_sft.config.schema import Config, StudyLinkConfig
from sweep_sft.config.scorers import is_function_spec, scorer_names
from sweep_sft.config.validate import validate
from sweep_sft.data.pipeline import prepare
from sweep_sft.errors import ConfigError, DataError
from sweep_sft.evaluate import general_probe, general_set
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.final import final_evaluation, final_validation_loss
from sweep_sft.evaluate.progress import BAR, LINES
from sweep_sft.evaluate.target import Target
from sweep_sft.metrics import EVAL_TIME
from sweep_sft.names import CHECKPOINT_WEIGHTS, GENERAL_SOURCE_FIELD, PRECISION_FIELD, SCORERS_FIELD
from sweep_sft.train.checkpoint_files import load_file

RESULT_FILE = "evaluation.json"


# Settings that make from_pretrained run code: taken from this command's line, not the trial's config.
TRUST_KEY = "model.trust_remote_code"
ATTN_KEY = "model.attn_implementation"
SCORERS_KEY = "eval.scorers"  # a module:function scorer is code too
GENERAL_KEY = "eval.general"  # absent from configs saved before it existed (_before_general)


def load_config(target: Target, overrides: list[str]) -> Config:
    """The trial's own config, with `key=value` overrides (eval.* usually) applied."""
    try:
        extra = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(f"overrides {overrides}: expected key=value pairs ({exc})") from exc
    saved = OmegaConf.load(target.config_file)
    _before_general(saved, extra, target)
    trial = _merged(_schema(), saved, f"{target.config_file}: ")
    _untrusted(trial, extra, target)
    merged = _merged(trial, extra, "override ")
    # Pruning links and checkpointing belong to training; evaluation reports to no study.
    return replace(validate(merged), study=StudyLinkConfig())


def _before_general(saved, extra, target: Target) -> None:
    """A config saved before `eval.general` existed: its trial's probe was the embedded one
    (eval.general.source's default `auto` would pick base_answers for a model=local trial), so it
    is evaluated on that, unless this command's line names another source."""
    if OmegaConf.select(saved, GENERAL_KEY) is not None or OmegaConf.select(extra, f"{GENERAL_KEY}.source") is not None:
        return
    OmegaConf.update(saved, f"{GENERAL_KEY}.source", EMBEDDED, force_add=True)
    if OmegaConf.select(saved, "eval.general_probe") is not False:
        print(
            f"note: {target.config_file} has no {GENERAL_KEY} (saved before it existed): its general probe is "
            f"evaluated on the embedded set that trial used ({GENERAL_KEY}.source=... chooses another)",
            file=sys.stderr,
        )


def _merged(base, more, where: str):
    """`more` merged into `base`; a key the schema lacks or a wrong type named with its full key."""
    try:
        return OmegaConf.merge(base, more)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        what = str(exc).splitlines()[0]
        if "not in" in what:
            what = f"unknown key ({what}); the keys are those of `python -m sweep_sft --cfg job`"
        raise ConfigError(f"{where}{key}: {what}") from None


def _untrusted(trial, extra, target: Target) -> None:
    """Reset what only the person running this command may allow: the trial's config could come
    from anyone who can write a folder or log a run."""
    if OmegaConf.select(extra, TRUST_KEY) is None:
        if OmegaConf.select(trial, TRUST_KEY):
            print(
                f"note: {target.config_file} says {TRUST_KEY}=true; the model's own code runs only when this "
                f"command says so ({TRUST_KEY}=true)",
                file=sys.stderr,
            )
        OmegaConf.update(trial, TRUST_KEY, False)
    attn = OmegaConf.select(trial, ATTN_KEY)
    if OmegaConf.select(extra, ATTN_KEY) is None and "/" in str(attn):
        raise ConfigError(
            f"{target.config_file}: {ATTN_KEY}={attn} names a kernel on the hub (code from_pretrained downloads and "
            f"runs): give {ATTN_KEY} on this command line (sdpa, eager, or {attn} if you trust it)"
        )
    given = OmegaConf.select(extra, SCORERS_KEY) or {}
    for pattern, spec in (OmegaConf.select(trial, SCORERS_KEY) or {}).items():
        if is_function_spec(str(spec)) and pattern not in given:
            raise ConfigError(
                f"{target.config_file}: {SCORERS_KEY}.{pattern}={spec} names a function to import and run: give it "
                f"on this command line ({SCORERS_KEY}.{pattern}={spec} if you trust it, or another scorer)"
            )


def _schema():
    """The typed config with its mappings empty: merging would otherwise add the trial's data
    sources to the default's (the embedded one) instead of standing for them."""

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
    """Tokenizer and model: a saved model folder as is (a LoRA adapter folder over the trial's base
    model), or a checkpoint's weights over the base model (with fresh adapters when the trial had
    LoRA, which the checkpoint's adapter weights fill)."""
    if target.model_dir is not None:
        model_cfg = replace(lora.without(config.model), name_or_path=str(target.model_dir), chat_template_path=None)
        if lora.is_adapter_dir(target.model_dir):
            return _adapter(config, model_cfg, target.model_dir, device)
        return _pretrained(model_cfg, str(target.model_dir), device)
    tokenizer, model = _pretrained(config.model, modeling.resolve_model_path(config.model), device)
    lora.load_weights(model, load_file(target.checkpoint / CHECKPOINT_WEIGHTS, key="checkpoint"), key="checkpoint")
    return tokenizer, model


def _adapter(config: Config, model_cfg, folder: Path, device):
    """The trained tokenizer beside the adapter, the base model named by the trial's config
    (model.name_or_path, not the adapter file's base_model_name_or_path), the adapter over it."""
    check_safetensors(folder)
    tokenizer = modeling.load_tokenizer(model_cfg, str(folder))
    base_cfg = lora.without(config.model)
    try:
        _, base = _pretrained(base_cfg, modeling.resolve_model_path(base_cfg), device, tokenizer)
    except OSError as exc:  # a run trained elsewhere names a base this machine lacks
        raise ConfigError(
            f"model.name_or_path={base_cfg.name_or_path}: the base model of the adapter in {folder} cannot be "
            f"loaded here ({exc}); give a local copy of it on this command line (model.name_or_path=<folder>)"
        ) from None
    return tokenizer, lora.load_adapter(base, folder).to(device)


def _pretrained(model_cfg, path: str, device, tokenizer=None):
    """from_pretrained of a tokenizer and model, after checking its weight files are whole; a
    model that needs its own code and was not trusted on this command line is named."""
    check_safetensors(Path(path))
    try:
        return modeling.load(model_cfg, device, path, tokenizer)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc) or model_cfg.trust_remote_code:
            raise
        raise ConfigError(
            f"{path}: the model needs its own Python code to load (auto_map in its config): it runs only when "
            f"you ask for it on this command line ({TRUST_KEY}=true), if you trust {path}"
        ) from None


def check_safetensors(folder: Path) -> None:
    """Each *.safetensors file of a local model folder opens (its header covers the whole file):
    a truncated copy is named here rather than deep inside from_pretrained."""
    if not folder.is_dir():
        return
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise DataError(
                f"{file}: not a complete safetensors file ({exc}); the file is truncated or damaged: copy it again"
            ) from None


def evaluate(target: Target, config: Config) -> dict[str, Any]:
    """Every final metric of the trial, recomputed for the target's weights."""
    import torch

    started = time.perf_counter()
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    if config.eval.general_probe:  # a bad general set is named before a model loads
        general_set.check_source(config.eval.general)
    device = modeling.torch_device(config.trainer.device)
    tokenizer, model = load_trained(config, target, device)
    evaluator = Evaluator.for_trial(model, tokenizer, device, config)
    data = prepare(config, tokenizer, evaluator.end_of_turn_id)
    show = BAR if config.trainer.progress else LINES
    metrics = final_validation_loss(evaluator, data.val_rows, data.tasks, show)
    base = None
    if config.eval.general_probe:  # the trial's general set, with the base model's scores on it (cached)
        evaluator.general = _probe_base(config, evaluator, model, tokenizer, device)
        base = evaluator.general.base
    final, samples = final_evaluation(evaluator, data.val_examples, data.train_rows, base, show)
    metrics.update(final)
    metrics[EVAL_TIME] = time.perf_counter() - started
    result = {"tasks": data.tasks, "metrics": metrics, "samples": samples}
    result[SCORERS_FIELD] = scorer_names(config.eval.scorers, data.tasks)  # what compare reads back
    result[PRECISION_FIELD] = evaluator.precision  # trainer.precision=auto differs between CPU and GPU
    if evaluator.general is not None:
        result[GENERAL_SOURCE_FIELD] = evaluator.general.source
    return result


def _probe_base(config: Config, evaluator: Evaluator, model, tokenizer, device):
    """The general set with the base model's scores: a LoRA model's own base (its adapters off,
    no second copy loaded), else the base loaded when the cache lacks its scores. The base loads
    unquantized here, so a QLoRA trial's is keyed as such."""
    plain = replace(config, model=lora.without(config.model))
    base_path = modeling.resolve_model_path(config.model)
    if lora.is_peft(model):
        with lora.disabled(model):
            return general_probe.probe_base(plain, evaluator, lambda: model, base_path)
    return general_probe.probe_base(
        plain, evaluator, lambda: modeling.load(plain.model, device, base_path, tokenizer)[1], base_path
    )


def write(result: dict[str, Any], target: Target, ref: str, overrides: list[str], out: Path | None) -> Path:
    """The evaluation's record (what was evaluated, with which overrides, and its results), as JSON."""
    path = out or target.trial_dir / RESULT_FILE
    weights = target.model_dir or target.checkpoint
    record = {"target": ref, "weights": str(weights), "overrides": overrides, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path
