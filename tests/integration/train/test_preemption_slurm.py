"""The done criterion of preemption on the real local Slurm cluster: a trial launched by the stock
`hydra/launcher=submitit_slurm`, signalled as submitit's own `_interrupt()` does, checkpoints,
is requeued, resumes, and ends where an uninterrupted run ends, in one continuous MLflow run."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from helpers import start_cli, wait_for
from sweep_sft.config.compose import compose
from sweep_sft.trial.run import run_trial

STEPS = 200
TRAIN = [
    "data.max_train_examples=512",
    "data.max_val_per_task=4",
    f"trainer.max_steps={STEPS}",
    "trainer.batch_size=2",
    "trainer.log_every=1",
    "trainer.eval_every=50",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "trainer.checkpoint_every=20",
    "eval.generate=false",
    "eval.general_probe=false",
]


def preempt(job_id: str) -> None:
    """What submitit's SlurmJob._interrupt() sends for a preemption: SIGTERM, then its USR signal."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)
    subprocess.run(["scancel", job_id, "--signal", SlurmJobEnvironment.USR_SIG], check=True)


def job_states(job_id: str, timeout: float = 20) -> list[str]:
    """Every state the job went through (one line per attempt), once accounting has its end:
    the result file submitit waits for can come before sacct records the completion."""
    deadline = time.monotonic() + timeout
    command = ["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"]
    while True:
        states = subprocess.run(command, capture_output=True, text=True).stdout.split()
        if (states and states[-1] not in ("RUNNING", "PENDING", "COMPLETING")) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_slurm_trial_resumes_to_the_same_final_loss(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", "hydra/launcher=submitit_slurm"]
    args += ["hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1", "hydra.sweep.dir=sweep"]
    args += [*TRAIN, f"tracking.uri={uri}"]
    proc = start_cli(*args, cwd=tmp_path, log=tmp_path / "sweep.log")
    job_id = None
    try:
        job_dir = tmp_path / "sweep" / "0"
        wait_for("the checkpoint at step 40", lambda: (job_dir / "checkpoints" / "step-40").is_dir(), 90, proc)
        job_id = next(p.name for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.name[0].isdigit())
        preempt(job_id)
        # The uninterrupted reference, computed here while Slurm requeues the job.
        reference = run_trial(
            compose(TRAIN + [f"output_dir={tmp_path / 'reference'}", "tracking.enabled=false", "trainer.resume=never"])
        )
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            if job_id is not None:
                subprocess.run(["scancel", job_id], check=False)
    output = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 0, output[-3000:]

    # It was requeued, and resumed from the checkpoint the signal wrote (not a periodic one).
    states = job_states(job_id)
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    job_log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit" / job_id).glob("*_log.err"))
    written = re.search(r"checkpoint (\S+) written: handing over to submitit", job_log)
    assert written, job_log[-3000:]
    assert f"resumed from {written.group(1)} at step" in job_log
    stopped_at = int(written.group(1).rsplit("-", 1)[1])
    assert 40 <= stopped_at < STEPS

    record = json.loads((job_dir / "metrics.json").read_text())
    for key in ("train/loss", "val/loss"):
        assert record["metrics"][key] == pytest.approx(reference.metrics[key], abs=1e-4), key
    steps = [step for step, _ in record["series"]["train/loss"]]
    assert steps == list(range(1, STEPS + 1))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((job_dir / "mlflow_run.json").read_text())["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep_sft.kind") != "sweep"]
    assert [r.info.run_id for r in children] == [run_id]  # one run for both attempts
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweep_sft.resumes"] == "1"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # continuous, every step once
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/loss")) == [0, 50, 100, 150, 200]
    assert run.data.metrics["val/loss"] == pytest.approx(reference.metrics["val/loss"], abs=1e-4)
