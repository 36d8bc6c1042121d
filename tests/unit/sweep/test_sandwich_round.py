"""A sandwich round cut off mid-way (the sweep process died): the resumed sweep keeps the jobs of
that round that had ended and runs only the others, under the same job numbers."""

from __future__ import annotations

import json

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.sweep_sft_sandwich.sandwich_sweeper import ROUND_FILE, SandwichSweeper

CONSTRAINT = {"metric": "general_drop", "op": "<=", "threshold": 0.02, "rule": "all"}


class Launcher:
    """Job n ends at poll n + 1; raises KeyboardInterrupt (the sweep killed) once `die_after` ended."""

    poll_s = 0.0

    def __init__(self, tmp_path, die_after=None):
        self.tmp_path, self.die_after, self.submitted, self.polls, self.ended = tmp_path, die_after, [], 0, 0
        self.stopped = False

    def submit(self, overrides, num):
        self.submitted.append(num)

    def poll(self):
        self.polls += 1
        if self.die_after is not None and self.ended >= self.die_after:
            raise KeyboardInterrupt
        ready = [n for n in self.submitted if n < self.polls and n not in getattr(self, "_done", set())]
        self._done = getattr(self, "_done", set()) | set(ready)
        self.ended += len(ready)
        return [(n, self._result(n)) for n in ready]

    def stop(self, error):
        self.stopped = True

    def _result(self, num):
        out = self.tmp_path / str(num)
        out.mkdir(exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"metrics": {"general_drop": 0.0}, "state": "COMPLETE"}))
        ret = JobReturn()
        ret.status = JobStatus.COMPLETED
        ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})
        ret.cfg = OmegaConf.create({})
        ret._return_value = 0.0
        return ret


def sweeper(launcher):
    s = SandwichSweeper("lr", 1e-5, 1e-2, "log", 1.5, 3, 1, CONSTRAINT)
    s.launcher = launcher
    s.validate_batch_is_legal = lambda batch: None
    return s


def test_a_cut_off_round_reruns_only_its_unfinished_jobs(tmp_path):
    batch = [["lr=1e-4"], ["lr=1e-3"], ["lr=3e-3"]]
    with pytest.raises(KeyboardInterrupt):
        sweeper(Launcher(tmp_path, die_after=2))._run_round(tmp_path, 0, batch, 10)
    saved = json.loads((tmp_path / ROUND_FILE).read_text())
    assert sorted(saved["results"]) == ["10", "11"]

    again = Launcher(tmp_path)
    metrics, _ = sweeper(again)._run_round(tmp_path, 0, batch, 10)
    assert again.submitted == [12]
    assert metrics == [{"general_drop": 0.0}] * 3


def test_a_round_file_of_another_round_is_not_used(tmp_path):
    batch = [["lr=1e-4"], ["lr=1e-3"], ["lr=3e-3"]]
    with pytest.raises(KeyboardInterrupt):
        sweeper(Launcher(tmp_path, die_after=2))._run_round(tmp_path, 0, batch, 10)
    again = Launcher(tmp_path)
    sweeper(again)._run_round(tmp_path, 1, [["lr=2e-4"], ["lr=5e-4"], ["lr=7e-4"]], 13)
    assert again.submitted == [13, 14, 15]
