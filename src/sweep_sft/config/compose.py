"""The schema registered with Hydra, and configs composed by Hydra from conf/ as `python -m sweep_sft` does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

from sweep_sft.config.data import check_tree_overrides
from sweep_sft.config.schema import Config


def register_configs() -> None:
    """Register the schema so conf/config.yaml can name it in its defaults list."""
    schema = OmegaConf.structured(Config)
    # OmegaConf's merge keeps an existing value over a `???`, so a group file can only make
    # these mandatory (model/local, tracking/server) if the schema leaves them unset.
    for key in ("model.name_or_path", "tracking.uri"):
        OmegaConf.update(schema, key, MISSING)
    # Dict merges are unions: the data group file, not the schema, names the sources.
    schema.data.mix.sources = {}
    # Ratio and repeat trees, the source table and the scorer patterns take new keys without `+`
    # (data.mix.task_ratio.reasoning.addition=0.3, 'eval.scorers={summ*: chrf}'); everything else stays strict.
    mappings = (schema.data.mix.task_ratio, schema.data.mix.task_repeat, schema.data.mix.sources, schema.eval.scorers)
    for node in mappings:
        OmegaConf.set_struct(node, False)
    ConfigStore.instance().store(name="config_schema", node=schema)


def config_dir() -> str:
    """The package's conf/ folder, the root of every composed config."""
    return str(Path(__file__).parents[1] / "conf")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The root config with overrides, composed by Hydra as `python -m sweep_sft` would
    (without the hydra node), for tests and scripts that call run_trial directly."""
    check_tree_overrides(list(overrides or []))
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def task_overrides(hydra: DictConfig) -> list[str]:
    """The command line's overrides (`hydra.overrides.task`, given the hydra node) as Hydra hands
    them to the sweeper: unresolved, so that a `${hydra:job.num}` in one resolves in each job's
    config, not in the sweep's (where no job is set and the resolver fails)."""
    return list(OmegaConf.to_container(hydra.overrides.task, resolve=False))
