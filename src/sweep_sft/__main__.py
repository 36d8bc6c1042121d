"""`python -m sweep_sft`: compose the config with Hydra and run one trial (or a sweep of them)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sweep_sft.config import register_configs
from sweep_sft.errors import UserInputError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sweep_sft.tracking import child_run_name, read_parent
    from sweep_sft.trial import run_trial

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    parent = read_parent(hc.sweep.dir) if multirun else {}
    run_name = cfg.tracking.run_name
    if multirun and not run_name:
        run_name = f"{hc.job.num}: {child_run_name(list(hc.overrides.task), parent.get('swept', []))}"
    try:
        result = run_trial(
            cfg,
            output_dir=cfg.output_dir or hc.runtime.output_dir,
            run_name=run_name,
            parent_run_id=parent.get("run_id"),
        )
    except UserInputError as exc:
        if multirun:  # the sweeper records the failed trial and goes on
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    return result.value


if __name__ == "__main__":
    main()
