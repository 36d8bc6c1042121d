"""sweep_sft.sweep.resume: which jobs of a grid a previous sweep in the folder finished (the rest is launched
under its own job numbers: tests/unit/sweep/test_dispatch.py)."""

from __future__ import annotations

import json

from sweep_sft.sweep.resume import done_entries
from sweep_sft.sweep.study import resumed_sampler


def _job(sweep_dir, num, overrides, record):
    folder = sweep_dir / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if record is not None:
        (folder / "metrics.json").write_text(json.dumps(record))


def test_finished_jobs_are_read_from_the_summary_else_from_their_folders(tmp_path):
    jobs = [["a=0"], ["a=1"], ["a=2"], ["a=3"], ["a=4"]]
    folders = lambda overrides, num: (tmp_path / str(num), tmp_path / str(num))  # noqa: E731
    assert done_entries(tmp_path, jobs, folders) == {}  # no sweep ran here
    (tmp_path / "multirun.yaml").write_text("{}")
    summary = [
        {"number": 0, "overrides": ["a=0"], "state": "COMPLETE", "value": 1.0, "error": None},
        {"number": 1, "overrides": ["a=1"], "state": "FAILED", "value": None, "error": "x"},
        {"number": 2, "overrides": ["a=other"], "state": "COMPLETE", "value": 2.0, "error": None},
    ]
    (tmp_path / "sweep_summary.json").write_text(json.dumps({"jobs": summary}))
    _job(tmp_path, 1, ["a=1"], {"state": "COMPLETE"})  # the summary's FAILED wins: redone
    _job(tmp_path, 3, ["a=3"], {"state": "PRUNED", "value": 0.5, "objective": "val/loss"})
    _job(tmp_path, 4, ["a=4"], None)  # cut off: no metrics.json
    done = done_entries(tmp_path, jobs, folders)
    assert sorted(done) == [0, 3]
    assert done[3] == {
        "number": 3,
        "overrides": ["a=3"],
        "state": "PRUNED",
        "value": 0.5,
        "error": None,
        "objective": "val/loss",
    }


def test_a_continued_study_gets_a_derived_seed_and_a_fresh_one_its_own():
    spec = {"_target_": "optuna.samplers.TPESampler", "seed": 0}
    assert resumed_sampler(spec, 0) == spec
    seeds = {resumed_sampler(spec, n)["seed"] for n in (1, 2, 3)}
    assert len(seeds) == 3 and resumed_sampler(spec, 2) == resumed_sampler(spec, 2)
    assert resumed_sampler({**spec, "seed": None}, 4)["seed"] is None


def test_a_recorded_job_id_that_is_not_an_id_is_never_passed_to_scancel(tmp_path, monkeypatch):
    from sweep_sft.names import INFLIGHT_FILE
    from sweep_sft.sweep import inflight

    calls = []
    monkeypatch.setattr(inflight.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    record = {"jobs": {"--me": {"executor": "slurm", "num": 0, "folder": "x"}}}
    (tmp_path / INFLIGHT_FILE).write_text(json.dumps(record))
    assert inflight.stop_left(tmp_path) == {}
    assert calls == []


def test_a_live_controller_of_the_folder_is_refused_whatever_its_command_line(tmp_path):
    import subprocess

    import pytest

    from sweep_sft.errors import UserInputError
    from sweep_sft.names import INFLIGHT_FILE
    from sweep_sft.sweep import inflight

    other = subprocess.Popen(["sleep", "30"])
    try:
        controller = {"pid": other.pid, "host": inflight.socket.gethostname(), "argv": ["x", "n_trials=4"]}
        controller["started"] = inflight._start_time(other.pid)
        (tmp_path / INFLIGHT_FILE).write_text(json.dumps({"controller": controller, "jobs": {}}))
        with pytest.raises(UserInputError, match="still running in this folder"):
            inflight.stop_left(tmp_path)
        controller["started"] = "1"  # the pid reused by another process: not the controller
        (tmp_path / INFLIGHT_FILE).write_text(json.dumps({"controller": controller, "jobs": {}}))
        assert inflight.stop_left(tmp_path) == {}
    finally:
        other.kill()
