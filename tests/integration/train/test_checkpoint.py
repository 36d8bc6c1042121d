"""Checkpoints and resume: an interrupted trial continues bit-identically (CPU), into the same
MLflow run; rotation; incomplete checkpoints skipped; bad resume settings named."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from helpers import run_cli
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError
from sweep_sft.trial.run import run_trial


@pytest.fixture
def short(tiny_overrides, tmp_path):
    """A real trial of 8 steps, evaluated every 4, without the slow final evals."""
    return [o for o in tiny_overrides if not o.startswith(("trainer.max_steps", "trainer.eval_every"))] + [
        "trainer.max_steps=8",
        "trainer.eval_every=4",
        "eval.generate=false",
        "eval.general_probe=false",
    ]


def curve(result, key="train/loss"):
    """(steps, values) of a logged series."""
    return [s for s, _ in result.series[key]], [v for _, v in result.series[key]]


def same_curve(a, b, key="train/loss"):
    (steps_a, values_a), (steps_b, values_b) = curve(a, key), curve(b, key)
    return steps_a == steps_b and values_a == pytest.approx(values_b, abs=1e-6)


def with_mlflow(overrides, tmp_path):
    return [o for o in overrides if not o.startswith("tracking.")] + [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]


class FakeSubmitit:
    """Stands in for submitit's USR2 handler in this process: requeue, then sys.exit; or, when it
    refuses to requeue (a time limit with max_num_timeout=0), raise."""

    def __init__(self, monkeypatch, tmp_path, refuse: bool = False):
        self.calls = 0
        self.refuse = refuse
        monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "submitit"))
        self.previous = signal.signal(signal.SIGUSR2, self.handler)

    def handler(self, signum, frame):
        self.calls += 1
        if self.refuse:
            raise RuntimeError("Job not requeued because: timed-out too many times.")
        raise SystemExit(-1)

    def restore(self):
        signal.signal(signal.SIGUSR2, self.previous)


def signal_at(monkeypatch, step: int) -> None:
    """Send the preemption signal while step `step` finishes (before its boundary check)."""
    from sweep_sft.train.checkpoint import Checkpoints

    original = Checkpoints.after_step

    def after_step(self, model, optimizer, scheduler, position):
        if position.step == step:
            os.kill(os.getpid(), signal.SIGUSR2)
        return original(self, model, optimizer, scheduler, position)

    monkeypatch.setattr(Checkpoints, "after_step", after_step)


class Killed(Exception):
    """A hard kill: the process dies without a signal submitit could defer."""


def kill_at(monkeypatch, step: int, on_step=None) -> None:
    """Die (raise Killed) when step `step` finishes, before its checkpoint check; `on_step(n)`
    runs as each step finishes."""
    from sweep_sft.train.checkpoint import Checkpoints

    original = Checkpoints.after_step

    def after_step(self, model, optimizer, scheduler, position):
        if on_step is not None:
            on_step(position.step)
        if position.step == step:
            raise Killed
        return original(self, model, optimizer, scheduler, position)

    monkeypatch.setattr(Checkpoints, "after_step", after_step)


def test_signalled_trial_resumes_bit_identically_into_the_same_run(short, tmp_path, monkeypatch):
    straight = run_trial(compose(short + [f"output_dir={tmp_path / 'straight'}", "trainer.resume=never"]))

    overrides = with_mlflow(short, tmp_path) + ["trainer.checkpoint_every=0"]
    fake = FakeSubmitit(monkeypatch, tmp_path)
    signal_at(monkeypatch, 3)
    try:
        with pytest.raises(SystemExit):
            run_trial(compose(overrides))
    finally:
        fake.restore()
    assert fake.calls == 1  # submitit's handler ran once, after our checkpoint
    trial = tmp_path / "trial"
    assert sorted(p.name for p in (trial / "checkpoints").iterdir()) == ["step-3"]
    assert not (trial / "metrics.json").exists()
    saved = json.loads((trial / "mlflow_run.json").read_text())
    assert set(saved) == {"run_id", "tracking_uri"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert client.get_run(saved["run_id"]).info.status == "RUNNING"  # left for the requeued job

    monkeypatch.undo()
    resumed = run_trial(compose(overrides))
    assert resumed.run_id == saved["run_id"]
    for key in ("train/loss", "val/loss", "train/loss/transform/copy"):
        assert same_curve(resumed, straight, key), key
    assert resumed.metrics["val/loss"] == pytest.approx(straight.metrics["val/loss"], abs=1e-6)
    assert [s for s, _ in resumed.series["train/loss"]] == list(range(1, 9))
    assert [s for s, _ in resumed.series["val/loss"]] == [0, 4, 8]

    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["sweep_sft.resumes"] == "1"
    for key in ("train/loss", "val/loss", "train/lr", "data/examples/transform/copy"):
        steps = [m.step for m in client.get_metric_history(saved["run_id"], key)]
        assert steps == sorted(set(steps)), key  # every step once
    assert [m.step for m in client.get_metric_history(saved["run_id"], "train/loss")] == list(range(1, 9))
    losses = [m.value for m in client.get_metric_history(saved["run_id"], "train/loss")]
    assert losses == pytest.approx(curve(straight)[1], abs=1e-6)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    artifacts = {a.path for a in client.list_artifacts(saved["run_id"])}
    assert {"config.yaml", "dataset_stats.json", "objective.json"} <= artifacts


def test_refused_requeue_fails_the_run_and_keeps_the_checkpoint(short, tmp_path, monkeypatch, capsys):
    fake = FakeSubmitit(monkeypatch, tmp_path, refuse=True)
    signal_at(monkeypatch, 2)
    try:
        with pytest.raises(RuntimeError, match="not requeued"):
            run_trial(compose(with_mlflow(short, tmp_path)))
    finally:
        fake.restore()
    assert "rerun the trial into the same output folder" in capsys.readouterr().err
    assert (tmp_path / "trial" / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    from mlflow.tracking import MlflowClient

    saved = json.loads((tmp_path / "trial" / "mlflow_run.json").read_text())
    run = MlflowClient(tracking_uri=saved["tracking_uri"]).get_run(saved["run_id"])
    assert run.info.status == "FAILED" and "not requeued" in run.data.tags["sweep_sft.error"]


def test_hard_kill_after_a_checkpoint_replays_from_it(short, tmp_path, monkeypatch):
    """Killed without a signal two steps after a periodic checkpoint: the resumed trial repeats
    those steps from the checkpoint and still ends where the uninterrupted one does."""
    straight = run_trial(compose(short + [f"output_dir={tmp_path / 'straight'}"]))
    overrides = short + ["trainer.checkpoint_every=2", "trainer.save_total_limit=1"]
    kill_at(monkeypatch, 6)  # steps 5 and 6 done and logged, their checkpoint never written
    with pytest.raises(Killed):
        run_trial(compose(overrides))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "trial" / "checkpoints").iterdir()] == ["step-4"]
    resumed = run_trial(compose(overrides))
    assert same_curve(resumed, straight)
    assert resumed.metrics["val/loss"] == pytest.approx(straight.metrics["val/loss"], abs=1e-6)


def test_tokens_per_s_after_a_resume_counts_the_time_before_the_checkpoint(short, tmp_path, monkeypatch):
    """The first tokens/s after a resume covers steps before and after the checkpoint: the time of
    both must count, or a resumed trial reports a throughput it never had."""
    import time

    overrides = [o for o in short if not o.startswith("trainer.log_every")] + [
        "trainer.log_every=4",
        "trainer.checkpoint_every=1",
    ]
    straight = run_trial(compose(overrides + [f"output_dir={tmp_path / 'straight'}"]))

    # A slow step 1, inside the log interval that the resume splits.
    kill_at(monkeypatch, 3, on_step=lambda step: time.sleep(1.0) if step == 1 else None)
    with pytest.raises(Killed):
        run_trial(compose(overrides))
    monkeypatch.undo()
    saved = json.loads((tmp_path / "trial" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert saved["position"]["since"]["seconds"] >= 1.0
    resumed = run_trial(compose(overrides))
    rate = dict((int(s), v) for s, v in resumed.series["train/tokens_per_s"])
    plain = dict((int(s), v) for s, v in straight.series["train/tokens_per_s"])
    # Steps 1-4 took at least the 1 s slept; the straight run's 4 tiny steps far less.
    assert rate[4] < 0.7 * plain[4]


def test_rotation_keeps_the_newest(short, tmp_path):
    run_trial(compose(short + ["trainer.checkpoint_every=1", "trainer.save_total_limit=3"]))
    names = sorted(p.name for p in (tmp_path / "trial" / "checkpoints").iterdir())
    assert names == ["step-6", "step-7", "step-8"]


def checkpointed(short, tmp_path):
    """A finished trial with checkpoints at steps 4 and 8."""
    run_trial(compose(short + ["trainer.checkpoint_every=4"]))
    return tmp_path / "trial" / "checkpoints"


def test_incomplete_newest_checkpoint_is_skipped_with_a_warning(short, tmp_path, capsys):
    from sweep_sft.train.checkpoint import find_resume

    root = checkpointed(short, tmp_path)
    (root / "step-8" / "optimizer.pt").unlink()  # as if the write had been cut off
    (root / "step-9").mkdir()  # an empty folder
    (root / ".tmp-step-12-999").mkdir()  # a temporary folder is never a candidate
    assert find_resume("auto", tmp_path / "trial") == root / "step-4"
    err = capsys.readouterr().err
    assert f"ignoring incomplete checkpoint {root / 'step-8'}: missing optimizer.pt" in err
    assert f"ignoring incomplete checkpoint {root / 'step-9'}" in err
    (root / "step-4" / "trainer_state.json").write_text('{"position": ')
    assert find_resume("auto", tmp_path / "trial") is None
    assert "unreadable trainer_state.json" in capsys.readouterr().err


def test_resume_errors_name_the_key_and_path(short, tmp_path):
    root = checkpointed(short, tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"trainer.resume: {missing} does not exist"):
        run_trial(compose(short + [f"trainer.resume={missing}"]))
    shutil.copytree(root / "step-4", tmp_path / "broken")
    (tmp_path / "broken" / "model.pt").unlink()
    with pytest.raises(ConfigError, match="trainer.resume: .*broken is not a complete checkpoint: missing model.pt"):
        run_trial(compose(short + [f"trainer.resume={tmp_path / 'broken'}"]))
    # A checkpoint of another configuration is refused, naming what differs.
    with pytest.raises(ConfigError, match=r"trainer.resume: checkpoint .*step-8 .*optimizer.lr: 0.001 -> 0.01"):
        run_trial(compose(short + ["lr=0.01"]))
    # A path to another trial's checkpoint: resumed from (the folder or its newest checkpoint).
    result = run_trial(compose(short + [f"output_dir={tmp_path / 'other'}", f"trainer.resume={root / 'step-4'}"]))
    assert [s for s, _ in result.series["train/loss"]] == list(range(1, 9))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.save_total_limit=0", "trainer.save_total_limit"),
        ("trainer.checkpoint_every=-1", "trainer.checkpoint_every"),
        ("trainer.resume=''", "trainer.resume"),
    ],
)
def test_checkpoint_settings_are_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose([override]))


def test_checkpoints_cover_several_ranks_and_zero2_and_are_refused_for_zero3(short, tmp_path):
    from sweep_sft.trial.checks import checkpointable as _checkpointable

    # Plain data parallel (rank 0 writes) and ZeRO-2 are covered, whatever the number of ranks.
    assert _checkpointable(validate(compose([*short, "trainer.checkpoint_every=5"])))
    assert _checkpointable(validate(compose([*short, "trainer.checkpoint_every=5", "deepspeed=zero2"])))
    zero3 = validate(compose([*short, "trainer.checkpoint_every=5", "deepspeed=zero3"]))
    with pytest.raises(ConfigError, match="trainer.checkpoint_every=5.*deepspeed.zero_stage=3"):
        _checkpointable(zero3)
    # An explicit resume is refused too, rather than silently starting afresh.
    resume = validate(compose([*short, f"trainer.resume={tmp_path}", "deepspeed=zero3"]))
    with pytest.raises(ConfigError, match=f"trainer.resume={tmp_path}.*ZeRO-3"):
        _checkpointable(resume)
    # Without periodic checkpoints such a trial runs, leaving the signal to submitit.
    assert not _checkpointable(validate(compose([*short, "deepspeed=zero3"])))


def test_resume_with_another_number_of_ranks_is_refused(short, tmp_path):
    """The global batch is batch_size x grad_accum x ranks: a checkpoint of 2 ranks does not
    continue in 1 (the count is not a config key, so it is checked apart)."""
    from sweep_sft.train.checkpoint import STATE_FILE

    root = checkpointed(short, tmp_path)
    state = json.loads((root / "step-4" / STATE_FILE).read_text())
    assert state["world_size"] == 1
    state["world_size"] = 2
    (root / "step-4" / STATE_FILE).write_text(json.dumps(state))
    written_by_two = r"trainer.resume: checkpoint .*step-4 was written by 2 rank\(s\), this trial has 1"
    with pytest.raises(ConfigError, match=written_by_two):
        run_trial(compose(short + [f"trainer.resume={root / 'step-4'}"]))


def test_resume_across_deepspeed_settings_is_refused(short, tmp_path):
    """A plain checkpoint holds no DeepSpeed engine state (nor the reverse): refused before training."""
    root = checkpointed(short, tmp_path)
    refused = r"trainer.resume: checkpoint .*step-8 was written with deepspeed off.*zero_stage"
    with pytest.raises(ConfigError, match=refused):
        run_trial(compose(short + ["deepspeed=zero2"]))
    assert (root / "step-8").is_dir()


class Poison:
    """Unpickling this writes the marker file: what a planted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_poisoned_checkpoint_file_is_refused_naming_it_and_never_run(short, tmp_path):
    import torch

    root = checkpointed(short, tmp_path)
    marker = tmp_path / "marker"
    torch.save({"weight": Poison(marker)}, root / "step-8" / "model.pt")
    refused = r"trainer.resume: .*step-8/model.pt is refused \(it would call builtins.exec"
    with pytest.raises(ConfigError, match=refused):
        run_trial(compose(short))  # automatic resume from the newest checkpoint
    assert not marker.exists()
    # A file in torch's legacy format cannot be scanned: refused before anything loads it, wherever
    # it lies in the folder (DeepSpeed's universal checkpoint would read zero/<param>/*.pt itself).
    torch.save({}, root / "step-8" / "model.pt")  # the scan stops at the first refused file
    for planted in (root / "step-8" / "zero" / "w" / "fp32.pt", root / "step-8" / "model.pt"):
        planted.parent.mkdir(parents=True, exist_ok=True)
        with open(planted, "wb") as f:
            torch.save({"weight": Poison(marker)}, f, _use_new_zipfile_serialization=False)
        with pytest.raises(ConfigError, match=rf"{planted.relative_to(root)} is refused \(not a torch.save zip"):
            run_trial(compose(short))
        assert not marker.exists()


