"""Running a grid sweep's command again in its sweep folder: the jobs that already finished
(COMPLETE or PRUNED, with the same overrides at the same job number) are carried over, never
redone; only the missing, failed and cut-off ones run, each under its own number (job i is
always the grid's i-th combination).

What finished is read from the folder: the previous sweep's sweep_summary.json, else (a sweep
killed before it wrote its summary) the job's own metrics.json, beside the overrides Hydra
recorded in the job folder (.hydra/overrides.yaml). Both are read as data (JSON, YAML)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep_sft.names import METRICS_FILE, MULTIRUN_FILE, SUMMARY_FILE
from sweep_sft.sweep.jobs import hydra_values

log = logging.getLogger(__name__)
DONE = ("COMPLETE", "PRUNED")
# (Hydra's job folder, the trial's output folder) of job `num` with `overrides`
Folders = Callable[[list[str], int], tuple[Path, Path]]


def done_entries(sweep_dir: str | Path, jobs: Sequence[Sequence[str]], folders: Folders) -> dict[int, dict[str, Any]]:
    """The summary entries of the jobs (job i: jobs[i]'s overrides) a previous sweep in this
    folder finished, by job number; {} for a fresh sweep folder."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / MULTIRUN_FILE).exists():
        return {}  # no sweep ran here before (the sweeper writes it before the first launch)
    summarized = _summary_entries(sweep_dir)
    done: dict[int, dict[str, Any]] = {}
    for num, overrides in enumerate(jobs):
        entry = summarized.get(num)
        if entry is not None and entry.get("overrides") == list(overrides):
            if entry.get("state") in DONE:
                done[num] = entry
            continue  # the summary's word (FAILED: redone) beats a metrics.json left beside it
        entry = _folder_entry(num, list(overrides), *folders(list(overrides), num))
        if entry is not None:
            done[num] = entry
    if done:
        log.info(f"resuming the sweep in {sweep_dir}: {len(done)} of {len(jobs)} jobs already finished, not redone")
    return done


def hydra_folders(config: DictConfig, config_loader) -> Folders:
    """Folders resolved as the launchers resolve them: the job's config composed with its
    overrides and number, `hydra.sweep.dir/hydra.sweep.subdir` and its own `output_dir`."""

    def folders(overrides: list[str], num: int) -> tuple[Path, Path]:
        job = config_loader.load_sweep_config(config, overrides)
        with open_dict(job.hydra.job):
            job.hydra.job.num = num
        with hydra_values(job):  # `${hydra:job.num}` in output_dir reads this job's number
            job_dir = Path(os.path.join(str(job.hydra.sweep.dir), str(job.hydra.sweep.subdir)))
            own = OmegaConf.select(job, "output_dir", default=None)
        return job_dir, Path(own) if own else job_dir

    return folders


def _summary_entries(sweep_dir: Path) -> dict[int, dict[str, Any]]:
    try:
        summary = json.loads((sweep_dir / SUMMARY_FILE).read_text())
        return {int(e["number"]): e for e in summary["jobs"] if isinstance(e, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # none yet (killed within its first batch), or unreadable: the job folders decide


def _folder_entry(num: int, overrides: list[str], job_dir: Path, output_dir: Path) -> dict[str, Any] | None:
    """The entry of a job whose folder holds its overrides and a finished trial's metrics.json."""
    try:
        recorded = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        record = json.loads((output_dir / METRICS_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    state = record.get("state", "COMPLETE") if isinstance(record, dict) else None
    if recorded != overrides or state not in DONE:
        return None
    value = record.get("value")
    value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    entry = {"number": num, "overrides": overrides, "state": state, "value": value, "error": None}
    if record.get("objective"):
        entry["objective"] = record["objective"]
    return entry
