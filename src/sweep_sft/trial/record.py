"""A trial's results kept: metrics.json and the run's objective, the loss-curve findings, the
saved model, and the run left RUNNING for a requeued job."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep_sft import lora
from sweep_sft.compare import Side
from sweep_sft.config.schema import ALIASES, Config
from sweep_sft.diagnostics.findings import SIGNS, Finding, as_tags, format_findings
from sweep_sft.diagnostics.signs import diagnose
from sweep_sft.metrics import final_values, headline_metrics, objective_value
from sweep_sft.names import METRICS_FILE, MODEL_DIR, OBJECTIVE_FILE, SAVE_ERROR_TAG, TRIAL_STATE_TAG
from sweep_sft.trial.state import TrialResult


def record(
    config: Config,
    out: Path,
    run,
    series: dict,
    state: str,
    steps: int,
    write: bool = True,
    findings: list[dict] | None = None,
    measured: Side | None = None,
) -> TrialResult:
    """The trial's final values into metrics.json (what sweepers read) and the MLflow run, with
    what `measured` them (scorers, general probe's set) for comparisons to read back."""
    metrics = final_values(series)
    # A pruned trial reports the metric it was judged on; its final evals never ran.
    name = config.study.metric if state == "PRUNED" else config.objective
    value = objective_value(name, metrics)
    result = TrialResult(name, value, metrics, str(out), run.run_id, series, state, steps, findings or [])
    if measured is not None:
        result.scorers, result.general_source = measured.scorers, measured.general_source
    if write:  # rank 0 only: one metrics.json per trial, whatever its number of processes
        (out / METRICS_FILE).write_text(json.dumps(asdict(result), indent=1))
    if state == "COMPLETE":  # a pruned trial's value is a mid-training one: no headline
        run.log_metrics(headline_metrics(metrics, value), steps)
    run.log_json({"objective": name, "value": value, "state": state, "steps": steps}, OBJECTIVE_FILE)
    return result


def diagnose_series(config: Config, series: dict, run, during: Sequence[Finding] = ()) -> list[dict]:
    """Loss-curve signs of the finished trial, with those found `during` training (a divergence):
    printed, and tags on its run (`diagnostics.<sign>`, `diagnostics.count`) so runs can be
    filtered on them in the MLflow UI."""
    findings = sorted(
        [*diagnose(series, config=config.diagnostics), *during], key=lambda f: (f.step, SIGNS.index(f.sign))
    )
    print(format_findings(findings))
    tag_findings(run, findings)
    return [asdict(f) for f in findings]


def tag_findings(run, findings: list[Finding]) -> None:
    """The findings as the run's tags (a divergence at once, the finished trial's all at the end)."""
    for key, value in as_tags(findings).items():
        run.set_tag(key, value)


def save_model(config: Config, model, tokenizer, out: Path, run) -> None:
    """The trained weights and the tokenizer (with its added tokens and chat template), loadable
    with from_pretrained like any model; logged to the run only when asked (tracking.log_model)."""
    if config.deepspeed is not None and config.deepspeed.zero_stage == 3:
        print("trainer.save_model: not saved under DeepSpeed ZeRO-3 (the weights are partitioned across ranks)")
        return
    from transformers.utils import logging as hf_logging

    folder = out / MODEL_DIR
    hf_logging.disable_progress_bar()  # one tiny shard: a progress bar is noise in the trial's log
    try:
        with _no_deepspeed_unwrap(config.deepspeed is None):
            lora.to_save(config.model.lora, model).save_pretrained(folder)  # LoRA: the adapter alone
        tokenizer.save_pretrained(folder)
    except Exception as exc:  # a full disk must not turn a recorded trial into a failed one
        message = f"trainer.save_model: could not save the model to {folder}: {type(exc).__name__}: {exc}"
        print(f"warning: {message}", file=sys.stderr)
        run.set_tag(SAVE_ERROR_TAG, message[:5000])
        return
    finally:
        hf_logging.enable_progress_bar()
    if config.tracking.log_model:
        run.log_artifacts(folder, MODEL_DIR)


@contextmanager
def _no_deepspeed_unwrap(plain: bool) -> Iterator[None]:
    """While the block runs, with `plain` (no DeepSpeed engine in this trial), accelerate does not
    import deepspeed. save_pretrained unwraps the model through accelerate, which imports deepspeed
    wherever it is installed, only to test isinstance(model, DeepSpeedEngine): seconds of imports
    and DeepSpeed's "Setting accelerator to CPU" warning, for a model that cannot be one."""
    try:
        from accelerate.utils import other
    except ImportError:  # without accelerate, transformers unwraps by itself
        other = None
    if not plain or other is None or not hasattr(other, "is_deepspeed_available"):
        yield
        return
    probe = other.is_deepspeed_available
    other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        other.is_deepspeed_available = probe


def leave_running(run) -> None:
    """Submitit requeued the job: the resumed trial continues this run, so it stays RUNNING."""
    try:
        run.set_tag(TRIAL_STATE_TAG, "REQUEUED")
        if not run.flush():  # the server is down: the resumed attempt sends them from the checkpoint
            print(
                "warning: MLflow server unreachable before the requeue; the resumed trial sends what it lacks",
                file=sys.stderr,
            )
    except Exception as exc:  # the job is requeued already: never turn the exit into a failure
        print(f"warning: could not flush MLflow before the requeue: {exc}", file=sys.stderr)


def resolved(cfg: DictConfig | Config, config: Config) -> dict:
    """The trial's config as recorded (config.yaml, the run's params): resolved, each alias beside its full key."""
    node = OmegaConf.structured(config) if isinstance(cfg, Config) else cfg
    container = OmegaConf.to_container(node, resolve=True)
    for short, full in ALIASES.items():  # a full-path override wins: show one value
        container[short] = OmegaConf.select(OmegaConf.create(container), full)
    return container
