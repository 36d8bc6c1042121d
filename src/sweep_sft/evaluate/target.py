"""What `python -m sweep_sft.evaluate` evaluates: a trial folder, its saved model, one of its
checkpoints, or an MLflow run id, resolved to the trial's config and the weights to load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sweep_sft.cache import build_once
from sweep_sft.errors import UserInputError
from sweep_sft.lora import ADAPTER_CONFIG
from sweep_sft.names import CHECKPOINT_WEIGHTS, CONFIG_FILE, MODEL_DIR, OUTPUT_DIR_TAG
from sweep_sft.tracking.client import find_run
from sweep_sft.train.checkpoint import problem, step_of, valid_checkpoints


@dataclass
class Target:
    """What to evaluate: the trial's config, the weights (a model folder or a checkpoint), and the trial's folder."""

    # The trial's resolved config (written at its start).
    config_file: Path
    # A saved model folder (from_pretrained), or None when `checkpoint` holds the weights.
    model_dir: Path | None
    # One of our checkpoints (model.pt over the base model named in the config).
    checkpoint: Path | None
    # Where the evaluation's results go by default.
    trial_dir: Path


def resolve(ref: str, tracking_uri: str | None = None) -> Target:
    """The target a command-line reference names: a folder here, else an MLflow run id."""
    path = Path(ref).expanduser()
    if path.exists():
        return _from_path(path)
    return _from_run(ref, tracking_uri)


def _from_path(path: Path) -> Target:
    if not path.is_dir():
        raise UserInputError(f"{path}: expected a trial folder, its model folder, a checkpoint folder or a run id")
    if step_of(path) is not None:  # <trial>/checkpoints/step-N
        why = problem(path)
        if why is not None:
            raise UserInputError(f"{path}: not a complete checkpoint: {why}")
        if not (path / CHECKPOINT_WEIGHTS).is_file():
            raise UserInputError(f"{path}: a DeepSpeed checkpoint; evaluate the trial's saved model folder instead")
        return Target(_config_of(path.parent.parent, path), None, path, path.parent.parent)
    if _is_model(path) and not (path / CONFIG_FILE).is_file():  # <trial>/model
        return Target(_config_of(path.parent, path), path, None, path.parent)
    if (path / CONFIG_FILE).is_file():
        if _is_model(path / MODEL_DIR):
            return Target(path / CONFIG_FILE, path / MODEL_DIR, None, path)
        found = [c for c in valid_checkpoints(path, warn=False) if (c / CHECKPOINT_WEIGHTS).is_file()]
        if found:
            return Target(path / CONFIG_FILE, None, found[-1], path)
        raise UserInputError(f"{path}: no model to evaluate: {_why_no_model(path / CONFIG_FILE)}")
    raise UserInputError(f"{path}: no {CONFIG_FILE} here: expected a trial output folder, or its model or checkpoint")


def _is_model(folder: Path) -> bool:
    """A saved model (config.json) or a LoRA adapter (adapter_config.json) folder."""
    return (folder / "config.json").is_file() or (folder / ADAPTER_CONFIG).is_file()


def _why_no_model(config_file: Path) -> str:
    from omegaconf import OmegaConf

    config = OmegaConf.load(config_file)
    if OmegaConf.select(config, "deepspeed.zero_stage") == 3:
        return "the trial ran under DeepSpeed ZeRO-3, whose partitioned weights are neither saved nor checkpointed"
    if OmegaConf.select(config, "trainer.save_model") is False:
        return "the trial ran with trainer.save_model=false and left no checkpoint"
    return f"the trial saved no {MODEL_DIR}/ (it failed, was pruned, or is still running) and left no checkpoint"


def _config_of(trial: Path, asked: Path) -> Path:
    if not (trial / CONFIG_FILE).is_file():
        raise UserInputError(f"{asked}: its trial's {trial / CONFIG_FILE} is missing (data, eval settings)")
    return trial / CONFIG_FILE


def _from_run(run_id: str, tracking_uri: str | None) -> Target:
    """The run's trial folder when it is reachable here; else its logged model (tracking.log_model)."""
    client, run = find_run(run_id, tracking_uri, "a folder")
    folder = run.data.tags.get(OUTPUT_DIR_TAG)
    if folder and Path(folder).is_dir():
        try:
            return _from_path(Path(folder))
        except UserInputError:
            pass  # the folder is here but lacks the model: the run may have logged it
    if not client.list_artifacts(run_id, MODEL_DIR):
        raise UserInputError(
            f"run {run_id}: its trial folder {folder} is not reachable here (or holds no model) and the run logged no "
            f"{MODEL_DIR} artifact (set tracking.log_model=true when training)"
        )

    def download(folder: Path) -> None:
        client.download_artifacts(run_id, MODEL_DIR, str(folder))
        client.download_artifacts(run_id, CONFIG_FILE, str(folder))

    # A finished run's artifacts do not change: downloaded once, kept in the cache.
    local = build_once("run-model", {"run_id": run_id, "tracking_uri": client.tracking_uri}, download)
    return Target(local / CONFIG_FILE, local / MODEL_DIR, None, Path.cwd())
