"""The sweep preflight (sweep_sft.sweep.preflight): each job composed and validated as its launcher
will run it, with Hydra's job values (`${hydra:job.num}`, `${hydra:job.override_dirname}`,
`${hydra:runtime.output_dir}`) set for it; the model's files checked only where the jobs run.

Each case calls the callback in this process on the config Hydra composes for `-m`; one sweep runs
for real in tests/integration/sweep/test_preflight_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sweep_sft
from sweep_sft.config.compose import register_configs

CONF = Path(sweep_sft.__file__).parent / "conf"


def preflight(*overrides: str) -> None:
    """SweepPreflight.on_multirun_start on the multirun config of `python -m sweep_sft -m OVERRIDES`."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sweep_sft.sweep.preflight import SweepPreflight

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        config = loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
        SweepPreflight().on_multirun_start(config=config, config_name="config")


def refused(capsys, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exc:
        preflight(*overrides)
    assert exc.value.code == 1
    return capsys.readouterr().err


def preset(tmp_path: Path, body: str) -> list[str]:
    """Overrides that load `body` as a sweep preset from tmp_path (a config file, not the command line)."""
    (tmp_path / "conf" / "sweep").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "sweep" / "mine.yaml").write_text("# @package _global_\n" + body)
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "sweep=mine"]


HYDRA_VALUES = ["${hydra:job.num}", "${hydra:job.override_dirname}", "${hydra:job.id}", "${hydra:runtime.output_dir}"]


@pytest.mark.parametrize("value", HYDRA_VALUES)
def test_hydra_values_in_output_dir_on_the_command_line_are_checked_per_job(tmp_path, capsys, value):
    # The bad job is still found: the override is passed on unresolved and resolves for each job
    # as its launcher resolves it (the check itself does not fail, which Hydra would only warn of).
    from hydra.core.hydra_config import HydraConfig

    args = [f"output_dir={tmp_path}/runs/{value}", f"hydra.sweep.dir={tmp_path}/s"]
    err = refused(capsys, "lr=1e-3,-1", *args)
    assert "sweep job #1 of 2 (lr=-1): optimizer.lr must be >= 0, got -1.0; no job was launched" in err
    assert not HydraConfig.initialized()  # left as Hydra had it
    preflight("lr=1e-4,1e-3", *args)
    assert not HydraConfig.initialized()


@pytest.mark.parametrize("value", HYDRA_VALUES)
def test_hydra_values_in_output_dir_in_a_config_file_pass(tmp_path, value):
    in_a_file = preset(tmp_path, f"output_dir: {tmp_path}/runs/{value}\n")
    preflight("lr=1e-4,1e-3", f"hydra.sweep.dir={tmp_path}/s", *in_a_file)


def test_hydra_values_resolve_for_each_job_as_its_launcher_sets_them(capsys):
    # Valid for job #1 only (num_threads >= 1): the check sees each job's own number.
    err = refused(capsys, "lr=1e-4,1e-3", "trainer.num_threads=${hydra:job.num}")
    assert "sweep job #0 of 2 (lr=0.0001): trainer.num_threads" in err


def test_a_mix_override_conflict_in_a_sweep_is_caught_before_any_job(capsys):
    err = refused(capsys, "data.mix.task_ratio.reasoning=0.3", "data.mix.task_ratio.reasoning.addition=0.2,0.1")
    assert "data.mix.task_ratio.reasoning cannot be a number and hold addition too" in err
    assert "no job was launched" in err


MISSING_MODEL = ["model=local", "model.name_or_path=/scratch/only_on_compute_nodes/model", "lr=1e-4,1e-3"]


@pytest.mark.parametrize("launcher", ["slurm", "slurm_local", "slurm_gpu_example"])
def test_model_files_are_not_looked_for_on_the_submit_host_of_a_remote_launcher(launcher, capsys):
    # The jobs run on compute nodes, where the path may exist; each job checks it when it starts.
    preflight(f"hydra/launcher={launcher}", *MISSING_MODEL)
    err = refused(capsys, f"hydra/launcher={launcher}", *MISSING_MODEL, "optimizer.weight_decay=0,nan")
    assert "optimizer.weight_decay" in err and "no job was launched" in err  # values are still checked


@pytest.mark.parametrize("launcher", ["basic", "local_jobs"])
def test_model_files_are_checked_for_a_launcher_on_this_host(launcher, capsys):
    err = refused(capsys, f"hydra/launcher={launcher}", *MISSING_MODEL)
    assert "only_on_compute_nodes/model: no such folder" in err and "no job was launched" in err


def test_a_job_record_is_read_where_the_jobs_hydra_values_put_it(tmp_path):
    # After the job, the sweep reads its metrics.json back with the sweep's HydraConfig (unset).
    from hydra.core.utils import JobReturn, JobStatus, setup_globals
    from omegaconf import OmegaConf

    from sweep_sft.sweep.jobs import job_record

    setup_globals()  # the `hydra` resolver, as in `python -m sweep_sft`

    (tmp_path / "runs" / "3").mkdir(parents=True)
    (tmp_path / "runs" / "3" / "metrics.json").write_text(json.dumps({"state": "COMPLETE", "metrics": {"a": 1}}))
    ret = JobReturn(overrides=["lr=1"], status=JobStatus.COMPLETED, _return_value=0.5)
    ret.hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": 3}, "runtime": {"output_dir": str(tmp_path / "h")}}})
    ret.cfg = OmegaConf.create({"output_dir": f"{tmp_path}/runs/${{hydra:job.num}}"})
    assert job_record(ret) == {"state": "COMPLETE", "metrics": {"a": 1}}
