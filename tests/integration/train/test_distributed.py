"""Multi-process trials and DeepSpeed ZeRO, run as a user runs them.

- Two processes (Hydra's submitit launcher, local and on the local Slurm cluster,
  tasks_per_node=2, gloo on CPU) with grad_accum g train the same model as one process with
  grad_accum 2g on the same global batch, and the trial is one MLflow run with one metrics.json.
- A one-process DeepSpeed ZeRO-2 trial on CPU, with gradient checkpointing, trains like our own
  optimizer step without either, and logs its ZeRO stage, offload and gradient checkpointing.
- Configuration mistakes name their key, before any heavy import.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import imported_modules, run_cli
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError

# 120 examples in micro-batches of 8 make 15 micro-batches: with 6 per step the third step's
# window has only 3, so two ranks split it 2 + 1 and the short rank runs a zero-weight filler.
SMALL = [
    "data.max_train_examples=120",
    "data.max_val_per_task=4",
    "trainer.max_steps=3",
    "trainer.batch_size=8",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "eval.generate=false",
    "eval.general_probe=false",
]
# Float summation order differs (per-rank gradient sums; ZeRO's norm over a flattened
# partition). Measured: losses within 1e-7, DeepSpeed's gradient norm within 2.1e-6 relative.
TOL = 1e-5
ONE_THREAD = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_model_path):
    """The one-process trial's series for these overrides (computed once per module)."""
    from sweep_sft.trial.run import run_trial

    cache: dict[tuple[str, ...], dict] = {}

    def series(*overrides: str) -> dict:
        if overrides not in cache:
            out = tmp_path_factory.mktemp("reference")
            cache[overrides] = run_trial(compose([*SMALL, "tracking.enabled=false", *overrides]), output_dir=out).series
        return cache[overrides]

    return series


def _assert_same_series(got: dict, want: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        steps_got, values_got = zip(*got[key], strict=True)
        steps_want, values_want = zip(*want[key], strict=True)
        assert steps_got == steps_want, key
        assert values_got == pytest.approx(values_want, rel=TOL, abs=TOL), key


def _runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])


LAUNCHERS = [
    pytest.param(["hydra/launcher=submitit_local"], id="submitit_local"),
    # The real cluster (launchers/slurm_cluster.sh): ranks come from SLURM_* through submitit.
    pytest.param(
        ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10"],
        id="submitit_slurm",
        marks=pytest.mark.slurm,
    ),
]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_trial_equals_one_process_with_doubled_accumulation(tmp_path, reference, launcher):
    want = reference("trainer.grad_accum=6")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        *launcher,
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.sweep.dir={sweep}",
        *SMALL,
        "trainer.grad_accum=3",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert "global_rank=0(2)" in logs and "global_rank=1(2)" in logs, "two tasks did not run"
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    # train/loss and grad_norm cover the gradient summed over ranks (and the filler rank);
    # val/loss after the last step covers the weights.
    _assert_same_series(metrics["series"], want, ("train/loss", "train/grad_norm", "val/loss"))
    assert metrics["value"] == pytest.approx(want["val/loss"][-1][1], abs=TOL)
    trials = [r for r in _runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 1, "one MLflow run per trial, not one per process"
    assert trials[0].info.run_id == metrics["run_id"] and trials[0].info.status == "FINISHED"
    assert trials[0].data.params["dist.world_size"] == "2"


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_zero2_one_process_trains_like_our_step(tmp_path, reference):
    want = reference("trainer.grad_accum=2")
    out = tmp_path / "zero2"
    proc = run_cli(
        "deepspeed=zero2",
        "trainer.gradient_checkpointing=true",
        *SMALL,
        "trainer.grad_accum=2",
        f"output_dir={out}",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    series = json.loads((out / "metrics.json").read_text())["series"]
    loss = [v for _, v in series["train/loss"]]
    assert loss[-1] < loss[0] and series["val/loss"][-1][1] < series["val/loss"][0][1], "did not train"
    # One rank of ZeRO-2 holds the same fp32 gradient, clipped by the same global norm and
    # stepped by the same AdamW on a flattened partition: equal up to summation order.
    _assert_same_series(series, want, ("train/loss", "train/grad_norm", "val/loss"))
    (run,) = _runs(tmp_path)
    params = run.data.params
    assert params["deepspeed.zero_stage"] == "2"
    assert params["deepspeed.offload_optimizer"] == "False" and params["deepspeed.offload_params"] == "False"
    assert params["trainer.gradient_checkpointing"] == "True" and params["dist.world_size"] == "1"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["deepspeed=zero2", "deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
        (["deepspeed=zero2", "deepspeed.offload_params=true"], "deepspeed.offload_params"),
        (
            ["deepspeed=zero2", "deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"],
            "deepspeed.offload_optimizer",
        ),
        (
            ["deepspeed=zero3", "+deepspeed.extra.gradient_accumulation_steps=4"],
            "deepspeed.extra.gradient_accumulation_steps",
        ),
        (["deepspeed=zero2", "deepspeed.bucket_size=0"], "deepspeed.bucket_size"),
    ],
)
def test_deepspeed_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(overrides))


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_deepspeed_presets_compose_into_the_json(name):
    from sweep_sft.train.engine import deepspeed_json

    cfg = validate(
        compose([f"deepspeed={name}", "trainer.batch_size=4", "trainer.grad_accum=3", "trainer.precision=bf16"])
    )
    ds = deepspeed_json(cfg, world_size=2)
    assert ds["train_batch_size"] == 4 * 3 * 2 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3 and ds["bf16"] == {"enabled": True}
    zero = ds["zero_optimization"]
    assert zero["stage"] == cfg.deepspeed.zero_stage == int(name[4])
    assert ("offload_optimizer" in zero) == name.endswith("offload")
    assert ("offload_param" in zero) == (name == "zero3_offload")


