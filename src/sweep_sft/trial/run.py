"""One SFT trial, callable without Hydra: run_trial(cfg) trains, evaluates, records, and
returns the objective named by `cfg.objective`.

The trial is a recipe of named phases over one TrialState: load (model, tokenizer, data), records
(the run, its params, the data mix), train, evaluate, save; on_prune and on_failure when the study
stops it or anything fails."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep_sft import lora, modeling
from sweep_sft.attention import check_device
from sweep_sft.compare import Side
from sweep_sft.config.schema import ALIASES, Config
from sweep_sft.config.scorers import scorer_names
from sweep_sft.config.validate import validate
from sweep_sft.data.pipeline import load_sources, mix_table, prepare
from sweep_sft.evaluate import baseline as baseline_comparison
from sweep_sft.evaluate import general_probe
from sweep_sft.evaluate.evaluator import Evaluator
from sweep_sft.evaluate.final import final_evaluation, final_validation_loss
from sweep_sft.evaluate.progress import BAR, LINES, QUIET
from sweep_sft.metrics import TOTAL_TIME, TRAIN_TIME, check_objective, final_values, mix_metrics
from sweep_sft.names import CONFIG_FILE, ERROR_TAG, NOTE_TAG, OUTPUT_DIR_TAG, TRIAL_STATE_TAG
from sweep_sft.report.notes import trial_note
from sweep_sft.sweep.study import TrialPruned, start_heartbeat, trial_reporter
from sweep_sft.tracking.client import TrackingError, flatten
from sweep_sft.tracking.requeue import ReopenedRun, open_run
from sweep_sft.train import distributed
from sweep_sft.train.checkpoint import Checkpoints, check_resume, find_resume
from sweep_sft.train.loop import TrainState, total_steps, train
from sweep_sft.train.preemption import Preemption
from sweep_sft.trial.checks import check_early, check_scorers, checkpointable
from sweep_sft.trial.generations import record_generations
from sweep_sft.trial.record import diagnose_series, leave_running, record, resolved, save_model, tag_findings
from sweep_sft.trial.state import Sources, TrialResult, TrialState
from sweep_sft.trial.tables import summary_table


def run_trial(
    cfg: DictConfig | Config,
    output_dir: str | Path | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> TrialResult:
    """Train, evaluate and record one trial; its result (metrics.json's content)."""
    # Inside a submitit job, a preemption/time-limit signal is deferred to a step boundary.
    with Preemption() as preemption:
        trial = _prepare(cfg, output_dir, run_name, parent_run_id, preemption)
        try:
            return _recipe(trial)
        finally:
            distributed.teardown(trial.dist_env)


def _prepare(cfg, output_dir, run_name, parent_run_id, preemption) -> TrialState:
    """Everything checked before the model loads (config, folder, resume, data, objective,
    baseline), then torch seeded and the ranks set up."""
    started = time.perf_counter()
    config = validate(cfg)
    out = Path(output_dir or config.output_dir or "outputs/trial")
    trial = TrialState(cfg, config, out, run_name, parent_run_id, preemption, started)
    check_early(config, out)
    trial.checkpointable = checkpointable(config)
    if not trial.checkpointable:
        preemption.release()  # no checkpoint to write: submitit requeues at once
    trial.resume_from = find_resume(config.trainer.resume, out) if trial.checkpointable else None
    if trial.resume_from is not None:
        check_resume(trial.resume_from, config)
    trial.sources = Sources(*load_sources(config))
    check_objective(config.objective, trial.sources.task_types(), config.eval)
    trained = [e for examples in trial.sources.by_source.values() for e in examples]
    check_scorers(config.eval, trial.sources.task_types(), trial.sources.val, trained)
    trial.baseline = baseline_comparison.load_baseline(config)

    import torch

    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    modeling.seed_everything(config.trainer.seed)
    # Several ranks (torchrun, or submitit tasks_per_node>1): rank 0 alone records.
    trial.dist_env = distributed.setup(config.trainer.device, need_group=config.deepspeed is not None)
    return trial


def _recipe(trial: TrialState) -> TrialResult:
    """The phases in order; a pruned trial is a result, a failure is recorded on the run and raised."""
    _load(trial)
    _open_run(trial)
    try:
        _records(trial)
        _probe_base(trial)
        try:
            trained = _train(trial)
        except TrialPruned as pruned:
            return _on_prune(trial, pruned)
        _evaluate(trial, trained)
        return _save(trial, trained)
    except BaseException as exc:
        _on_failure(trial, exc)
        raise


def _load(trial: TrialState) -> None:
    """The tokenizer and the tokenised data first (bad data costs no model load), then the model on
    this rank's device and the evaluator over them."""
    config = trial.config
    tokenizer = modeling.load_tokenizer(config.model, modeling.resolve_model_path(config.model))
    end_of_turn_id = tokenizer.convert_tokens_to_ids(modeling.end_of_turn(config.model, tokenizer))
    trial.data = prepare(config, tokenizer, end_of_turn_id, trial.sources)
    device = distributed.device_for(trial.dist_env, modeling.torch_device(config.trainer.device))
    precision = modeling.resolve_precision(config.trainer.precision, device)
    check_device(config.model.attn_implementation, device.type, precision)
    _, model = modeling.load(config.model, device, tokenizer=tokenizer)
    trial.evaluator = Evaluator.for_trial(model, tokenizer, device, config)


def _open_run(trial: TrialState) -> None:
    """The trial's run (new, or the interrupted attempt's reopened), its study reporter and checkpoints."""
    config, dist_env = trial.config, trial.dist_env
    trial.resolved = resolved(trial.cfg, config)
    trial.study = trial_reporter(config.study, dist_env)
    if dist_env.is_main:
        start_heartbeat(config.study)
    tracking = config.tracking if dist_env.is_main else replace(config.tracking, enabled=False)
    tags = {OUTPUT_DIR_TAG: str(trial.out.resolve())}
    resuming = trial.resume_from is not None
    trial.run, trial.reopened = open_run(tracking, trial.out, trial.run_name, trial.parent_run_id, tags, resuming)
    if trial.checkpointable:
        trial.checkpoints = Checkpoints(config, trial.out, trial.series, trial.resume_from, trial.preemption, dist_env)
        if isinstance(trial.run, ReopenedRun):  # a restored series sends the points the run lacks
            trial.checkpoints.on_restore = trial.run.backfill


def _records(trial: TrialState) -> None:
    """The run's params and config, the dataset stats and data mix: on the run, in the folder, printed."""
    run, stats, config_yaml = trial.run, trial.data.report, trial.resolved
    if not trial.reopened:  # the interrupted attempt logged these into the same run
        run.log_params(flatten({k: v for k, v in config_yaml.items() if k not in ALIASES}))
        # Not config keys (the launcher and the device decide them), yet the effective batch and
        # the numerics depend on them: trainer.precision=auto as trained, fp32 or bf16.
        run.log_params(
            {"dist.world_size": str(trial.dist_env.world_size), "trainer.precision_resolved": trial.evaluator.precision}
        )
        run.log_json(stats, "dataset_stats.json")
        run.log_text(OmegaConf.to_yaml(config_yaml), CONFIG_FILE)
    trial.log(mix_metrics(stats), 0)
    (trial.out / CONFIG_FILE).write_text(OmegaConf.to_yaml(config_yaml))
    (trial.out / "dataset_stats.json").write_text(json.dumps(stats, indent=2))
    print(mix_table(stats))


def _probe_base(trial: TrialState) -> None:
    """The general set and the base model's scores on it (cached per model), before training
    changes the model; the trained model is scored on the same set (evaluator.general)."""
    if trial.config.eval.general_probe:
        ev = trial.evaluator
        path = modeling.resolve_model_path(trial.config.model)
        with lora.disabled(ev.model):  # the base's own answers and scores, whatever the adapters hold
            probe = general_probe.probe_base(trial.config, ev, lambda: ev.model, path)
        ev.general, trial.base_probe = probe, probe.base
        trial.run.log_params({general_probe.SOURCE_PARAM: probe.source})
        print(probe.summary())


def _train(trial: TrialState) -> TrainState:
    """Training, with the validation loss at every eval (reported to the study, which may prune)."""
    ev, data = trial.evaluator, trial.data
    last = total_steps(trial.config, len(data.train_rows), trial.dist_env.world_size)

    def evaluate(step: int) -> dict[str, float]:
        # The last one (after the training bar closed) is the final evaluation's first phase.
        show = _show(trial) if step == last else QUIET
        metrics = final_validation_loss(ev, data.val_rows, data.tasks, show)
        trial.log(metrics, step)
        if trial.study is not None:
            trial.study.report(step, metrics)
        return metrics

    return train(
        ev.model,
        data.train_rows,
        data.tasks,
        modeling.with_precision(trial.config, ev.precision),  # auto resolved once, by the evaluator
        ev.device,
        ev.tokenizer.pad_token_id,
        trial.log,
        evaluate,
        trial.dist_env,
        trial.checkpoints,
        notice=lambda finding: tag_findings(trial.run, [finding]),  # on the run at once, even if it then fails
    )


def _evaluate(trial: TrialState, trained: TrainState) -> None:
    """The final evaluation (its generations into generations.jsonl and the run), and the
    comparison with eval.baseline_run_id, logged at the last step."""
    config = trial.config
    final: dict[str, float] = {TRAIN_TIME: trained.seconds}
    scores, generations = final_evaluation(
        trial.evaluator, trial.data.val_examples, trial.data.train_rows, trial.base_probe, _show(trial)
    )
    final.update(scores)
    if trial.dist_env.is_main:
        record_generations(trial.out, trial.run, generations, config.eval, trial.data.tasks)
    final[TOTAL_TIME] = time.perf_counter() - trial.started
    trial.log(final, trained.step)
    if trial.baseline is not None and trial.dist_env.is_main:
        compared = baseline_comparison.record(
            trial.config, trial.baseline, _measured(trial, final_values(trial.series)), trial.out, trial.run
        )
        trial.log(compared, trained.step)


def _show(trial: TrialState) -> str:
    """How the final evaluation's phases show: bars with trainer.progress, else a line each; only
    on the first rank (the others evaluate the same data)."""
    if not trial.dist_env.is_main:
        return QUIET
    return BAR if trial.config.trainer.progress else LINES


def _measured(trial: TrialState, metrics: dict[str, float]) -> Side:
    """The trial's metrics with what measured them: each task_type's scorer (eval.scorers), and
    the general probe's set as _probe_base decided it (None when the probe is off)."""
    general = trial.evaluator.general
    scorers = scorer_names(trial.config.eval.scorers, trial.data.tasks)
    return Side(metrics, scorers, general.source if general is not None else None)


def _save(trial: TrialState, trained: TrainState) -> TrialResult:
    """COMPLETE: findings, metrics.json, the model when asked, the summary table; the run finished."""
    run, is_main = trial.run, trial.dist_env.is_main
    run.set_tag(TRIAL_STATE_TAG, "COMPLETE")
    findings = diagnose_series(trial.config, trial.series, run, trained.findings) if is_main else []
    measured = _measured(trial, {})
    result = record(trial.config, trial.out, run, trial.series, "COMPLETE", trained.step, is_main, findings, measured)
    if trial.config.trainer.save_model and is_main:  # after the results are safe
        save_model(trial.config, trial.evaluator.model, trial.evaluator.tokenizer, trial.out, run)
    table = summary_table(result, trial.data.tasks, trial.data.report, trial.config.eval.scorers)
    print(table)
    if is_main:
        run.set_tag(NOTE_TAG, trial_note(table))
    run.finish("FINISHED")
    return result


def _on_prune(trial: TrialState, pruned: TrialPruned) -> TrialResult:
    """A pruned trial is a result, not an error: recorded as such, its final evals skipped."""
    run = trial.run
    run.set_tag(TRIAL_STATE_TAG, "PRUNED")
    trial.log({TOTAL_TIME: time.perf_counter() - trial.started}, pruned.step)
    result = record(trial.config, trial.out, run, trial.series, "PRUNED", pruned.step, trial.dist_env.is_main)
    print(f"pruned by the study at step {pruned.step}: {trial.config.study.metric} = {pruned.value:.4f}")
    run.finish("KILLED")
    return result


def _on_failure(trial: TrialState, exc: BaseException) -> None:
    """The run left RUNNING for a requeued job, else tagged with the error and ended FAILED (KILLED on ^C)."""
    run = trial.run
    if trial.preemption.handed_over and isinstance(exc, SystemExit):
        leave_running(run)
        return
    run.set_tag(ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
    try:
        run.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
    except TrackingError as tracking_error:  # keep the trial's own error the one raised
        print(f"warning: {tracking_error}", file=sys.stderr)
