"""The command line of `python -m sweep_sft`: --cfg job and --help print the config and every group
without heavy imports, and bad values exit non-zero naming the key, without a traceback."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import imported_modules, run_cli
from sweep_sft.config.compose import config_dir

CONF = Path(config_dir())
# Each group and its options as --help lists them: the Hydra-only groups (hydra/, sweeper/) aside.
HYDRA_ONLY = (CONF / "hydra", CONF / "sweeper")
OPTION_FILES = [
    p for p in CONF.rglob("*.yaml") if p != CONF / "config.yaml" and not any(d in p.parents for d in HYDRA_ONLY)
]


def own_cache(tmp_path: Path) -> dict[str, str]:
    """Run from an unrelated folder, with the cache kept in tmp_path."""
    return {"SWEEP_SFT_CACHE": str(tmp_path / "cache")}


def test_cli_cfg_job_prints_config(tmp_path: Path) -> None:
    proc = run_cli("--cfg", "job", cwd=tmp_path, env=own_cache(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^optimizer:$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^  name: adamw$", proc.stdout, re.M), proc.stdout


def test_cli_help_lists_every_group(tmp_path: Path) -> None:
    proc = run_cli("--help", cwd=tmp_path, env=own_cache(tmp_path))
    assert proc.returncode == 0, proc.stderr
    groups: dict[str, list[str]] = {}
    for path in OPTION_FILES:
        groups.setdefault(path.parent.relative_to(CONF).as_posix(), []).append(path.stem)
    for group, names in groups.items():
        assert f"{group}: {', '.join(sorted(names))}" in proc.stdout, proc.stdout


def test_cli_cfg_job_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    proc = run_cli("--cfg", "job", python_flags=("-X", "importtime"), cwd=tmp_path, env=own_cache(tmp_path))
    assert proc.returncode == 0, proc.stderr
    modules = imported_modules(proc.stderr)
    assert {"hydra", "omegaconf", "sweep_sft.config.schema"} <= modules, "importtime output not parsed"
    heavy = sorted(m for m in modules if m.split(".")[0] in {"torch", "transformers"})
    assert heavy == []


def test_cli_rejects_wrong_type(tmp_path: Path) -> None:
    proc = run_cli("trainer.batch_size=abc", cwd=tmp_path, env=own_cache(tmp_path))
    assert proc.returncode != 0
    assert "trainer.batch_size" in proc.stdout + proc.stderr


def test_cli_rejects_negative_lr_before_training(tmp_path: Path) -> None:
    proc = run_cli("lr=-1", "tracking.enabled=false", cwd=tmp_path, env=own_cache(tmp_path))
    assert proc.returncode != 0
    assert "optimizer.lr" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr  # a user error is one line, not a stack trace


def test_the_override_check_runs_inside_a_hydra_job(tmp_path):
    """python -m sweep_sft composes without compose(): validate() reads the job's overrides."""
    overrides = ["data.mix.task_ratio.reasoning=0.3", "data.mix.task_ratio.reasoning.add=0.2"]
    proc = run_cli(*overrides, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.mix.task_ratio.reasoning=0.3 and data.mix.task_ratio.reasoning.add=0.2" in proc.stderr
