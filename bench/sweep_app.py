"""The Hydra app of bench/sweep_efficiency.py and bench/sweep_scale.py: a trial is the synthetic
curve of bench/sweep_objective.py (no training), reporting each evaluation to the Optuna study
through sweep_sft.sweep.study like a real trial, and writing metrics.json (metrics, state, steps,
and its own start and end time for the bench's slot-busy share).

    python bench/sweep_app.py -m hydra/sweeper=optuna5 hydra.searchpath=[pkg://sweep_sft.conf] \
        hydra/launcher=slurm_local 'x=tag(log,interval(1e-6,1e-1))' 'w=interval(0,1)'

With BENCH_USAGE_FILE set, the controller (this script's own process, not its jobs) writes there
at exit its CPU seconds (children excluded), its RSS at start and end and its peak RSS.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from sweep_objective import Stop, run_curve

from sweep_sft.config.schema import StudyLinkConfig
from sweep_sft.sweep.study import TrialPruned, reporter

HERE = Path(__file__).resolve().parent


@dataclass
class App:
    x: float = 1e-3
    w: float = 0.5
    step_s: float = 0.05  # sleep per optimizer step
    steps: int = 60
    objective: str = "val/loss"
    study: StudyLinkConfig = field(default_factory=StudyLinkConfig)


ConfigStore.instance().store(name="app", node=App)


@hydra.main(version_base="1.3", config_path=None, config_name="app")
def main(cfg: App) -> float:
    study = reporter(StudyLinkConfig(**cfg.study)) if cfg.study.metric else None

    def report(step: int, value: float) -> None:
        try:
            study.report(step, {"val/loss": value})
        except TrialPruned as exc:
            raise Stop from exc

    record = run_curve(cfg.x, cfg.w, report if study is not None else None, cfg.step_s, cfg.steps)
    out = {
        "metrics": {"val/loss": record["value"]},
        "state": record["state"],
        "steps": record["steps"],
        "timing": {"t_start": record["t_start"], "t_end": record["t_end"]},
        "number": HydraConfig.get().job.num,
        "params": {"x": cfg.x, "w": cfg.w},
    }
    (Path(HydraConfig.get().runtime.output_dir) / "metrics.json").write_text(json.dumps(out))
    return record["value"]


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def record_usage(path: str, rss_start_mb: float) -> None:
    """At exit: this process's own CPU seconds (its children's excluded) and memory, as JSON."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    usage = {
        "cpu_s": own.ru_utime + own.ru_stime,
        "rss_start_mb": rss_start_mb,
        "rss_end_mb": rss_mb(),
        "rss_peak_mb": own.ru_maxrss / 1024,
    }
    Path(path).write_text(json.dumps(usage))


if __name__ == "__main__":
    # Slurm jobs unpickle main() and import sweep_objective by name: sbatch passes this
    # environment on, so they find it wherever they run.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    if os.environ.get("BENCH_USAGE_FILE"):
        atexit.register(record_usage, os.environ["BENCH_USAGE_FILE"], rss_mb())
    main()
