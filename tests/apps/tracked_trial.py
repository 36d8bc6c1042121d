"""A Hydra app whose "trial" records itself in MLflow as sweep_sft trials do (a child run of the
sweep's parent, named by its job number, mlflow_run.json and metrics.json in its folder), with
no training: to test what becomes of a sweep's runs when its controller dies.

The sweep's parent run comes from our callback (sweep_sft.sweep.callback.MlflowParentRun), on
with `+hydra.callbacks.parent._target_=...` as conf/config.yaml sets it. With HOLD_ONCE=<file>,
job number HOLD_AT (default 1) touches the file and then sleeps HOLD_S seconds (default 120) with
its run open and SIGINT ignored, once (a rerun finds the file): the test kills the sweep's
controller meanwhile. Under the optuna5 sweeper it beats the study's heartbeat (study.heartbeat_s);
TRIAL_S makes each trial last that many seconds; LOG_STEPS=n logs n steps of three training
metrics through the trial's Run (the delivery thread real trials use), kept in metrics.json.
With KILL_ONCE=<file> instead, that job kills its own process once, its run open: under Hydra's
basic launcher, the sweep's controller."""

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from sweep_sft.config.schema import StudyLinkConfig, TrackingConfig
from sweep_sft.names import OUTPUT_DIR_TAG, child_run_name
from sweep_sft.sweep.study import start_heartbeat
from sweep_sft.tracking.client import read_parent
from sweep_sft.tracking.requeue import open_run


@dataclass
class App:
    lr: float = 1e-3
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    study: StudyLinkConfig = field(default_factory=StudyLinkConfig)


ConfigStore.instance().store(name="app", node=App)


@hydra.main(version_base="1.3", config_path=None, config_name="app")
def main(cfg: App) -> float:
    hc = HydraConfig.get()
    start_heartbeat(StudyLinkConfig(**cfg.study))
    out = Path(hc.runtime.output_dir)
    parent = read_parent(hc.sweep.dir)
    name = child_run_name(hc.job.num, list(hc.overrides.task), parent.get("swept", []))
    tags = {OUTPUT_DIR_TAG: str(out.resolve())}
    run, _ = open_run(TrackingConfig(**cfg.tracking), out, name, parent.get("run_id"), tags, resuming=False)
    run.log_params({"lr": str(cfg.lr)})
    run.flush()
    hold, kill = os.environ.get("HOLD_ONCE"), os.environ.get("KILL_ONCE")
    once = hold or kill
    if once and hc.job.num == int(os.environ.get("HOLD_AT", "1")) and not Path(once).exists():
        Path(once).write_text(str(os.getpid()))
        if kill:
            os._exit(9)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stuck in a long op: only SIGKILL ends it
        time.sleep(float(os.environ.get("HOLD_S", "120")))
    time.sleep(float(os.environ.get("TRIAL_S", "0")))  # a trial that takes a while (controllers sharing work)
    value = cfg.lr * 100
    series = {"val/loss": [[1, value]]}
    for step in range(int(os.environ.get("LOG_STEPS", "0"))):  # a training loop's logging, no training
        points = {"train/loss": 1.0 / (step + 1), "train/lr": cfg.lr, "train/grad_norm": 0.5 + step % 7}
        run.log_metrics(points, step)
        for key, v in points.items():
            series.setdefault(key, []).append([step, v])
        time.sleep(0.005)
    run.log_metrics({"val/loss": value}, 1)
    record = {"metrics": {"val/loss": value}, "value": value, "series": series}
    (out / "metrics.json").write_text(json.dumps(record))
    run.finish()
    return value


if __name__ == "__main__":
    main()
