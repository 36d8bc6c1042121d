"""A Hydra app whose "trial" is a known monotone function of lr: general_drop crosses 0.02 at
lr = 3.7e-4. It writes metrics.json as sweep_sft trials do. With KILL_ONCE=<file>, the first
job at or above lr 1e-3 kills the whole sweep process (once), to test resuming."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig


@dataclass
class Trainer:
    seed: int = 0


@dataclass
class App:
    lr: float = 1e-3
    trainer: Trainer = field(default_factory=Trainer)


ConfigStore.instance().store(name="app", node=App)


@hydra.main(version_base="1.3", config_path=None, config_name="app")
def main(cfg: App) -> float:
    kill = os.environ.get("KILL_ONCE")
    if kill and cfg.lr >= 1e-3 and not Path(kill).exists():
        Path(kill).touch()
        os._exit(9)
    if cfg.lr > 9e-4:
        raise RuntimeError("diverged")
    drop = 0.02 * (cfg.lr / 3.7e-4) ** 1.5 + 0.001 * cfg.trainer.seed
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "metrics.json").write_text(json.dumps({"metrics": {"general_drop": drop}}))
    return drop


if __name__ == "__main__":
    main()