DS_TRIAL = [
    "deepspeed=zero2",
    "data.max_train_examples=64",
    "data.max_val_per_task=2",
    "trainer.max_steps=2",
    "trainer.batch_size=8",
    "trainer.checkpoint_every=2",
    "trainer.eval_every=0",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "eval.generate=false",
    "eval.general_probe=false",
    "tracking.enabled=false",
]


def _ds_cli(out):
    return run_cli(*DS_TRIAL, f"output_dir={out}", cwd=out.parent, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def zero2_trial(tmp_path_factory):
    """A finished one-process DeepSpeed ZeRO-2 trial with its engine's checkpoint at step 2."""
    out = tmp_path_factory.mktemp("zero2") / "trial"
    proc = _ds_cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_genuine_zero2_checkpoint_resumes_through_the_weights_only_loader(zero2_trial, tmp_path):
    out = tmp_path / "trial"
    shutil.copytree(zero2_trial, out)
    proc = _ds_cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-2'} at step 2" in proc.stderr


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.slow
def test_a_poisoned_deepspeed_model_states_file_is_refused_on_automatic_resume(zero2_trial, tmp_path, legacy):
    """DeepSpeed itself unpickles mp_rank_00_model_states.pt with weights_only=False; the engine
    loads through ours, and a zip file is scanned before training too."""
    import torch

    out = tmp_path / "trial"
    shutil.copytree(zero2_trial, out)
    marker = tmp_path / "marker"
    planted = out / "checkpoints" / "step-2" / "deepspeed" / "mp_rank_00_model_states.pt"
    with open(planted, "wb") as f:
        torch.save({"module": Poison(marker)}, f, _use_new_zipfile_serialization=not legacy)
    proc = _ds_cli(out)
    assert proc.returncode != 0
    assert not marker.exists(), "the planted pickle ran"
    assert f"error: trainer.resume: {planted} is refused" in proc.stderr, proc.stderr[-3000:]
    assert ("not a torch.save zip archive" if legacy else "it would call builtins.exec") in proc.stderr
    assert "Traceback" not in proc.stderr
