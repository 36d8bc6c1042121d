"""A Hydra app whose "trial" is a known training curve: the loss at step t is
floor(x) + 2 / (1 + t / 8), floor(x) = (log10(x) + 3.5)^2, so the best x is 10^-3.5 and a bad x
shows early. It reports to the study through sweep_sft.sweep.study (as real trials do) and writes
metrics.json. With FAIL_ABOVE, x above it raises; with KILL_ONCE=<file>, job number KILL_AT
kills the whole sweep process once (to test resuming); with HOLD_ONCE=<file>, the first job
writes its pid there and hangs (to be killed by the test). With SLOW_JOB=<n>, job n sleeps SLOW_S
seconds (default 4) before it starts; every job records when it started and ended (to test
which jobs overlapped)."""

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from sweep_sft.config.schema import StudyLinkConfig
from sweep_sft.sweep.study import TrialPruned, reporter, start_heartbeat

STEPS, EVAL_EVERY = 60, 5


@dataclass
class App:
    x: float = 1e-3
    objective: str = "val/loss"
    study: StudyLinkConfig = field(default_factory=StudyLinkConfig)


ConfigStore.instance().store(name="app", node=App)


def loss(x: float, t: int) -> float:
    return (math.log10(x) + 3.5) ** 2 + 2 / (1 + t / 8)


@hydra.main(version_base="1.3", config_path=None, config_name="app")
def main(cfg: App) -> float:
    started = time.time()
    start_heartbeat(StudyLinkConfig(**cfg.study))
    hold = os.environ.get("HOLD_ONCE")  # <file>: the first job to find it missing writes its pid there and hangs
    if hold:
        try:
            with open(hold, "x") as f:  # exclusive: one job of the sweep holds
                f.write(str(os.getpid()))
            time.sleep(600)
        except FileExistsError:
            pass
    if str(HydraConfig.get().job.num) == os.environ.get("SLOW_JOB"):
        time.sleep(float(os.environ.get("SLOW_S", "4")))
    kill = os.environ.get("KILL_ONCE")
    if kill and HydraConfig.get().job.num == int(os.environ.get("KILL_AT", "3")) and not Path(kill).exists():
        Path(kill).touch()
        os._exit(9)
    if cfg.x > float(os.environ.get("FAIL_ABOVE", "inf")):
        raise RuntimeError(f"diverged at x={cfg.x}")
    out = Path(HydraConfig.get().runtime.output_dir)
    study = reporter(StudyLinkConfig(**cfg.study)) if cfg.study.metric else None
    state, step, series = "COMPLETE", 0, []
    try:
        for step in range(0, STEPS + 1, EVAL_EVERY):
            series.append([step, loss(cfg.x, step)])
            if study is not None:
                study.report(step, {"val/loss": series[-1][1]})
    except TrialPruned:
        state = "PRUNED"
    value = series[-1][1]
    record = {"metrics": {"val/loss": value, "x_error": abs(math.log10(cfg.x) + 3.5)}, "state": state, "steps": step}
    record["series"] = {"val/loss": series}
    record["started"], record["ended"] = started, time.time()
    (out / "metrics.json").write_text(json.dumps(record))
    return value


if __name__ == "__main__":
    main()
