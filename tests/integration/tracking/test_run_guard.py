"""A process killed outright (SIGKILL: nothing in it runs) leaves none of its MLflow runs RUNNING:
its guardian (sweep_sft.tracking.run_guard) ends them KILLED, with an end time and the error, and leaves
alone the runs the process ended itself or another attempt took over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import start_cli, wait_for
from sweep_sft.names import ERROR_TAG, RESUMES_TAG, RUN_FILE

# A trial that trains far longer than the test waits: killed while it trains.
LONG = [
    "data.max_train_examples=32",
    "data.max_val_per_task=2",
    "trainer.epochs=100000",
    "trainer.max_steps=1000000",
    "trainer.batch_size=4",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.num_threads=1",
    "trainer.progress=false",
]
WAIT_S = 240  # for the trial to start training on a loaded 2-core machine
ENDED_S = 120  # for the guardian to end the runs once the process is dead


def _training_run(client, run_file: Path):
    """The trial's run once it is RUNNING and has delivered a train/loss point."""
    if not run_file.exists():
        return None
    run = client.get_run(json.loads(run_file.read_text())["run_id"])
    return run if run.info.status == "RUNNING" and "train/loss" in run.data.metrics else None


def _assert_ended_by_guardian(client, run_ids: list[str], tmp_path: Path) -> None:
    def ended():
        runs = [client.get_run(r) for r in run_ids]
        return runs if all(r.info.status != "RUNNING" for r in runs) else None

    for run in wait_for(f"runs {run_ids} ended", ended, ENDED_S, log=tmp_path / "log.txt", interval=0.5):
        assert run.info.status == "KILLED", run.info
        assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
        assert "died without ending it" in run.data.tags[ERROR_TAG], run.data.tags


@pytest.mark.slow
def test_a_killed_sweep_controller_leaves_no_run_running(tmp_path):
    """Basic launcher: the trial runs inside the controller, so SIGKILL takes both the sweep's
    parent run and the training trial's child run down."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "sweep"
    log = tmp_path / "log.txt"
    args = ["-m", "lr=1e-3,1e-2", *LONG, f"tracking.uri={uri}", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(*args, cwd=tmp_path, log=log)
    # The store exists once the child run does (opening it earlier would race the sweep creating it).
    wait_for("the child run", lambda: (sweep / "0" / RUN_FILE).exists(), WAIT_S, proc, log, interval=0.5)
    client = MlflowClient(tracking_uri=uri)
    child = wait_for("training", lambda: _training_run(client, sweep / "0" / RUN_FILE), WAIT_S, proc, log, interval=0.5)
    parent_id = json.loads((sweep / "mlflow_parent_run.json").read_text())["run_id"]
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).info.status == "RUNNING"

    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _assert_ended_by_guardian(client, [parent_id, child.info.run_id], tmp_path)


@pytest.mark.slow
def test_a_killed_single_trial_leaves_no_run_running(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = tmp_path / "trial"
    log = tmp_path / "log.txt"
    proc = start_cli(*LONG, f"tracking.uri={uri}", f"output_dir={trial}", cwd=tmp_path, log=log)
    wait_for("the trial's run", lambda: (trial / RUN_FILE).exists(), WAIT_S, proc, log, interval=0.5)
    client = MlflowClient(tracking_uri=uri)
    run = wait_for("training", lambda: _training_run(client, trial / RUN_FILE), WAIT_S, proc, log, interval=0.5)

    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _assert_ended_by_guardian(client, [run.info.run_id], tmp_path)


OPENER = """
import sys, time
from sweep_sft.config.schema import TrackingConfig
from sweep_sft.tracking.runs import Run

