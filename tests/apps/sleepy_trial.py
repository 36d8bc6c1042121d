"""A Hydra app whose "trial" writes its pid to `pid` in its job folder, then sleeps `sleep_s`
seconds: a long trial, light on CPU, to test what becomes of running jobs. With
`+ignore_sigint=true` it ignores SIGINT (a trial stuck in a long op): only SIGKILL ends it."""

import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    if cfg.get("ignore_sigint", False):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "pid").write_text(str(os.getpid()))
    time.sleep(float(cfg.get("sleep_s", 300)))
    return 1.0


if __name__ == "__main__":
    main()
