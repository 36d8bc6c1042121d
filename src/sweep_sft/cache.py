"""A build-once folder cache, safe when several trials start at the same moment.

Each entry is a folder named by what built it and a hash of its spec; it is built in a
temporary folder under a file lock and renamed into place, so a reader never sees half
of one and a sweep of parallel trials builds it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The cache folder ($SWEEP_SFT_CACHE, else ~/.cache/sweep_sft)."""
    root = os.environ.get("SWEEP_SFT_CACHE") or Path.home() / ".cache" / "sweep_sft"
    return Path(root)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def source_hash(*modules: Any) -> str:
    """A hash of the modules' source: put in a spec, editing the generating code rebuilds."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def build_once(name: str, spec: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return the folder for (name, spec), calling build(tmp_folder) the first time."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-{spec_hash(spec)}"
    if (target / ".complete").exists():
        return target
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():  # another process built it while we waited
            return target

        def build_entry(tmp: Path) -> None:
            build(tmp)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
            (tmp / ".complete").touch()

        write_folder(target, build_entry)
    return target


def write_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """`target` written by build(tmp_folder) beside it, then renamed into place (replacing what
    was there): a reader sees the old folder or the whole new one, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
