"""Checkpoint files as data, never code: every file is unpickled with `weights_only=True`
(tensors, plain containers, and the few DeepSpeed classes of DEEPSPEED_TYPES), DeepSpeed's own
files included (train/engine.py gives the engine our loader), and the pickles are scanned before
training starts, so a file that would call anything else is refused, named, and never run.
Files are written fsynced, so a checkpoint renamed into place is on disk."""

from __future__ import annotations

import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from sweep_sft.errors import ConfigError

# What DeepSpeed's ZeRO-1/2 optimizer states pickle besides tensors and plain containers (found
# by saving real checkpoints: fp32 and bf16, stages 0-2, with and without optimizer offload):
# plain data holders, rebuilt from their fields. Nothing else is unpickled from a checkpoint.
DEEPSPEED_TYPES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def check_pickles(path: Path) -> None:
    """Every torch.save file of the checkpoint names only globals `load_file` allows (its pickle
    is read as opcodes, not run). torch and DeepSpeed write zip archives; a file in torch's
    legacy format cannot be scanned, and a loader outside ours (DeepSpeed's universal checkpoint
    reads its own files with weights_only=False) would run it, so it is refused here."""
    import torch

    for file in sorted(path.rglob("*.pt")):
        if not zipfile.is_zipfile(file):
            raise ConfigError(_refusal(file, "not a torch.save zip archive, so it cannot be checked before loading"))
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
        except Exception as exc:  # a damaged archive: torch's message says what is wrong
            raise ConfigError(f"trainer.resume: {file} is unreadable ({str(exc)[:300]})") from exc
        unsafe = [n for n in names if n not in DEEPSPEED_TYPES]
        if unsafe:
            raise ConfigError(_refusal(file, f"it would call {', '.join(unsafe[:3])}"))


def load_file(
    path: Path | str, map_location: Any = "cpu", allow: tuple[str, ...] = (), key: str = "trainer.resume"
) -> Any:
    """torch.load with weights_only=True, the DeepSpeed classes named in `allow` added: a file
    that would unpickle anything else is refused (a ConfigError naming it), never run."""
    import torch

    try:
        with torch.serialization.safe_globals([_class(name) for name in allow]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error: *\n*(.+)", str(exc))
        why = found.group(1).split(" was not an allowed")[0].strip() if found else str(exc).splitlines()[0]
        raise ConfigError(_refusal(path, f"weights_only unpickling stopped: {why}", key)) from None
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or not a torch.save file
        raise ConfigError(f"{key}: {path} is unreadable ({str(exc).splitlines()[0][:300]})") from exc


def _refusal(file: Path | str, why: str, key: str = "trainer.resume") -> str:
    kinds = ", ".join(n.rsplit(".", 1)[1] for n in DEEPSPEED_TYPES)
    text = f"{key}: {file} is refused ({why}): a checkpoint is loaded as tensors and plain data only"
    text += f" (and DeepSpeed's {kinds}), never run"
    if key == "trainer.resume":
        text += "; delete that checkpoint folder, or start afresh with trainer.resume=never or another output_dir"
    return text


def _class(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def write_file(path: Path, obj: Any) -> None:
    """torch.save into path, fsynced."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
