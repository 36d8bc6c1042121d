"""The sweep summary (sweep_sft.sweep.summary) on JobReturns built as Hydra builds them: each
job's state, value and error, and whether more than max_failure_rate of the jobs failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from sweep_sft.sweep.summary import job_entry, summarize, table, too_many_failed

# -- the summary logic, on JobReturns built as Hydra builds them ------------------------------


def job(status: JobStatus, value, overrides: list[str], out: Path | None = None) -> JobReturn:
    ret = JobReturn(overrides=overrides, status=status, _return_value=value)
    if out is not None:
        ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})
        ret.cfg = OmegaConf.create({})
    return ret


def test_job_entries_carry_state_value_and_error(tmp_path):
    pruned_dir = tmp_path / "2"
    pruned_dir.mkdir()
    (pruned_dir / "metrics.json").write_text(json.dumps({"state": "PRUNED", "objective": "val/loss", "metrics": {}}))
    entries = [
        job_entry(0, job(JobStatus.COMPLETED, 0.5, ["lr=1"], tmp_path / "0")),
        job_entry(1, job(JobStatus.FAILED, RuntimeError("slurm job 7_1 ended CANCELLED"), ["lr=2"])),
        job_entry(2, job(JobStatus.COMPLETED, 0.7, ["lr=3"], pruned_dir)),
        job_entry(3, job(JobStatus.COMPLETED, float("nan"), ["lr=4"], tmp_path / "3")),
    ]
    assert [e["state"] for e in entries] == ["COMPLETE", "FAILED", "PRUNED", "FAILED"]
    assert entries[0]["value"] == 0.5 and entries[0]["overrides"] == ["lr=1"]
    assert entries[1]["value"] is None and entries[1]["error"] == "RuntimeError: slurm job 7_1 ended CANCELLED"
    assert entries[2]["objective"] == "val/loss"
    assert "non-finite" in entries[3]["error"]
    summary = summarize(entries, n_jobs=6, max_failure_rate=0.5)
    assert summary["states"] == {"COMPLETE": 1, "PRUNED": 1, "FAILED": 2}
    assert summary["launched"] == 4 and not summary["too_many_failed"]  # 2 of 6 is not more than half
    text = table(summary)
    assert "failed #1: RuntimeError: slurm job 7_1 ended CANCELLED" in text
    assert "failed #3: non-finite" in text and "failed #0" not in text
    assert "4 of 6 jobs: 1 complete, 1 pruned, 2 failed" in text


@pytest.mark.parametrize(
    ("failed", "n_jobs", "rate", "verdict"),
    [
        (0, 4, 0.0, False),
        (1, 4, 0.0, True),
        (2, 4, 0.5, False),
        (3, 4, 0.5, True),
        (4, 4, 1.0, False),
        (1, 3, 0.25, True),
    ],
)
def test_failure_rate_is_a_share_of_all_jobs(failed, n_jobs, rate, verdict):
    assert too_many_failed(failed, n_jobs, rate) is verdict


def test_the_table_wraps_long_overrides_between_them_never_inside_one():
    from sweep_sft.sweep.summary import table

    overrides = [f"data.mix.task_ratio.reasoning.key{i}=0.{i}" for i in range(5)]
    entries = [job_entry_like(0, overrides)]
    text = table(summarize(entries, n_jobs=1, max_failure_rate=0.5), width=60)
    body = " ".join(line.strip() for line in text.splitlines()[1:-1]).split()
    assert [o for o in overrides if o not in body] == []  # every override whole
    assert len(text.splitlines()) > 3  # wrapped onto more lines


def job_entry_like(num, overrides):
    return {"number": num, "state": "COMPLETE", "value": 0.5, "overrides": overrides, "error": None}
