"""Checkpoints and preemption beyond one plain process, as a user runs them (Hydra's
submitit_local launcher, gloo on CPU):
- a two-process trial (tasks_per_node=2): the preemption signal reaches one rank only, both ranks
  stop at the same step, rank 0 writes the checkpoint and submitit requeues the job, which resumes
  and ends where the uninterrupted two-process trial ends, in one MLflow run;
- a one-process DeepSpeed ZeRO-2 trial, signalled: the engine's checkpoint plus ours, requeued,
  resumed to the uninterrupted ZeRO-2 trial's losses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import start_cli, wait_for

STEPS = 60
TRAIN = [
    "data.max_train_examples=480",
    "data.max_val_per_task=4",
    f"trainer.max_steps={STEPS}",
    "trainer.batch_size=2",
    "trainer.log_every=3",  # train-loss sums carried over a checkpoint (each rank's own)
    "trainer.eval_every=30",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "trainer.checkpoint_every=10",
    "eval.generate=false",
    "eval.general_probe=false",
]
LAUNCH = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"]


def _cli(cwd: Path, sweep: str, *extra: str, launch: list[str] = LAUNCH) -> subprocess.Popen:
    """The sweep `python -m sweep_sft -m ...` into cwd/sweep, its output in cwd/<sweep>.log."""
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["-m", *launch, f"hydra.sweep.dir={sweep}", *TRAIN, *extra]
    # A session of its own: a failed test kills the sweep with its submitit tasks.
    return start_cli(*args, cwd=cwd, log=cwd / f"{sweep}.log", env=env, start_new_session=True)


def _signal_after(proc: subprocess.Popen, cwd: Path, sweep: str, checkpoint: str, rank: int) -> None:
    """Send submitit's USR2 to one task once the job has written `checkpoint`."""
    job_dir = cwd / sweep / "0"
    try:
        wait_for(
            f"checkpoint {checkpoint}",
            lambda: (job_dir / "checkpoints" / checkpoint).is_dir(),
            timeout=90,
            proc=proc,
            log=cwd / f"{sweep}.log",
            interval=0.05,
        )
        os.kill(_rank_pid(cwd / sweep / ".submitit", rank), signal.SIGUSR2)
    except BaseException:
        _kill(proc)
        raise


def _finish(proc: subprocess.Popen, cwd: Path, sweep: str, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        _kill(proc)
    output = (cwd / f"{sweep}.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    return output


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _rank_pid(submitit_dir: Path, rank: int) -> int:
    """The pid of a task of the local submitit job run from `submitit_dir` (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and str(submitit_dir).encode() in cmdline:
            if f"SUBMITIT_LOCAL_GLOBALID={rank}".encode() in environ:
                return int(proc.name)
    pytest.fail(f"no task of rank {rank} under {submitit_dir}")


@pytest.mark.distributed
@pytest.mark.slow
def test_preempted_two_process_trial_resumes_to_the_same_losses(tmp_path):
    from mlflow.tracking import MlflowClient

    interrupted = _cli(tmp_path, "interrupted")
    job_dir = tmp_path / "interrupted" / "0"
    # Only rank 1 is signalled: rank 0, which writes and requeues, must learn of it.
    _signal_after(interrupted, tmp_path, "interrupted", "step-20", rank=1)
    _finish(interrupted, tmp_path, "interrupted", 120)
    straight = _cli(tmp_path, "straight")
    _finish(straight, tmp_path, "straight", 120)

    logs = {
        rank: "".join(p.read_text() for p in (tmp_path / "interrupted" / ".submitit").glob(f"*/*_{rank}_log.*"))
        for rank in (0, 1)
    }
    written = re.search(r"checkpoint (\S+) written: handing over to submitit", logs[0])
    assert written, logs[0][-3000:]
    stopped_at = int(written.group(1).rsplit("-", 1)[1])
    assert 20 <= stopped_at < STEPS
    assert "another rank caught the preemption signal" in logs[0]
    assert "caught SIGUSR2" in logs[1] and "this rank exits for the requeue" in logs[1]
    assert f"resumed from {written.group(1)} at step {stopped_at}" in logs[0]
    assert len(re.findall(r"global_rank=0\(2\)", logs[0])) == 2, "rank 0 did not run twice (requeue)"

    got = json.loads((job_dir / "metrics.json").read_text())
    want = json.loads((tmp_path / "straight" / "0" / "metrics.json").read_text())
    for key in ("train/loss", "val/loss"):
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], abs=1e-5), key
        assert [s for s, _ in got["series"][key]] == [s for s, _ in want["series"][key]], key
        assert [v for _, v in got["series"][key]] == pytest.approx([v for _, v in want["series"][key]], abs=1e-5)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    run_id = json.loads((job_dir / "mlflow_run.json").read_text())["run_id"]
    assert sorted(r.info.run_id for r in trials) == sorted([run_id, want["run_id"]]), "one run per trial"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweep_sft.resumes"] == "1"
    history = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert history == list(range(3, STEPS + 1, 3)), "every logged step once"


@pytest.mark.distributed
@pytest.mark.slow
def test_preempted_deepspeed_zero2_trial_resumes_to_the_same_losses(tmp_path):
    one = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=1"]
    interrupted = _cli(tmp_path, "interrupted", "deepspeed=zero2", launch=one)
    _signal_after(interrupted, tmp_path, "interrupted", "step-20", rank=0)
    _finish(interrupted, tmp_path, "interrupted", 120)
    straight = _cli(tmp_path, "straight", "deepspeed=zero2", launch=one)
    _finish(straight, tmp_path, "straight", 120)

    log = "".join(p.read_text() for p in (tmp_path / "interrupted" / ".submitit").glob("*/*_0_log.*"))
    written = re.search(r"checkpoint (\S+) written: handing over to submitit", log)
    assert written, log[-3000:]
    assert f"resumed from {written.group(1)} at step" in log
    job_dir = tmp_path / "interrupted" / "0"
    # The engine's own checkpoint (weights, ZeRO optimizer partition, scheduler) sits inside ours.
    assert list((job_dir / "checkpoints").glob("step-*/deepspeed/*optim_states.pt"))

    got = json.loads((job_dir / "metrics.json").read_text())
    want = json.loads((tmp_path / "straight" / "0" / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "train/lr"):
        assert [s for s, _ in got["series"][key]] == [s for s, _ in want["series"][key]], key
        assert [v for _, v in got["series"][key]] == pytest.approx([v for _, v in want["series"][key]], abs=1e-5)
    assert got["metrics"]["val/loss"] == pytest.approx(want["metrics"]["val/loss"], abs=1e-5)
    assert got["run_id"] == json.loads((job_dir / "mlflow_run.json").read_text())["run_id"]