def test_deepspeed_off_is_an_option_so_it_can_be_swept():
    assert validate(compose(["deepspeed=off"])).deepspeed is None
    assert validate(compose([])).deepspeed is None


def test_ranks_split_the_global_window_and_pad_the_short_one():
    import torch

    from sweep_sft.train.distributed import DistEnv
    from sweep_sft.train.engine import Engine

    batches = ["b0", "b1", "b2"]
    weights = [torch.ones(2), torch.ones(2) * 2, torch.ones(2) * 3]
    rank0 = Engine(None, None, None, None, DistEnv(0, 2)).local(batches, weights)
    rank1 = Engine(None, None, None, None, DistEnv(1, 2)).local(batches, weights)
    assert [m.batch for m in rank0] == ["b0", "b2"] and all(m.counted for m in rank0)
    assert [m.batch for m in rank1] == ["b1", "b0"]
    assert rank1[0].counted and not rank1[1].counted and float(rank1[1].weight.abs().sum()) == 0.0


def test_cli_deepspeed_error_is_one_line_without_heavy_imports(tmp_path):
    proc = run_cli("deepspeed=zero2", "deepspeed.zero_stage=7", python_flags=("-X", "importtime"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "deepspeed.zero_stage" in proc.stderr and "Traceback" not in proc.stderr
    modules = imported_modules(proc.stderr)
    assert "sweep_sft.config.schema" in modules
    assert not {m for m in modules if m.split(".")[0] in {"torch", "deepspeed", "transformers"}}


def _pruning_rank(rank: int, storage: str, result_dir: str) -> None:
    import torch.distributed as dist

    from sweep_sft.config.schema import StudyLinkConfig
    from sweep_sft.sweep.study import TrialPruned, trial_reporter
    from sweep_sft.train import distributed

    dist.init_process_group("gloo", init_method=f"file://{result_dir}/rendezvous", rank=rank, world_size=2)
    env = distributed.DistEnv(rank, 2)
    link = StudyLinkConfig(storage=storage, study_name="s", trial_number=0, metric="val/loss")
    reporter = trial_reporter(link, env)
    outcome = []
    for step, value in ((1, 0.5), (2, 5.0)):  # the threshold pruner stops a value above 1
        try:
            reporter.report(step, {"val/loss": value})
            outcome.append(f"kept {step}")
        except TrialPruned as pruned:
            outcome.append(f"pruned {pruned.step}")
            break
    Path(result_dir, f"rank{rank}").write_text(json.dumps(outcome))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_rank_zero_reports_to_the_study_and_every_rank_stops(tmp_path):
    import optuna
    import torch.multiprocessing as mp

    from sweep_sft.sweep.study import PRUNER_ATTR, open_storage

    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(storage))
    study.set_user_attr(PRUNER_ATTR, {"name": "ThresholdPruner", "kwargs": {"upper": 1.0}})
    study.ask()
    mp.spawn(_pruning_rank, args=(storage, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}").read_text()) == ["kept 1", "pruned 2"]
    reported = study.trials[0].intermediate_values
    assert reported == {1: 0.5, 2: 5.0}, "rank 0 reports each evaluation once"
