"""The arms of bench/sweep_efficiency.py outside our sweepers, on the same objective
(bench/sweep_objective.py) and the same number of slots, all local processes:

- ray_asha: Ray Tune, its ASHA scheduler (time_attr=step, grace period = one evaluation,
  reduction factor 4 as Optuna's SuccessiveHalvingPruner default), `slots` concurrent trials, the
  given points in order (a grid_search over them); ray.init() counts in its wall time as our
  controller's start-up counts in ours;
- optuna_workers: Optuna's own multi-worker pattern: `slots` processes on one JournalStorage file,
  each calling study.optimize() with the same objective and pruner until the study holds n trials
  (MaxTrialsCallback over all but waiting trials); the points are enqueued first, so the workers
  take them in order (a worker that finds the queue empty, another having taken the last point,
  stops without recording a trial).

Each returns (trials, origin, wall_s): trial records as sweep_rows reads them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from pathlib import Path

from sweep_objective import EVAL_EVERY, STEPS, W_RANGE, X_RANGE, Stop, run_curve

HERE = Path(__file__).resolve().parent
# The bench's pruner names -> Optuna's classes, defaults as hydra/sweeper/pruner=<name> has them.
OPTUNA_PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "successive_halving": "SuccessiveHalvingPruner"}


def ray_asha(points: list[dict], slots: int, step_s: float, root: Path) -> tuple[list[dict], float, float]:
    """Ray Tune + ASHAScheduler over the objective; the trials' records from their reports."""
    origin = time.time()
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # Ray's workers unpickle the trainable and import sweep_objective by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(f"  ray.init(): {time.time() - origin:.1f} s (imports included)", file=sys.stderr, flush=True)
    try:
        scheduler = ASHAScheduler(time_attr="step", max_t=STEPS, grace_period=EVAL_EVERY, reduction_factor=4)
        tuner = tune.Tuner(
            _ray_trainable(step_s),
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(
                metric="loss",
                mode="min",
                scheduler=scheduler,
                max_concurrent_trials=slots,
                # not the default: a trial reuses a finished trial's worker process, Ray at its fastest
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=str(root / "ray"), name="asha", verbose=0),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Ray's progress boxes; stdout is the table
            results = tuner.fit()
        wall = time.time() - origin
        trials = [
            _ray_record(r.metrics_dataframe, r.config["point"]) for r in results if r.metrics_dataframe is not None
        ]
    finally:
        ray.shutdown()
    return trials, origin, wall


def _ray_trainable(step_s: float):
    def trainable(config: dict) -> None:
        from ray import tune

        start = time.time()
        run_curve(
            config["point"]["x"],
            config["point"]["w"],
            lambda step, value: tune.report({"loss": value, "step": step, "t_start": start, "t_now": time.time()}),
            step_s,
        )

    return trainable


def _ray_record(frame, point: dict) -> dict:
    """A Ray trial's record from its reports: stopped by ASHA before STEPS means PRUNED."""
    last = frame.iloc[-1]
    steps = int(last["step"])
    state = "COMPLETE" if steps >= STEPS else "PRUNED"
    return {
        "value": float(last["loss"]),
        "state": state,
        "steps": steps,
        "t_start": float(last["t_start"]),
        "t_end": float(last["t_now"]),
        "params": point,
    }


def optuna_workers(
    points: list[dict], slots: int, step_s: float, seed: int, root: Path, pruner: str
) -> tuple[list[dict], float, float]:
    """`slots` processes running study.optimize() on one journal file; the trials from the study."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    origin = time.time()
    path = str(root / f"workers-{pruner}.journal")
    study = optuna.create_study(study_name="workers", storage=JournalStorage(JournalFileBackend(path)))
    for point in points:
        study.enqueue_trial(point)
    spawn = multiprocessing.get_context("spawn")  # fresh processes, as separate workers would be
    procs = [spawn.Process(target=_worker, args=(path, points, step_s, seed + i, pruner)) for i in range(slots)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.time() - origin
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"optuna_workers ({pruner}): workers exited {bad}")
    study = optuna.load_study(study_name="workers", storage=JournalStorage(JournalFileBackend(path)))
    return [_optuna_record(t) for t in study.trials if "t_end" in t.user_attrs], origin, wall


def _worker(path: str, points: list[dict], step_s: float, seed: int, pruner: str) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.study import MaxTrialsCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = {(p["x"], p["w"]) for p in points}
    study = optuna.load_study(
        study_name="workers",
        storage=JournalStorage(JournalFileBackend(path)),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=getattr(optuna.pruners, OPTUNA_PRUNERS[pruner])(),
    )

    def objective(trial) -> float:
        x = trial.suggest_float("x", *X_RANGE, log=True)
        w = trial.suggest_float("w", *W_RANGE)
        if (x, w) not in shared:
            # The queue of shared points ran dry between this worker's check and its ask: not one
            # of the n trials, so not recorded (no t_end), and this worker is done.
            study.stop()
            raise optuna.TrialPruned()

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise Stop

        record = run_curve(x, w, report, step_s)
        for key in ("t_start", "t_end", "steps", "value"):
            trial.set_user_attr(key, record[key])
        if record["state"] == "PRUNED":
            raise optuna.TrialPruned()
        return record["value"]

    counted = tuple(s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.WAITING)
    study.optimize(objective, callbacks=[MaxTrialsCallback(len(points), states=counted)])


def _optuna_record(trial) -> dict:
    a = trial.user_attrs
    return {
        "value": a["value"],
        "state": trial.state.name,
        "steps": a["steps"],
        "t_start": a["t_start"],
        "t_end": a["t_end"],
    }
