"""Tests for the Hydra configs: every option composes, the schema and the value checks reject
bad input with the full key path, and short names feed their full paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweep_sft.config.compose import compose, config_dir
from sweep_sft.config.schema import Config
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError

CONF = Path(config_dir())
# Options that configure Hydra only, not the job: launcher profiles (conf/hydra/launcher) and
# the default sweeper (conf/sweeper); tested on their own below.
HYDRA_ONLY = (CONF / "hydra", CONF / "sweeper")
OPTION_FILES = sorted(
    p for p in CONF.rglob("*.yaml") if p != CONF / "config.yaml" and not any(d in p.parents for d in HYDRA_ONLY)
)
LAUNCHER_PROFILES = sorted((CONF / "hydra" / "launcher").glob("*.yaml"))
GLOBAL_HEADER = "# @package _global_"
DUMMY = "/dummy"


def option_override(path: Path) -> str:
    """`<group>=<name>` for conf/<group>/<name>.yaml (sweep presets too: the root's defaults
    list has `sweep: null`, so `sweep=<name>` selects one and `+sweep=<name>` is refused)."""
    rel = path.relative_to(CONF).with_suffix("")
    return f"{rel.parent.as_posix().replace('/', '.')}={rel.name}"


def is_global(path: Path) -> bool:
    return path.read_text(encoding="utf-8").startswith(GLOBAL_HEADER)


def option_prefix(path: Path) -> str:
    """Where the file's keys land in the composed config."""
    return "" if is_global(path) else path.relative_to(CONF).parent.as_posix().replace("/", ".") + "."


def mandatory_keys(path: Path) -> list[str]:
    """Full paths of the file's `???` values, found with OmegaConf rather than listed by hand."""
    return sorted(option_prefix(path) + key for key in OmegaConf.missing_keys(OmegaConf.load(path)))


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value for every leaf of a plain container (a list counts as one leaf)."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def compose_option(path: Path) -> DictConfig:
    fills = [f"{key}={DUMMY}" for key in mandatory_keys(path)]
    return compose([option_override(path), *fills])


# -- 1. every option file composes and validates -------------------------------------------


def test_found_the_option_files() -> None:
    assert len(OPTION_FILES) >= 12, OPTION_FILES
    assert any(is_global(p) for p in OPTION_FILES), "expected at least one `_global_` sweep preset"
    assert any(mandatory_keys(p) for p in OPTION_FILES), "expected at least one option with `???` values"


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.relative_to(CONF).as_posix())
def test_option_composes_and_validates(path: Path) -> None:
    cfg = compose_option(path)
    assert OmegaConf.missing_keys(cfg) == set()
    assert isinstance(validate(cfg), Config)
    # The option's own values (dummies for its `???`) are the ones that ended up in the config.
    expected = leaves(OmegaConf.to_container(OmegaConf.load(path)), option_prefix(path))
    # The defaults list and the hydra node are not config values of the job.
    expected = {
        k: (DUMMY if v == "???" else v) for k, v in expected.items() if not k.startswith("hydra.") and k != "defaults"
    }
    assert expected, f"{path} sets nothing outside the hydra node"
    actual = {key: plain(OmegaConf.select(cfg, key, throw_on_missing=True)) for key in expected}
    assert actual == expected


