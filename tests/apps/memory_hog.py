"""A Hydra app that touches `mb` megabytes, then holds them for 10 s: over its Slurm --mem it is
killed by Slurm (the localhost cluster kills a step over its limit within about 2 s)."""

import time

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    if cfg.get("mb", 0):
        block = bytearray(cfg.mb * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(10)
    return 1.0


if __name__ == "__main__":
    main()
