"""A sweep rebuilt from its MLflow parent run and child runs (params, metric histories, tags, the
sweeper's result files), for when its folder is gone or on another machine."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from sweep_sft.names import (
    ERROR_TAG,
    GENERATIONS_FILE,
    KIND_TAG,
    OBJECTIVE_FILE,
    OPTUNA_FILE,
    OVERRIDES_TAG,
    RUN_NAME_TAG,
    SANDWICH_FILE,
    SUMMARY_FILE,
    SWEEP_DIR_TAG,
    TRIAL_STATE_TAG,
    run_number,
)
from sweep_sft.report.data import (
    ReportInputError,
    Sweep,
    Trial,
    finish,
    is_sweep_dir,
    load_sweep_dir,
    merge_sweeper_records,
    optuna_direction,
    sample_generations,
    split_override,
    sweeper_name,
)


def load_parent_run(run_id: str, tracking_uri: str) -> Sweep:
    """The parent run's sweep folder if it still exists, else the sweep rebuilt from its child
    runs (params, metric histories, tags) and the sweeper's result the parent run holds."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException as exc:
        raise ReportInputError(f"run {run_id} not found in --tracking-uri {tracking_uri}: {exc.message}") from exc
    tags = parent.data.tags
    if tags.get(KIND_TAG) != "sweep":
        raise ReportInputError(f"run {run_id} is not a sweep's parent run (no tag sweep_sft.kind=sweep)")
    folder = tags.get(SWEEP_DIR_TAG)
    if folder and is_sweep_dir(Path(folder)):
        sweep = load_sweep_dir(folder, source=f"run {run_id}")
        sweep.parent_run_id, sweep.tracking_uri = run_id, tracking_uri
        return sweep
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=10000
    )
    results = _parent_artifacts(client, run_id)
    trials = merge_sweeper_records(
        _trials_from_runs(client, children), results.get(SUMMARY_FILE), results.get(OPTUNA_FILE)
    )
    sweep = Sweep(
        source=f"run {run_id}",
        sweep_dir=None,
        sweeper=sweeper_name({}, results.get(OPTUNA_FILE), results.get(SANDWICH_FILE), results.get(SUMMARY_FILE)),
        swept=[],
        trials=trials,
        parent_run_id=run_id,
        tracking_uri=tracking_uri,
        sandwich=results.get(SANDWICH_FILE),
        optuna=results.get(OPTUNA_FILE),
        summary=results.get(SUMMARY_FILE),
    )
    declared = _swept_from_tag(tags.get(OVERRIDES_TAG, "")) + ([sweep.sandwich["param"]] if sweep.sandwich else [])
    finish(sweep, declared, optuna_direction({}, sweep.optuna))
    return sweep


def _trials_from_runs(client, children) -> dict[int, Trial]:
    """The child runs as trials by job number (from the run name `3: lr=0.001`); a run named
    otherwise takes the next free number. Of two runs with one number the later one counts."""
    trials: dict[int, Trial] = {}
    for child in sorted(children, key=_run_order):
        trial = _trial_from_run(client, child)
        if trial.number < 0:
            trial.number = max(trials, default=-1) + 1
        trials[trial.number] = trial
    return trials


def _run_order(run) -> tuple[int, int]:
    number = run_number(run.data.tags.get(RUN_NAME_TAG, ""))
    return (number if number >= 0 else 1 << 30, run.info.start_time or 0)


def _swept_from_tag(overrides: str) -> list[str]:
    """Command-line sweeps (`lr=1e-4,1e-3`) in the parent's sweep_sft.overrides tag."""
    keys = []
    for item in overrides.split():
        pair = split_override(item)
        if pair and ("," in pair[1] or pair[1].startswith(("range(", "choice(", "interval("))):
            keys.append(pair[0])
    return keys


def _trial_from_run(client, run) -> Trial:
    tags, run_id = run.data.tags, run.info.run_id
    _, _, rest = tags.get(RUN_NAME_TAG, "").partition(": ")
    overrides = re.split(r",(?=[\w.+~/-]+=)", rest) if rest else []
    state = tags.get(TRIAL_STATE_TAG) or {"FINISHED": "COMPLETE"}.get(run.info.status, "FAILED")
    if run.info.status == "FAILED" or ERROR_TAG in tags:
        state = "FAILED"
    series = {
        key: [(float(m.step), float(m.value)) for m in sorted(client.get_metric_history(run_id, key), key=_step)]
        for key in run.data.metrics
    }
    record = _run_artifact(client, run.info.run_id, OBJECTIVE_FILE) or {}
    return Trial(
        number=run_number(tags.get(RUN_NAME_TAG, "")),
        overrides=[o for o in overrides if "=" in o],
        params={},
        state=state if state != "REQUEUED" else "FAILED",
        value=record.get("value"),
        objective=record.get("objective"),
        metrics=dict(run.data.metrics),
        series=series,
        diagnostics=_findings_from_tags(tags),
        error=tags.get(ERROR_TAG),
        steps=record.get("steps"),
        generations=sample_generations(_run_text(client, run_id, GENERATIONS_FILE) or ""),
    )


def _step(metric) -> tuple[int, int]:
    return (metric.step, metric.timestamp)


def _findings_from_tags(tags: dict[str, str]) -> list[dict[str, Any]]:
    """`diagnostics.<sign>` tags ("step 12: evidence (+1 more at steps 40)") as findings."""
    out = []
    for key, text in sorted(tags.items()):
        if not key.startswith("diagnostics.") or key == "diagnostics.count":
            continue
        match = re.match(r"step (\d+): (.*)", text, re.S)
        step, evidence = (int(match.group(1)), match.group(2)) if match else (None, text)
        out.append({"sign": key.split(".", 1)[1], "step": step, "evidence": evidence, "severity": ""})
    return out


def _parent_artifacts(client, run_id: str) -> dict[str, Any]:
    names = {a.path for a in client.list_artifacts(run_id)}
    return {f: _run_artifact(client, run_id, f) for f in (SUMMARY_FILE, OPTUNA_FILE, SANDWICH_FILE) if f in names}


def _run_artifact(client, run_id: str, name: str) -> dict[str, Any] | None:
    text = _run_text(client, run_id, name)
    return None if text is None else json.loads(text)


def _run_text(client, run_id: str, name: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, name, tmp)
        except Exception:  # absent (an old run, a trial that died first): the report goes on without it
            return None
        return Path(local).read_text(encoding="utf-8", errors="replace")