SWEEP_PRESETS = sorted((CONF / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_PRESETS, ids=lambda p: p.stem)
def test_sweep_preset_configures_its_sweeper(path: Path) -> None:
    """The preset's hydra.sweeper values reach the sweeper's typed config (the plugins'
    schemas reject unknown keys), and the sweeper it names is the one composed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sweep_sft.config.compose import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"sweep={path.stem}"], return_hydra_config=True)
    preset = OmegaConf.to_container(OmegaConf.load(path))
    composed = OmegaConf.to_container(cfg.hydra, resolve=False)

    def within(want: Any, got: Any, where: str) -> None:
        if isinstance(want, dict):
            for key, value in want.items():
                within(value, got.get(key), f"{where}.{key}")
        else:
            assert got == want, where

    within(preset["hydra"]["sweeper"], composed["sweeper"], "hydra.sweeper")
    assert cfg.hydra.mode.name == "MULTIRUN"
    sweeper = OmegaConf.load(path).get("defaults", [{}])[0].get("override /hydra/sweeper", "grid")
    assert (
        cfg.hydra.sweeper._target_.split(".")[-1]
        .lower()
        .startswith({"sandwich": "sandwich", "optuna5": "optuna", "grid": "grid"}[sweeper])
    )


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sweep_sft.config.compose import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_found_the_launcher_profiles() -> None:
    assert {p.stem for p in LAUNCHER_PROFILES} >= {"local_jobs", "slurm", "slurm_local", "slurm_gpu_example"}
    assert (CONF.parent.parent.parent / "launchers" / "profiles").resolve() == CONF / "hydra" / "launcher"


@pytest.mark.parametrize("path", LAUNCHER_PROFILES, ids=lambda p: p.stem)
def test_launcher_profile_composes_onto_our_launcher(path: Path) -> None:
    """Each profile's values reach hydra.launcher, typed by our launcher's schema (unknown keys
    are refused), and the launcher is ours (a killed job becomes a failed trial)."""
    cfg = compose_with_hydra([f"hydra/launcher={path.stem}"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    own = OmegaConf.to_container(OmegaConf.load(path))
    own.pop("defaults", None)
    assert own, f"{path} sets nothing"
    assert {k: launcher[k] for k in own} == own
    assert launcher["_target_"].startswith("hydra_plugins.sweep_sft_submitit.launcher.")
    if launcher["_target_"].endswith("SlurmLauncher"):
        assert launcher["max_num_timeout"] > 0, "a checkpointed job must be requeued after its time limit"
        assert launcher["partition"] is None or isinstance(launcher["partition"], str)
    from hydra.utils import instantiate

    instantiate(cfg.hydra.launcher)  # builds (no jobs launched)


def test_slurm_local_profile_builds_on_slurm() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm_local", "hydra.launcher.retries=2"])
    assert cfg.hydra.launcher.partition == "debug" and cfg.hydra.launcher.cpus_per_task == 1
    assert cfg.hydra.launcher.retries == 2
    assert cfg.hydra.launcher.additional_parameters == {}  # from slurm.yaml


def test_launcher_profile_rejects_unknown_key() -> None:
    with pytest.raises(Exception, match="hydra.launcher.partitoin|partitoin"):
        compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partitoin=gpu"])


def test_default_sweeper_is_our_grid() -> None:
    cfg = compose_with_hydra([])
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.sweep_sft_grid.grid_sweeper.GridSweeper"
    assert cfg.hydra.sweeper.max_failure_rate == 0.5
    assert compose_with_hydra(["hydra/sweeper=basic"]).hydra.sweeper._target_.endswith(".BasicSweeper")


@pytest.mark.parametrize(
    "path", [p for p in OPTION_FILES if mandatory_keys(p)], ids=lambda p: p.relative_to(CONF).as_posix()
)
def test_option_without_its_mandatory_values_is_rejected(path: Path) -> None:
    cfg = compose([option_override(path)])
    first = mandatory_keys(path)[0]
    with pytest.raises(ConfigError, match=re.escape(first.rsplit(".", 1)[1])):
        validate(cfg)


# -- 2. the schema rejects unknown keys and wrong types at composition -----------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [("optimizer.foo=1", "foo"), ("trainer.batch_size=abc", "trainer.batch_size")],
)
def test_compose_rejects_bad_key_or_type(override: str, key: str) -> None:
    with pytest.raises(Exception, match=re.escape(key)):
        compose([override])


@pytest.mark.parametrize(("override", "key"), [("+optimizer.foo=1", "optimizer.foo"), ("+foo=1", "foo")])
def test_appended_unknown_key_is_rejected(override: str, key: str) -> None:
    with pytest.raises(Exception, match=re.escape(key)):
        validate(compose([override]))


# -- 3. value checks name the full key --------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["lr=-1"], "optimizer.lr"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["grad_accum=0"], "trainer.grad_accum"),
        (["trainer.grad_accum=0"], "trainer.grad_accum"),
        (["epochs=0"], "trainer.epochs"),
        (["epochs=-1"], "trainer.epochs"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["scheduler.warmup_ratio=0.1", "scheduler.warmup_steps=10"], "scheduler.warmup_steps"),
        (["data.loss_on=bogus"], "data.loss_on"),
        (["trainer.precision=fp8"], "trainer.precision"),
        (["eval.pass_k=-1"], "eval.pass_k"),
        (["eval.pass_k=4", "eval.samples=2"], "eval.samples"),
        (["eval.temperature=0"], "eval.temperature"),
        (["eval.pass_k_examples=0"], "eval.pass_k_examples"),
        (["eval.train_recall_examples=-1"], "eval.train_recall_examples"),
        (["eval.em_tolerance=-0.1"], "eval.em_tolerance"),
        (["eval.baseline_run_id=' '"], "eval.baseline_run_id"),
        # nan passes `value < low` and inf overflows later: every float knob wants a finite number
        (["lr=nan"], "optimizer.lr"),
        (["lr=inf"], "optimizer.lr"),
        (["optimizer.weight_decay=nan"], "optimizer.weight_decay"),
        (["optimizer.eps=0"], "optimizer.eps"),
        (["optimizer.eps=nan"], "optimizer.eps"),
        (["trainer.grad_clip=nan"], "trainer.grad_clip"),
        (["trainer.num_threads=0"], "trainer.num_threads"),
        (["eval.temperature=inf"], "eval.temperature"),
        (["eval.loss_tolerance=nan"], "eval.loss_tolerance"),
        (["tracking.outage_timeout_s=inf"], "tracking.outage_timeout_s"),
        (["tracking.experiment=' '"], "tracking.experiment"),
        (["data.dedup.near_threshold=1.5"], "data.dedup.near_threshold"),
        (["data.dedup.near_threshold=nan"], "data.dedup.near_threshold"),
        (["data.mix.sources.embedded.weight=nan"], "data.mix.sources.embedded.weight"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_validate_rejects_bad_value(overrides: list[str], key: str) -> None:
    cfg = compose(overrides)
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(cfg)


# -- 4. short names and full paths agree ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "short", "full", "value"),
    [
        (["lr=2e-5"], "lr", "optimizer.lr", 2e-5),
        (["optimizer.lr=3e-5"], "lr", "optimizer.lr", 3e-5),
        (["lr=1e-4", "optimizer.lr=3e-5"], "lr", "optimizer.lr", 3e-5),
        (["grad_accum=4"], "grad_accum", "trainer.grad_accum", 4),
        (["trainer.grad_accum=4"], "grad_accum", "trainer.grad_accum", 4),
        (["epochs=5"], "epochs", "trainer.epochs", 5),
        (["trainer.epochs=5"], "epochs", "trainer.epochs", 5),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_short_name_and_full_path_agree(overrides: list[str], short: str, full: str, value: float) -> None:
    default = validate(compose([]))
    assert getattr(default, short) != value, "pick a value that differs from the default"
    config = validate(compose(overrides))
    section, name = full.split(".")
    assert getattr(getattr(config, section), name) == value
    assert getattr(config, short) == value


# -- 5. the messages of value errors (the CLI: tests/integration/config/test_config_cli.py) --------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=nan", "optimizer.lr must be a finite number >= 0, got nan"),
        ("optimizer.eps=0", "optimizer.eps must be a finite number > 0, got 0.0"),
        ("data.dedup.near_threshold=1.5", "data.dedup.near_threshold must be a finite number in [0, 1], got 1.5"),
    ],
)
def test_value_errors_name_the_allowed_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose([override]))


# -- 6. the model's files, checked before the data is read (no torch, no transformers) --------


def test_early_model_checks_accept_the_embedded_model_and_hub_ids() -> None:
    from sweep_sft.embedded.build import embedded_model
    from sweep_sft.modeling import check_chat_template, check_model_folder

    folder = embedded_model()
    check_model_folder(str(folder))
    check_chat_template(str(folder / "chat_template.jinja"))  # with transformers' {% generation %} tag
    for hub_id in ("gpt2", "Qwen/Qwen2.5-0.5B-Instruct"):
        check_model_folder(hub_id)  # not a local path: left to from_pretrained


@pytest.mark.parametrize(
    "tokenizer_files",
    [
        ["tokenizer.json", "tokenizer_config.json"],  # a fast tokenizer (Llama 3, Qwen 2, SmolLM)
        ["tokenizer_config.json"],  # byte-level (ByT5) or remote-code ones
        ["tokenizer.model"],  # sentencepiece (Llama 2, Mistral v1, Gemma)
        ["sentencepiece.bpe.model"],  # XLM-R style
        ["qwen.tiktoken"],  # Qwen 1 (remote code)
        ["tekken.json"],  # Mistral's tekken
        ["vocab.json", "merges.txt"],  # GPT-2 style BPE
    ],
)
def test_early_model_checks_accept_the_tokenizer_layouts_of_real_models(tmp_path: Path, tokenizer_files) -> None:
    from sweep_sft.modeling import check_model_folder

    for name in ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", *tokenizer_files]:
        (tmp_path / name).write_text("{}")
    check_model_folder(str(tmp_path))


def test_early_model_checks_name_the_file_and_what_is_missing(tmp_path: Path) -> None:
    from sweep_sft.modeling import check_chat_template, check_model_folder

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "generation_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"lacks config.json; weights \(\*.safetensors or \*.bin\); tokenizer files"):
        check_model_folder(str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="no such folder"):
        check_model_folder("./models/missing")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}\n{% generation %}{{ m.content }}{% endgeneration %}\n{% endif %}")
    with pytest.raises(ConfigError, match=re.escape(f"{template}:3: Jinja syntax error")):
        check_chat_template(str(template))


# -- 7. model presets: each sets its model's starting values; the command line and sweep presets win --


MODEL_PRESETS = sorted((CONF / "model").glob("*.yaml"))
LOCAL = ["model=local", f"model.name_or_path={DUMMY}"]


def test_the_default_trial_composes_as_before_the_model_presets() -> None:
    """Every value of the default trial's config as it resolved before the presets set starting
    values (a snapshot taken then); keys added since are allowed."""
    before = leaves(OmegaConf.to_container(OmegaConf.load(Path(__file__).parent / "default_config.yaml")))
    now = leaves(OmegaConf.to_container(compose([]), resolve=True))
    assert {key: now.get(key, "<missing>") for key in before} == before
    assert validate(compose([])).trainer.defaults_for == "embedded"


def test_every_model_preset_is_global_and_names_its_values() -> None:
    # Global, so a preset can set the root's short names (lr, epochs, grad_accum), not only `model`.
    assert {p.stem for p in MODEL_PRESETS} >= {"embedded", "local"}
    for path in MODEL_PRESETS:
        assert is_global(path), path
        assert OmegaConf.load(path).trainer.defaults_for == path.stem, path


def test_model_local_starts_from_a_full_fine_tunes_values() -> None:
    config = validate(compose(LOCAL))
    assert (config.lr, config.optimizer.lr, config.epochs, config.trainer.epochs) == (2e-5, 2e-5, 2, 2)
    assert (config.trainer.batch_size, config.grad_accum, config.trainer.grad_accum) == (4, 8, 8)
    assert (config.scheduler.name, config.scheduler.warmup_ratio) == ("cosine", 0.1)
    assert (config.eval.batch_size, config.eval.max_new_tokens) == (16, 256)
    assert (config.eval.train_recall_examples, config.eval.pass_k_examples) == (8, 16)
    assert config.trainer.stop_on_divergence and config.trainer.defaults_for == "local"
    toy = validate(compose([]))
    assert (toy.optimizer.lr, toy.trainer.epochs, toy.trainer.batch_size, toy.eval.batch_size) == (1e-3, 3, 32, 128)
    assert not toy.trainer.stop_on_divergence


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("lr=1e-5", "optimizer.lr", 1e-5),
        ("optimizer.lr=3e-5", "optimizer.lr", 3e-5),
        ("epochs=3", "trainer.epochs", 3),
        ("trainer.epochs=1", "trainer.epochs", 1),
        ("grad_accum=16", "trainer.grad_accum", 16),
        ("trainer.batch_size=2", "trainer.batch_size", 2),
        ("scheduler.warmup_ratio=0.03", "scheduler.warmup_ratio", 0.03),
        ("scheduler=linear", "scheduler.name", "linear"),
        ("eval.batch_size=4", "eval.batch_size", 4),
        ("eval.max_new_tokens=512", "eval.max_new_tokens", 512),
        ("trainer.stop_on_divergence=false", "trainer.stop_on_divergence", False),
    ],
)
def test_the_command_line_wins_over_the_model_preset(override: str, key: str, value: Any) -> None:
    config = compose([*LOCAL, override])
    assert OmegaConf.select(config, key) == value
    validate(config)


@pytest.mark.parametrize("path", SWEEP_PRESETS, ids=lambda p: p.stem)
def test_a_sweep_preset_wins_over_the_model_preset(path: Path) -> None:
    """The preset's own job values (epochs 1, batch 4, ...) are the ones composed with model=local."""
    cfg = compose([*LOCAL, f"sweep={path.stem}"])
    own = OmegaConf.to_container(OmegaConf.load(path))
    expected = {k: v for k, v in leaves(own).items() if not k.startswith("hydra.") and k != "defaults"}
    assert {key: plain(OmegaConf.select(cfg, key)) for key in expected} == expected
    config = validate(cfg)
    # What the sweep preset leaves alone stays model=local's.
    assert config.trainer.defaults_for == "local" and config.eval.batch_size == 16


def test_a_sweep_over_the_short_names_overrides_the_model_preset_in_each_job() -> None:
    """`python -m sweep_sft -m model=local ... lr=1e-5,1e-4`: each job as Hydra's launcher composes it."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sweep_sft.config.compose import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [*LOCAL, "lr=1e-5,1e-4", "epochs=1"], run_mode=RunMode.MULTIRUN)
        jobs = [loader.load_sweep_config(master, [*LOCAL, f"lr={lr}", "epochs=1"]) for lr in ("1e-5", "1e-4")]
    assert [(j.optimizer.lr, j.trainer.epochs, j.trainer.grad_accum) for j in jobs] == [(1e-5, 1, 8), (1e-4, 1, 8)]
