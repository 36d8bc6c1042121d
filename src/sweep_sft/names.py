"""Every file name, folder name, MLflow tag key and run-name format that more than one module reads or writes.

They are the contract between a trial, its launcher, the sweepers, standalone evaluation and the
report: a trial folder written by one version must read back in another, so each is spelled once.
"""

from __future__ import annotations

# A trial's output folder.
METRICS_FILE = "metrics.json"  # the trial's record: objective, final metrics, series (sweep_sft.trial)
MODEL_DIR = "model"  # the saved model and tokenizer (trainer.save_model)
CONFIG_FILE = "config.yaml"  # the trial's resolved config (also a run artifact), read by standalone evaluation
OBJECTIVE_FILE = "objective.json"  # a run artifact: the objective's name and value
RUN_FILE = "mlflow_run.json"  # the trial's MLflow run, reopened after a requeue
UNDELIVERED_FILE = "mlflow_undelivered.json"  # records MLflow did not take, for `python -m sweep_sft.tracking`
CHECKPOINTS_DIR = "checkpoints"  # <output_dir>/checkpoints/step-<N>/
CHECKPOINT_WEIGHTS = "model.pt"  # a checkpoint's model weights (checkpoints/step-<N>/)
# Every greedy generation of the final evaluation, one JSON object a line (split, task_type, prompt,
# reference, generated, score, scorer); also the run artifact of that name, which the report reads.
GENERATIONS_FILE = "generations.jsonl"
# Keys of metrics.json (sweep_sft.trial.state.TrialResult's fields) and of evaluation.json beside
# the metrics: what they were measured with, so that comparisons can tell when two runs differ.
SCORERS_FIELD = "scorers"  # task_type -> its scorer spec (eval.scorers)
PRECISION_FIELD = "precision"  # fp32 or bf16: trainer.precision as resolved for the evaluating device
GENERAL_SOURCE_FIELD = "general_source"  # the general probe's set: embedded, base_answers or its path

# A sweep folder.
PARENT_FILE = "mlflow_parent_run.json"
SUMMARY_FILE = "sweep_summary.json"  # the grid sweeper's per-job states
OPTUNA_FILE = "optuna_result.json"
OPTUNA_JOURNAL = "optuna.journal"  # the optuna5 study's default storage
SANDWICH_FILE = "sandwich_result.json"
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a sweep's overrides
# The jobs our launchers have in flight (sweep_sft.sweep.inflight): what a killed controller left.
INFLIGHT_FILE = "inflight_jobs.json"

# MLflow tags.
ERROR_TAG = "sweep_sft.error"
OUTPUT_DIR_TAG = "sweep_sft.output_dir"
TRIAL_STATE_TAG = "sweep_sft.trial_state"  # COMPLETE, PRUNED or REQUEUED, set by the trial
RESUMES_TAG = "sweep_sft.resumes"
SAVE_ERROR_TAG = "sweep_sft.save_model_error"
ENDED_BY_TAG = "sweep_sft.ended_by"
KIND_TAG = "sweep_sft.kind"  # "sweep" on a parent run
SWEEP_DIR_TAG = "sweep_sft.sweep_dir"
OVERRIDES_TAG = "sweep_sft.overrides"
JOB_STATE_TAG = "sweep_sft.job_state"
RETRIED_TAG = "sweep_sft.retried"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"  # a run's description (markdown) in the MLflow UI
# An experiment tag: the MLflow 3 UI opens an experiment of kind custom_model_development
# ("Machine learning") on its runs table, not the GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow param naming the set the general probe scored (eval.general.source with auto decided).
GENERAL_SOURCE_PARAM = "general.source"
SCORER_TAG = "sweep_sft.scorer"  # sweep_sft.scorer.<task_type>: the scorer of its final metrics (eval.scorers)

# An Optuna trial attribute: the trial of a sweep that was stopped (resumed, it runs again).
INTERRUPTED_TAG = "sweep_sft.interrupted"


def job_id_tag(executor: str) -> str:
    """The tag naming the scheduler's job id: sweep_sft.slurm_job_id, sweep_sft.local_job_id."""
    return f"sweep_sft.{executor}_job_id"


def scorer_tag(task: str) -> str:
    """The tag naming a task_type's scorer: sweep_sft.scorer.<task_type>."""
    return f"{SCORER_TAG}.{task}"


def child_run_name(job_num: int, job_overrides: list[str], swept: list[str]) -> str:
    """A sweep job's run name, "3: lr=0.001,grad_accum=2": its number, then the swept part of its overrides."""
    chosen = [o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return f"{job_num}: {','.join(chosen or job_overrides)}"


def run_number(run_name: str) -> int:
    """The job number a child run's name starts with (child_run_name), -1 for none."""
    head = run_name.split(":", 1)[0]
    return int(head) if head.isdigit() else -1
