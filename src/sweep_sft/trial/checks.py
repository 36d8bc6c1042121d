"""What a trial checks before it reads its data or imports torch: its output folder, its model's
files, and whether its checkpoints can be written at all."""

from __future__ import annotations

import sys
from pathlib import Path

from sweep_sft.config.schema import Config
from sweep_sft.diagnostics.divergence import toy_defaults_warning
from sweep_sft.errors import ConfigError
from sweep_sft.modeling import check_model


def check_early(config: Config, out: Path) -> None:
    """What can be checked before the data is read and torch imported: the output folder
    (created here) and the model's files; a warning when a real model starts from the toy's values."""
    make_output_dir(out)
    check_model(config.model)
    tc = config.trainer
    warning = toy_defaults_warning(
        config.model.name_or_path, tc.defaults_for, config.optimizer.lr, tc.epochs, tc.batch_size
    )
    if warning:
        print(warning, file=sys.stderr)


def make_output_dir(out: Path) -> None:
    """The trial's output folder, made if missing; a file in its place or an unwritable parent named."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out}: is a file; expected a folder for the trial's outputs (made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file as a parent folder, no permission, a read-only disk
        raise ConfigError(f"output_dir={out}: cannot create the folder: {exc.strerror or exc}") from exc


def checkpointable(config: Config) -> bool:
    """Checkpoints cover trials without DeepSpeed (one rank or several) and DeepSpeed ZeRO
    stages 0-2; asking for them (or for a resume) with ZeRO-3 is an error."""
    if config.deepspeed is None or config.deepspeed.zero_stage < 3:
        return True
    asked = {"trainer.checkpoint_every": config.trainer.checkpoint_every}
    if config.trainer.resume not in ("auto", "never"):
        asked["trainer.resume"] = config.trainer.resume
    if config.trainer.checkpoint_every or len(asked) > 1:
        key, value = next((k, v) for k, v in reversed(asked.items()) if v)
        raise ConfigError(
            f"{key}={value}: checkpoints are not written or read for DeepSpeed ZeRO-3 trials "
            f"(deepspeed.zero_stage={config.deepspeed.zero_stage}); set trainer.checkpoint_every=0 and "
            "trainer.resume=auto, or use deepspeed.zero_stage<=2"
        )
    return False
