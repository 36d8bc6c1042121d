"""Hydra callback: one MLflow parent run per sweep, whose id every trial finds in the sweep
folder (so jobs on other machines, sharing the folder, find it too)."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweep_sft.config.compose import task_overrides
from sweep_sft.config.schema import TrackingConfig
from sweep_sft.names import KIND_TAG, NOTE_TAG, OVERRIDES_TAG, PARENT_FILE, SWEEP_DIR_TAG, TRIAL_STATE_TAG
from sweep_sft.redact import redact
from sweep_sft.report.data import load_sweep_dir
from sweep_sft.report.html import write_report as write_html
from sweep_sft.report.notes import sweep_note
from sweep_sft.sweep import inflight
from sweep_sft.tracking.client import TrackingError, read_parent, retry_until, tracking_uri
from sweep_sft.tracking.dead_runs import end_cut_off
from sweep_sft.tracking.runs import Run, reopen

log = logging.getLogger(__name__)


def swept_keys(config: DictConfig) -> list[str]:
    """Config keys the sweep varies: command-line sweeps (lr=1e-4,1e-3) and preset params."""
    parsed = OverridesParser.create().parse_overrides(task_overrides(config.hydra))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return sorted(keys | set(params))


class MlflowParentRun(Callback):
    """Hydra callback (conf/config.yaml): the sweep's MLflow parent run, its child counts and its report."""

    def __init__(self) -> None:
        self.run = None
        self.sweep_dir: Path | None = None  # set while a sweep is open: its report is still to write
        self.shared = False  # one of several controllers of a study, sharing its folder

    def __getstate__(self) -> dict[str, Any]:
        # The submitit launcher pickles the callbacks into every job; the open run (a delivery
        # thread, locks) stays with the sweep process, which alone finishes it (and reports).
        return {**self.__dict__, "run": None, "sweep_dir": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the parent run (tracking on; the one the sweep folder names, reopened, when the sweep
        runs again there) and name it in the folder; report at exit either way."""
        tracking = TrackingConfig(**OmegaConf.to_container(config.tracking, resolve=True))
        sweep_dir = Path(config.hydra.sweep.dir)
        self.shared = inflight.shared_folder(config)
        # Run again after its controller was killed: the jobs it left in flight must not race the rerun.
        stopped = inflight.stop_left(sweep_dir, self.shared)
        # A sweep that raises never reaches on_multirun_end: report it, and mark the parent
        # FAILED, then.
        self.sweep_dir = sweep_dir
        atexit.register(self._finish, "FAILED")
        if not tracking.enabled:
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = redact(" ".join(task_overrides(config.hydra)))  # as typed: `${hydra:job.num}` means each job's
        # Controllers of one study starting together: the first creates the parent, the others join it.
        with _folder_lock(sweep_dir) if self.shared else contextlib.nullcontext():
            self.run = _reopened(tracking, sweep_dir, stopped, overrides, self.shared) or Run(
                tracking,
                run_name=f"sweep {sweep_dir.name}",
                tags={KIND_TAG: "sweep", SWEEP_DIR_TAG: str(sweep_dir.resolve()), OVERRIDES_TAG: overrides},
            )
            parent = {"run_id": self.run.run_id, "tracking_uri": self.run.uri, "swept": swept_keys(config)}
            (sweep_dir / PARENT_FILE).write_text(json.dumps(parent))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish("FINISHED")

    def _finish(self, status: str) -> None:
        sweep_dir, self.sweep_dir = self.sweep_dir, None
        run, self.run = self.run, None
        report = write_report(sweep_dir) if sweep_dir is not None else None
        if run is None:
            return
        # The trials are recorded already: a server that is down now must not fail the sweep.
        try:
            run.log_metrics(retry_until(lambda: self._counts(run), run.timeout_s, "count child runs", run.uri), 0)
        except TrackingError as exc:
            log.warning("sweep parent run: %s", exc)
        if report is not None:
            try:
                retry_until(
                    lambda: run.client.log_artifact(run.run_id, str(report)), run.timeout_s, "log report.html", run.uri
                )
            except TrackingError as exc:
                log.warning("sweep parent run: %s; the report stays in %s", exc, report)
        note = describe(sweep_dir, report)
        if note:
            run.set_tag(NOTE_TAG, note)
        if self.shared and sweep_dir is not None:
            with _folder_lock(sweep_dir):  # of controllers ending together, exactly one ends the parent
                inflight.record_file(sweep_dir, True).unlink(missing_ok=True)
                if inflight.others_alive(sweep_dir):
                    run.detach()  # the last controller of the study ends it
                    return
                self._end(run, status)
            return
        self._end(run, status)

    @staticmethod
    def _end(run, status: str) -> None:
        try:
            run.finish(status)
        except TrackingError as exc:
            log.warning("sweep parent run: %s", exc)

    @staticmethod
    def _counts(run) -> dict[str, float]:
        children = run.client.search_runs(
            [run.client.get_run(run.run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'",
        )
        states = [c.info.status for c in children]
        return {
            "sweep/trials": len(states),
            "sweep/finished": states.count("FINISHED"),
            "sweep/failed": states.count("FAILED"),
            "sweep/pruned": sum(c.data.tags.get(TRIAL_STATE_TAG) == "PRUNED" for c in children),
        }


def _reopened(
    tracking: TrackingConfig, sweep_dir: Path, stopped: dict[int, dict], overrides: str, shared: bool = False
) -> Run | None:
    """The parent run the sweep folder names, reopened if it is in this store (one parent per
    sweep folder across reruns), its children the dead controller left RUNNING ended KILLED
    (with several controllers on the study, only those of the jobs `stopped`: the others are live)."""
    named = read_parent(sweep_dir)
    if not named.get("run_id") or named.get("tracking_uri") != tracking_uri(tracking):
        return None
    run = reopen(tracking, named["run_id"], sweep_dir)
    if run is None:
        where = f"{tracking_uri(tracking)}, experiment {tracking.experiment}"
        log.warning(f"{sweep_dir / PARENT_FILE}: run {named['run_id']} is not in {where}: a new parent run")
        return None
    run.set_tag(OVERRIDES_TAG, overrides)
    log.info(f"sweep run again in {sweep_dir}: continuing its MLflow parent run {run.run_id}")
    try:
        ended = retry_until(
            lambda: end_cut_off(run.client, run.run_id, stopped, only_stopped=shared),
            run.timeout_s,
            "end the cut-off runs",
            run.uri,
        )
    except TrackingError as exc:
        log.warning(f"sweep parent run: {exc}")
        return run
    if ended:
        log.warning(f"{len(ended)} run(s) the previous sweep left RUNNING ended KILLED: {', '.join(ended)}")
    return run


def describe(sweep_dir: Path | None, report: Path | None) -> str | None:
    """The parent run's description (sweep_sft.report.notes.sweep_note); a sweep folder that
    cannot be read costs a warning and no description, never the sweep."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return None
    try:
        return sweep_note(load_sweep_dir(sweep_dir), str(report) if report else None)
    except Exception as exc:
        log.warning("sweep parent run: no description: %s: %s", type(exc).__name__, exc)
        return None


def write_report(sweep_dir: Path) -> Path | None:
    """The sweep's report.html in its folder; a report that cannot be made costs a warning,
    never the sweep (its trials are recorded already)."""
    if not sweep_dir.is_dir():  # the sweep died before launching anything
        return None
    try:
        path = write_html(sweep_dir)
    except Exception as exc:
        log.warning("sweep report: could not write %s/report.html: %s: %s", sweep_dir, type(exc).__name__, exc)
        return None
    log.info("sweep report: %s", path)
    return path


@contextlib.contextmanager
def _folder_lock(sweep_dir: Path) -> Iterator[None]:
    """An exclusive lock on the sweep folder (flock on a file in it: a shared file system's lock)."""
    import fcntl

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".parent.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
