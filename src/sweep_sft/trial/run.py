"""One SFT trial, callable without Hydra: run_trial(cfg) trains, evaluates, records, and
returns the objective named by `cfg.objective`."""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep_sft.config.schema import ALIASES, Config, EvalConfig
from sweep_sft.config.validate import validate
from sweep_sft.data.pipeline import load_sources
from sweep_sft.data.records import task_types
from sweep_sft.errors import ConfigError
from sweep_sft.names import ERROR_TAG, METRICS_FILE, MODEL_DIR, OUTPUT_DIR_TAG, SAVE_ERROR_TAG, TRIAL_STATE_TAG
from sweep_sft.tracking.client import TrackingError

# The trained model's folder inside the trial's output folder (trainer.save_model).
# On a run whose model could not be saved (its results are recorded all the same).


@dataclass
class TrialResult:
    objective: str
    value: float
    metrics: dict[str, float]
    output_dir: str
    run_id: str | None = None
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    # COMPLETE, or PRUNED when the study's pruner stopped it (at `steps`).
    state: str = "COMPLETE"
    steps: int = 0
    # Loss-curve findings (sweep_sft.diagnostics.findings.Finding as dicts) of a completed trial.
    diagnostics: list[dict] = field(default_factory=list)


def run_trial(
    cfg: DictConfig | Config,
    output_dir: str | Path | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> TrialResult:
    from sweep_sft.train.preemption import Preemption

    # Inside a submitit job, a preemption/time-limit signal is deferred to a step boundary.
    with Preemption() as preemption:
        return _run_trial(cfg, output_dir, run_name, parent_run_id, preemption)


def _run_trial(cfg, output_dir, run_name, parent_run_id, preemption) -> TrialResult:
    started = time.perf_counter()
    config = validate(cfg)
    out = Path(output_dir or config.output_dir or "outputs/trial")
    check_early(config, out)
    from sweep_sft.train.checkpoint import check_resume, find_resume

    checkpointable = _checkpointable(config)
    if not checkpointable:
        preemption.release()  # no checkpoint to write: submitit requeues at once
    resume_from = find_resume(config.trainer.resume, out) if checkpointable else None
    if resume_from is not None:
        check_resume(resume_from, config)
    sources = load_sources(config)
    check_objective(
        config.objective,
        sorted({e.task_type for examples in sources[0].values() for e in examples} | set(task_types(sources[1]))),
        config.eval,
    )
    from sweep_sft.evaluate.baseline import load_baseline

    baseline = load_baseline(config)

    import torch

    from sweep_sft.train import distributed

    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    _seed_everything(config.trainer.seed)
    # Several ranks (torchrun, or submitit tasks_per_node>1): rank 0 alone records.
    dist_env = distributed.setup(config.trainer.device, need_group=config.deepspeed is not None)
    try:
        return _train_and_record(
            cfg, config, out, run_name, parent_run_id, preemption, started, sources, resume_from, dist_env, baseline
        )
    finally:
        distributed.teardown(dist_env)


def _train_and_record(
    cfg,
    config: Config,
    out: Path,
    run_name,
    parent_run_id,
    preemption,
    started,
    sources,
    resume_from,
    dist_env,
    baseline,
) -> TrialResult:
    from sweep_sft import modeling
    from sweep_sft.data.pipeline import mix_table, prepare
    from sweep_sft.evaluate import general_probe
    from sweep_sft.evaluate.final import final_evaluation, validation_loss
    from sweep_sft.sweep.study import TrialPruned
    from sweep_sft.tracking.client import flatten
    from sweep_sft.tracking.requeue import open_run
    from sweep_sft.train import distributed
    from sweep_sft.train.checkpoint import Checkpoints
    from sweep_sft.train.loop import train

    device = distributed.device_for(dist_env, torch_device(config.trainer.device))
    path = modeling.resolve_model_path(config.model)
    tokenizer = modeling.load_tokenizer(config.model, path)
    eot_id = tokenizer.convert_tokens_to_ids(modeling.end_of_turn(config.model, tokenizer))
    data = prepare(config, tokenizer, eot_id, sources)
    tasks = data.tasks
    model = modeling.load_model(config.model, path, tokenizer, device)

    resolved = _resolved(cfg, config)
    study = distributed.reporter(config.study, dist_env)
    tracking = config.tracking if dist_env.is_main else replace(config.tracking, enabled=False)
    tags = {OUTPUT_DIR_TAG: str(out.resolve())}
    run, reopened = open_run(tracking, out, run_name, parent_run_id, tags, resume_from is not None)
    series: dict[str, list[list[float]]] = {}
    checkpoints = (
        Checkpoints(config, out, series, resume_from, preemption, dist_env) if _checkpointable(config) else None
    )
    if checkpoints is not None and hasattr(run, "backfill"):
        checkpoints.on_restore = run.backfill

    def log(metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            series.setdefault(key, []).append([step, value])
        run.log_metrics(metrics, step)

    try:
        stats = data.report
        if not reopened:  # the interrupted attempt logged these into the same run
            run.log_params(flatten({k: v for k, v in resolved.items() if k not in ALIASES}))
            # Not a config key (the launcher decides it), yet the effective batch depends on it.
            run.log_params({"dist.world_size": str(dist_env.world_size)})
            run.log_json(stats, "dataset_stats.json")
            run.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        log(_mix_metrics(stats), 0)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        (out / "dataset_stats.json").write_text(json.dumps(stats, indent=2))
        print(mix_table(stats))

        base = general_probe.base_scores(path, lambda: model, tokenizer, device) if config.eval.general_probe else None

        def evaluate(step: int) -> dict[str, float]:
            metrics = validation_loss(
                model,
                data.val_rows,
                tasks,
                device,
                config.eval.batch_size,
                tokenizer.pad_token_id,
                config.trainer.precision,
            )
            log(metrics, step)
            if study is not None:
                study.report(step, metrics)
            return metrics

        try:
            state = train(
                model,
                data.train_rows,
                tasks,
                config,
                device,
                tokenizer.pad_token_id,
                log,
                evaluate,
                dist_env,
                checkpoints,
            )
        except TrialPruned as pruned:
            # A pruned trial is a result, not an error: record it as such and skip the final evals.
            run.set_tag(TRIAL_STATE_TAG, "PRUNED")
            log({"time/total_s": time.perf_counter() - started}, pruned.step)
            result = _record(config, out, run, series, "PRUNED", pruned.step, dist_env.is_main)
            print(f"pruned by the study at step {pruned.step}: {config.study.metric} = {pruned.value:.4f}")
            run.finish("KILLED")
            return result
        final: dict[str, float] = {"time/train_s": state.seconds}
        scores, samples = final_evaluation(
            model, tokenizer, data.val_examples, data.train_rows, config, device, eot_id, base
        )
        final.update(scores)
        if samples:
            run.log_json(samples, "generations_sample.json")
        final["time/total_s"] = time.perf_counter() - started
        log(final, state.step)
        if baseline is not None and dist_env.is_main:
            from sweep_sft.evaluate import baseline as baseline_comparison

            log(
                baseline_comparison.record(config, baseline, final_values(series), out, run),
                state.step,
            )
        run.set_tag(TRIAL_STATE_TAG, "COMPLETE")
        findings = _diagnose(config, series, run) if dist_env.is_main else []
        result = _record(config, out, run, series, "COMPLETE", state.step, dist_env.is_main, findings)
        if config.trainer.save_model and dist_env.is_main:  # after the results are safe
            _save_model(config, model, tokenizer, out, run)
        print(summary_table(result, tasks, stats))
        run.finish("FINISHED")
        return result
    except BaseException as exc:
        if preemption.handed_over and isinstance(exc, SystemExit):
            _leave_running(run)
            raise
        run.set_tag(ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        try:
            run.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except TrackingError as tracking_error:  # keep the trial's own error the one raised
            print(f"warning: {tracking_error}", file=sys.stderr)
        raise


def check_early(config: Config, out: Path) -> None:
    """What can be checked before the data is read and torch imported: the output folder
    (created here) and the model's files."""
    from sweep_sft.modeling import check_model

    make_output_dir(out)
    check_model(config.model)


def make_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out}: is a file; expected a folder for the trial's outputs (made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file as a parent folder, no permission, a read-only disk
        raise ConfigError(f"output_dir={out}: cannot create the folder: {exc.strerror or exc}") from exc


def _checkpointable(config: Config) -> bool:
    """Checkpoints cover trials without DeepSpeed (one rank or several) and DeepSpeed ZeRO
    stages 0-2; asking for them (or for a resume) with ZeRO-3 is an error."""
    if config.deepspeed is None or config.deepspeed.zero_stage < 3:
        return True
    asked = {"trainer.checkpoint_every": config.trainer.checkpoint_every}
    if config.trainer.resume not in ("auto", "never"):
        asked["trainer.resume"] = config.trainer.resume
    if config.trainer.checkpoint_every or len(asked) > 1:
        key, value = next((k, v) for k, v in reversed(asked.items()) if v)
        raise ConfigError(
            f"{key}={value}: checkpoints are not written or read for DeepSpeed ZeRO-3 trials "
            f"(deepspeed.zero_stage={config.deepspeed.zero_stage}); set trainer.checkpoint_every=0 and "
            "trainer.resume=auto, or use deepspeed.zero_stage<=2"
        )
    return False


def _save_model(config: Config, model, tokenizer, out: Path, run) -> None:
    """The trained weights and the tokenizer (with its added tokens and chat template), loadable
    with from_pretrained like any model; logged to the run only when asked (tracking.log_model)."""
    if config.deepspeed is not None and config.deepspeed.zero_stage == 3:
        print("trainer.save_model: not saved under DeepSpeed ZeRO-3 (the weights are partitioned across ranks)")
        return
    from transformers.utils import logging as hf_logging

    folder = out / MODEL_DIR
    hf_logging.disable_progress_bar()  # one tiny shard: a progress bar is noise in the trial's log
    try:
        model.save_pretrained(folder)
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


def _leave_running(run) -> None:
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


def _diagnose(config: Config, series: dict, run) -> list[dict]:
    """Loss-curve signs of the finished trial: printed, and tags on its run (`diagnostics.<sign>`,
    `diagnostics.count`) so runs can be filtered on them in the MLflow UI."""
    from sweep_sft.diagnostics.findings import as_tags, format_findings
    from sweep_sft.diagnostics.signs import diagnose

    findings = diagnose(series, config=config.diagnostics)
    print(format_findings(findings))
    for key, value in as_tags(findings).items():
        run.set_tag(key, value)
    return [asdict(f) for f in findings]


def _record(
    config: Config,
    out: Path,
    run,
    series: dict,
    state: str,
    steps: int,
    write: bool = True,
    findings: list[dict] | None = None,
) -> TrialResult:
    """The trial's final values into metrics.json (what sweepers read) and the MLflow run."""
    metrics = final_values(series)
    # A pruned trial reports the metric it was judged on; its final evals never ran.
    name = config.study.metric if state == "PRUNED" else config.objective
    value = objective_value(name, metrics)
    result = TrialResult(name, value, metrics, str(out), run.run_id, series, state, steps, findings or [])
    if write:  # rank 0 only: one metrics.json per trial, whatever its number of processes
        (out / METRICS_FILE).write_text(json.dumps(asdict(result), indent=1))
    run.log_json({"objective": name, "value": value, "state": state, "steps": steps}, "objective.json")
    return result


def final_values(series: dict[str, list[list[float]]]) -> dict[str, float]:
    """The last logged value of every series: a trial's final metrics."""
    return {key: values[-1][1] for key, values in series.items()}


def _mix_metrics(report: dict[str, dict]) -> dict[str, float]:
    """The realised mix as metrics, so runs can be compared on it in the MLflow UI."""
    out: dict[str, float] = {}
    for task, s in report.items():
        out[f"data/examples/{task}"] = s["examples"]
        out[f"data/example_share/{task}"] = s["example_share"]
        out[f"data/token_share/{task}"] = s["token_share"]
    return out


def metric_names(tasks: list[str], ev: EvalConfig | None = None) -> list[str]:
    """Every metric a trial with these eval settings reports at its end (objective checks
    before training)."""
    ev = ev or EvalConfig()
    per_task = ["val/loss", "val/answer_logprob", "train/loss"]
    if ev.generate:
        per_task.append("task/exact_match")
        if ev.train_recall_examples:
            per_task.append("task/train_recall")
        if ev.pass_k:
            per_task += [f"task/pass_at_{ev.pass_k}", "task/sample_match"]
    overall = ["time/train_s", "time/total_s"]
    if ev.general_probe:
        overall += ["general/score", "general/loss", "general/exact_match", "general_drop"]
    return per_task + overall + [f"{p}/{task}" for task in tasks for p in per_task]


def _switched_off(name: str, ev: EvalConfig) -> str | None:
    """The eval setting that keeps a known metric from being measured, if that is why it is missing."""
    family = name if name.startswith("general") else "/".join(name.split("/")[:2])
    if family == "task/exact_match" or family.startswith(("task/train_recall", "task/pass_at_", "task/sample_")):
        if not ev.generate:
            return "eval.generate=false"
    if family == "task/train_recall" and not ev.train_recall_examples:
        return "eval.train_recall_examples=0"
    if family.startswith("task/pass_at_") or family == "task/sample_match":
        if not ev.pass_k:
            return "eval.pass_k=0"
        if family.startswith("task/pass_at_") and family != f"task/pass_at_{ev.pass_k}":
            return f"eval.pass_k={ev.pass_k} (it measures task/pass_at_{ev.pass_k})"
    if family.startswith("general") and not ev.general_probe:
        return "eval.general_probe=false"
    return None


def check_objective(name: str, tasks: list[str], ev: EvalConfig | None = None) -> None:
    ev = ev or EvalConfig()
    names = metric_names(tasks, ev)
    if name in names:
        return
    off = _switched_off(name, ev)
    if off:
        raise ConfigError(f"objective={name}: not measured with {off}; measure it or choose another objective")
    raise ConfigError(f"objective: unknown metric {name!r}; the metrics are: {', '.join(names)}")


def objective_value(name: str, metrics: dict[str, float]) -> float:
    if name not in metrics:
        raise ConfigError(
            f"objective: metric {name!r} was not produced by this trial (is its evaluation switched off?); "
            f"produced: {', '.join(sorted(metrics))}"
        )
    return metrics[name]


def _resolved(cfg: DictConfig | Config, config: Config) -> dict:
    node = OmegaConf.structured(config) if isinstance(cfg, Config) else cfg
    container = OmegaConf.to_container(node, resolve=True)
    for short, full in ALIASES.items():  # a full-path override wins: show one value
        container[short] = OmegaConf.select(OmegaConf.create(container), full)
    return container


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def torch_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but torch sees no CUDA device")
    return torch.device(name)


def task_table(metrics: dict[str, float], tasks: list[str], stats: dict[str, dict] | None = None) -> str:
    """Per task_type: training examples, val loss, exact match, and where measured pass@k and
    recall on trained prompts (recall high but exact match low: learned, not generalising)."""
    from sweep_sft.compare import pass_ks

    k = max(pass_ks(metrics), default=None)
    columns = [("val loss", "val/loss", ".3f", 10), ("exact match", "task/exact_match", ".2f", 13)]
    if k:
        columns.append((f"pass@{k}", f"task/pass_at_{k}", ".2f", 9))
    if "task/train_recall" in metrics:
        columns.append(("train recall", "task/train_recall", ".2f", 14))
    head = f"{'task_type':<26}" + (f"{'train ex':>9}" if stats is not None else "")
    lines = ["", head + "".join(f"{name:>{width}}" for name, _, _, width in columns)]

    def cells(suffix: str) -> str:
        values = [(metrics.get(f"{key}{suffix}"), fmt, width) for _, key, fmt, width in columns]
        return "".join(f"{'-' if v is None else format(v, fmt):>{w}}" for v, fmt, w in values)

    for task in tasks:
        examples = f"{stats.get(task, {}).get('examples', 0):>9}" if stats is not None else ""
        lines.append(f"{task:<26}{examples}{cells('/' + task)}")
    lines.append(f"{'all':<26}{'':>9}{cells('')}" if stats is not None else f"{'all':<26}{cells('')}")
    return "\n".join(lines)


def summary_table(result: TrialResult, tasks: list[str], stats: dict[str, dict[str, int]]) -> str:
    m = result.metrics
    first_val = result.series.get("val/loss", [[0, float("nan")]])[0][1]
    lines = [task_table(m, tasks, stats)]
    lines.append(
        f"val/loss {first_val:.3f} at step 0 -> {m.get('val/loss', float('nan')):.3f}; "
        f"train {m.get('time/train_s', 0):.1f}s, total {m.get('time/total_s', 0):.1f}s"
    )
    lines += general_lines(m)
    lines.append(
        f"objective {result.objective} = {result.value:.4f}; outputs in {result.output_dir}"
        + (f"; mlflow run {result.run_id}" if result.run_id else "")
    )
    return "\n".join(lines)


def general_lines(m: dict[str, float]) -> list[str]:
    if "general_drop" not in m:
        return []
    return [
        f"general probe: base {m['general/base_score']:.3f} -> trained {m['general/score']:.3f} "
        f"(general_drop {m['general_drop']:+.3f})"
    ]