cfg = TrackingConfig(uri=sys.argv[1])
done = Run(cfg, "done")
done.finish("FINISHED")
taken, left = Run(cfg, "taken"), Run(cfg, "left")
print(done.run_id, taken.run_id, left.run_id, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_guardian_ends_only_the_dead_process_own_running_runs(tmp_path):
    """Of a killed process's runs, the one it finished stays FINISHED, the one a newer attempt
    reopened (its resumes tag moved on, as trial_run does) stays RUNNING for that attempt; the
    last one is ended."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-c", OPENER, uri], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    done, taken, left = proc.stdout.readline().split()
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(taken, RESUMES_TAG, "1")  # another process continues it

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp_path / "log.txt").write_text("")
    _assert_ended_by_guardian(client, [left], tmp_path)
    assert client.get_run(taken).info.status == "RUNNING"
    finished = client.get_run(done)
    assert finished.info.status == "FINISHED" and ERROR_TAG not in finished.data.tags


def _guardian(uri: str, run_ids: list[str], stderr: int) -> subprocess.Popen:
    """A guardian holding `run_ids` of a process (this one) that is gone: its pipe is closed."""
    guardian = subprocess.Popen(
        [sys.executable, "-m", "sweep_sft.tracking.run_guard", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    for run_id in run_ids:
        guardian.stdin.write(json.dumps({"watch": run_id, "uri": uri, "resumes": 0, "timeout_s": 5}).encode() + b"\n")
    guardian.stdin.close()
    return guardian


@pytest.mark.slow
def test_the_guardian_ends_every_run_after_its_terminal_hung_up(tmp_path):
    """A sweep over SSH whose connection drops: the guardian's stderr is a terminal that fails every
    write with EIO; the note it prints after ending the parent run must not spare the child's."""
    import pty

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e")
    run_ids = [client.create_run(experiment, run_name=name).info.run_id for name in ("parent", "child")]
    master, terminal = pty.openpty()
    os.close(master)  # the hangup: from now on a write to the terminal fails with EIO
    with pytest.raises(OSError):
        os.write(terminal, b"x")
    guardian = _guardian(uri, run_ids, stderr=terminal)
    os.close(terminal)
    guardian.wait(timeout=ENDED_S)
    (tmp_path / "log.txt").write_text("")
    _assert_ended_by_guardian(client, run_ids, tmp_path)


class _Interleaved:
    """A real MlflowClient that runs `between()` once, right after its `after`-th call, and records
    the names of its calls: one process's calls interleaved at each point with another's."""

    def __init__(self, client, after: int, between):
        self._client, self._after, self._between, self.calls = client, after, between, []

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            try:
                return method(*args, **kwargs)
            finally:
                if len(self.calls) == self._after:
                    self._between()

        return call


def _killed_trial_run(tmp_path):
    """A trial's RUNNING run whose process was killed, named in its folder for a resume."""
    from mlflow.tracking import MlflowClient

    from sweep_sft.config.schema import TrackingConfig

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(tracking_uri=cfg.uri)
    run_id = client.create_run(client.create_experiment("sweep-sft")).info.run_id
    (tmp_path / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": cfg.uri}))
    watched = {"uri": cfg.uri, "resumes": 0, "timeout_s": 5}
    return cfg, client, run_id, watched


def _assert_finished_clean(client, run, run_id: str) -> None:
    from sweep_sft.names import ENDED_BY_TAG

    run.finish("FINISHED")
    ended = client.get_run(run_id)
    assert ended.info.status == "FINISHED", ended.info
    assert ERROR_TAG not in ended.data.tags and ENDED_BY_TAG not in ended.data.tags, ended.data.tags


@pytest.mark.parametrize("after", range(7))
@pytest.mark.slow
def test_a_run_reopened_while_its_dead_attempt_guardian_ends_it_stays_live(tmp_path, after):
    """The resumed attempt reopens the run after each of the guardian's calls in turn (both retry
    through an outage, so any order happens): the guardian leaves the reopened run RUNNING, except
    in the window of its last call (no compare-and-set in MLflow), and the run the attempt finishes
    carries no error of the guardian's."""
    from sweep_sft.tracking.requeue import open_run
    from sweep_sft.tracking.run_guard import end_dead_run

    cfg, client, run_id, watched = _killed_trial_run(tmp_path)
    reopened = []
    guardian = _Interleaved(client, after, lambda: reopened.append(open_run(cfg, tmp_path, "t", None, {}, True)[0]))
    if after == 0:
        guardian._between()
    end_dead_run(guardian, run_id, watched, pid=1)
    if not reopened:  # the guardian had made fewer calls: the reopen comes after them all
        guardian._between()
    assert reopened[0].run_id == run_id
    raced = guardian.calls[after : after + 1] == ["set_terminated"]
    assert client.get_run(run_id).info.status == ("KILLED" if raced else "RUNNING"), guardian.calls
    _assert_finished_clean(client, reopened[0], run_id)


@pytest.mark.parametrize("after", range(6))
def test_a_guardian_ending_the_run_while_it_is_reopened_leaves_it_live(tmp_path, monkeypatch, after):
    """The dead attempt's guardian ends the run after each of the reopening attempt's calls in turn:
    the reopened run is RUNNING once reopened, and finished without the guardian's error."""
    import mlflow.tracking

    from sweep_sft.tracking.requeue import open_run
    from sweep_sft.tracking.run_guard import end_dead_run

    cfg, client, run_id, watched = _killed_trial_run(tmp_path)
    real, ended, reopening = mlflow.tracking.MlflowClient, [], [True]

    def guardian() -> None:
        if reopening and not ended:
            ended.append(end_dead_run(client, run_id, watched, pid=1))

    class Attempt(_Interleaved):
        """The attempt's clients (its reopen's, its run's) keep one count of calls, as one process."""

        shared: list[str] = []

        def __init__(self, tracking_uri):
            super().__init__(real(tracking_uri=tracking_uri), after, guardian)
            self.calls = Attempt.shared

    if after == 0:
        guardian()
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Attempt)
    run, _ = open_run(cfg, tmp_path, "t", None, {}, True)
    monkeypatch.undo()
    reopening.clear()  # what the run delivers later (at finish) is not part of the race
    if not ended:  # the reopen had made fewer calls: the guardian comes after them all
        ended.append(end_dead_run(client, run_id, watched, pid=1))
    assert run.run_id == run_id
    assert client.get_run(run_id).info.status == "RUNNING", Attempt.shared
    _assert_finished_clean(client, run, run_id)


def test_a_reopened_run_drops_an_error_the_guardian_left_late_and_keeps_its_own(tmp_path):
    """The guardian's end landing on the live reopened run anyway (an HTTP request the server
    applied late): finishing removes the guardian's error; a trial's own error, set since, stays."""
    from sweep_sft.names import ENDED_BY_TAG
    from sweep_sft.tracking.requeue import open_run
    from sweep_sft.tracking.run_guard import end_dead_run

    cfg, client, run_id, watched = _killed_trial_run(tmp_path)
    for resumes, status in ((1, "FINISHED"), (2, "FAILED")):
        run, _ = open_run(cfg, tmp_path, "t", None, {}, True)
        assert end_dead_run(client, run_id, {**watched, "resumes": resumes}, pid=1)  # as if unclaimed
        assert client.get_run(run_id).data.tags[ENDED_BY_TAG] == "guardian"
        if status == "FINISHED":
            _assert_finished_clean(client, run, run_id)
            continue
        run.set_tag(ERROR_TAG, "RuntimeError: the trial's own")
        run.finish(status)
        ended = client.get_run(run_id)
        assert ended.info.status == "FAILED" and ended.data.tags[ERROR_TAG] == "RuntimeError: the trial's own"
        assert ENDED_BY_TAG not in ended.data.tags, ended.data.tags
