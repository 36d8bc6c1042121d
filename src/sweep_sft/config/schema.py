"""Typed structured configs: the schema every composed config must satisfy.

OmegaConf rejects unknown keys and wrong types when Hydra composes a config against
these dataclasses; their __post_init__ checks add what a type cannot express
(lr >= 0, grad_accum >= 1, ...). `sweep_sft.config.validate` turns a composed config into them,
before any heavy import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sweep_sft.config.checks import at_least, one_of, within
from sweep_sft.config.data import DataConfig
from sweep_sft.config.general import GeneralConfig
from sweep_sft.config.lora import LoraConfig
from sweep_sft.config.scorers import check_scorers
from sweep_sft.diagnostics.findings import DiagnosticsConfig
from sweep_sft.errors import ConfigError
from sweep_sft.metrics import VAL_LOSS

LOSS_NORMS = ("token", "sequence", "task_balanced", "sum")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
ZERO_STAGES = (0, 1, 2, 3)
# DeepSpeed JSON keys built from our trainer/optimizer config (deepspeed.extra must not set them).
DEEPSPEED_DERIVED = {
    "train_batch_size": "trainer.batch_size x trainer.grad_accum x world size",
    "train_micro_batch_size_per_gpu": "trainer.batch_size",
    "gradient_accumulation_steps": "trainer.grad_accum",
    "gradient_clipping": "trainer.grad_clip",
    "bf16": "trainer.precision",
    "fp16": "trainer.precision",
    "zero_optimization": "deepspeed.zero_stage, deepspeed.offload_optimizer, deepspeed.offload_params",
    "optimizer": "optimizer (ours is passed to deepspeed.initialize)",
    "scheduler": "scheduler (ours is passed to deepspeed.initialize)",
}
# Short top-level names for the most-swept knobs, and the full path each one feeds.
ALIASES = {"lr": "optimizer.lr", "grad_accum": "trainer.grad_accum", "epochs": "trainer.epochs"}


@dataclass
class ModelConfig:
    """The `model` node: which model and tokenizer to load and how."""

    # A local folder or hub id given to AutoModelForCausalLM/AutoTokenizer.from_pretrained;
    # "embedded" builds (once, cached) the project's tiny pretrained Llama and uses its folder.
    name_or_path: str = "embedded"
    # Passed to from_pretrained; off unless you trust the model's code.
    trust_remote_code: bool = False
    # Attention kernel given to from_pretrained ("sdpa", "eager", ...).
    attn_implementation: str = "sdpa"
    # Token that closes an assistant turn and must be supervised; null: the tokenizer's eos_token.
    end_of_turn_token: str | None = None
    # Chat template (a Jinja file path) for a tokenizer without one, e.g. a base model's.
    chat_template_path: str | None = None
    # Special tokens added to the tokenizer before training; the embeddings are resized.
    add_special_tokens: list[str] = field(default_factory=list)
    # Pad token; null: the tokenizer's own, else its eos_token, so no token is added and the
    # vocabulary stays the base model's. Padding is masked by lengths and labels, never by its id,
    # so pad == EOS/end-of-turn is fine and EOS stays supervised. A text: that token pads (added,
    # with resized embeddings, when not in the vocabulary), even where the tokenizer has a pad.
    pad_token: str | None = None
    # LoRA adapters (peft) instead of full fine-tuning: model.lora.r=16 turns them on (docs/lora.md).
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        # An empty token is added as nothing: no pad id to pad with, or a token silently missing.
        if self.pad_token is not None and not self.pad_token:
            raise ConfigError("model.pad_token: expected the text of a token or null, got an empty string")
        if not all(isinstance(t, str) and t for t in self.add_special_tokens):
            raise ConfigError(f"model.add_special_tokens: expected non-empty texts, got {self.add_special_tokens}")


@dataclass
class OptimizerConfig:
    # Optimizer; AdamW is the one SFT recipes use.
    name: str = "adamw"
    # Peak learning rate (after warmup).
    lr: float = 1e-3
    # Decoupled weight decay.
    weight_decay: float = 0.0
    # AdamW (beta1, beta2).
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # AdamW epsilon.
    eps: float = 1e-8

    def __post_init__(self) -> None:
        one_of("optimizer.name", self.name, ("adamw",))
        at_least("optimizer.lr", self.lr, 0)
        at_least("optimizer.weight_decay", self.weight_decay, 0)
        within("optimizer.eps", self.eps, 0, math.inf, low_open=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class SchedulerConfig:
    """The `scheduler` node: warmup and the learning-rate schedule after it."""

    # Learning-rate schedule after warmup: linear decay, cosine decay, or constant.
    name: str = "cosine"
    # Warmup as a share of all optimizer steps (exclusive with warmup_steps).
    warmup_ratio: float | None = None
    # Warmup as a number of optimizer steps (exclusive with warmup_ratio).
    warmup_steps: int | None = None
    # Final learning rate as a share of the peak (linear and cosine).
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        one_of("scheduler.name", self.name, SCHEDULERS)
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ConfigError(
                "scheduler.warmup_ratio and scheduler.warmup_steps are exclusive: set one "
                f"(got warmup_ratio={self.warmup_ratio}, warmup_steps={self.warmup_steps})"
            )
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"scheduler.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None:
            at_least("scheduler.warmup_steps", self.warmup_steps, 0)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"scheduler.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainerConfig:
    # Passes over the training data.
    epochs: int = 1
    # Stop after this many optimizer steps (overrides epochs); null: run all epochs.
    max_steps: int | None = None
    # Examples per micro-batch (per device).
    batch_size: int = 32
    # Micro-batches per optimizer step; the loss is the token mean over the whole window.
    grad_accum: int = 1
    # Clip the global gradient norm to this value; 0 disables clipping.
    grad_clip: float = 1.0
    # How one optimizer step's token losses are averaged: token (every supervised token alike),
    # sequence (every example alike), task_balanced (every task_type alike) or sum.
    loss_norm: str = "token"
    # Seed for model init of new rows, data order and sampling.
    seed: int = 0
    # Compute precision; the weights stay fp32 (master weights) in every case. bf16: bf16 autocast;
    # fp32: none; auto: bf16 on a CUDA device that supports it, else fp32 (the run's param
    # trainer.precision_resolved says which).
    precision: str = "auto"
    # Where to train: auto picks CUDA when available.
    device: str = "auto"
    # CPU threads for torch; null: torch's default.
    num_threads: int | None = None
    # Log train metrics every N optimizer steps.
    log_every: int = 20
    # Evaluate validation loss every N optimizer steps (and at the end); 0: only at the end.
    eval_every: int = 200
    # Show a progress bar.
    progress: bool = True
    # Recompute activations in backward (HF gradient_checkpointing_enable): less memory, ~30% more compute.
    gradient_checkpointing: bool = False
    # torch.compile the model in place (nn.Module.compile) before training: faster steps on a GPU
    # after a compile of tens of seconds at the start; the saved model is unchanged. Not with DeepSpeed.
    compile: bool = False
    # Write a checkpoint every N optimizer steps; 0: only when Slurm/submitit signals preemption.
    checkpoint_every: int = 0
    # Keep only the newest N checkpoints under <output_dir>/checkpoints/.
    save_total_limit: int = 2
    # auto: continue from the newest checkpoint in the output folder if any; never; or a checkpoint path.
    resume: str = "auto"
    # Save the trained model and tokenizer (save_pretrained) into <output_dir>/model at the end,
    # for `python -m sweep_sft.evaluate` and for use; not under DeepSpeed ZeRO-3 (partitioned weights).
    save_model: bool = True
    # A loss well above its start while training (diagnostics.diverge_*) always prints a warning
    # and is a finding; true also ends the trial there, FAILED with a DivergenceError, its metrics
    # so far recorded (model=local: true, so an lr sweep's diverging trials stop early).
    stop_on_divergence: bool = False
    # The model preset whose starting values (lr, epochs, batch sizes, eval sizes) are in use,
    # set by conf/model/<preset>.yaml; "embedded" with another model.name_or_path prints a warning
    # before training (the toy's lr 1e-3 wrecks a real model). null: your own values.
    defaults_for: str | None = None

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"trainer.epochs must be > 0, got {self.epochs}")
        if self.grad_accum < 1:
            raise ConfigError(f"trainer.grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_steps is not None:
            at_least("trainer.max_steps", self.max_steps, 1)
        at_least("trainer.batch_size", self.batch_size, 1)
        at_least("trainer.log_every", self.log_every, 1)
        at_least("trainer.eval_every", self.eval_every, 0)
        at_least("trainer.grad_clip", self.grad_clip, 0)
        one_of("trainer.precision", self.precision, PRECISIONS)
        one_of("trainer.loss_norm", self.loss_norm, LOSS_NORMS)
        one_of("trainer.device", self.device, DEVICES)
        at_least("trainer.checkpoint_every", self.checkpoint_every, 0)
        at_least("trainer.save_total_limit", self.save_total_limit, 1)
        if self.num_threads is not None:
            at_least("trainer.num_threads", self.num_threads, 1)
        if not str(self.resume).strip():
            raise ConfigError("trainer.resume must be auto, never or a checkpoint path; got an empty string")


@dataclass
class EvalConfig:
    """The `eval` node: generation, pass@k, train recall and the baseline comparison."""

    # Greedy generation budget for exact match; generation stops earlier at end-of-turn.
    max_new_tokens: int = 64
    # Examples per forward pass during evaluation.
    batch_size: int = 128
    # Generate at the end: exact match of greedy generations per task_type, pass@k, train recall
    # (false: none of the three).
    generate: bool = True
    # Score the general-ability probe (trained vs base model) at the end: general/score,
    # general/base_score, general_drop.
    general_probe: bool = True
    # What the general probe scores (eval.general.source: auto, embedded, base_answers or a JSONL file).
    general: GeneralConfig = field(default_factory=GeneralConfig)
    # pass@k at the end: k sampled generations per validation prompt; 0: off.
    pass_k: int = 4
    # Samples drawn per prompt for pass@k (the unbiased estimator of Chen et al. 2021); null: pass_k.
    samples: int | None = None
    # Sampling temperature of the pass@k generations.
    temperature: float = 0.8
    # Validation prompts per task_type that get sampled (the first N); null: all of them, the
    # prompts exact match scores, so compare's pass@k check judges a drop on the same prompts.
    pass_k_examples: int | None = None
    # Training prompts per task_type (a seeded sample of what was trained on) whose greedy
    # generation is scored like exact match: low recall = underfit, high recall with low
    # validation exact match = learned but not generalising. 0: off.
    train_recall_examples: int = 32
    # A baseline to compare the finished trial with: an MLflow run id (in tracking.uri's store)
    # or a trial output folder; the per-task_type table is printed and logged to the run.
    baseline_run_id: str | None = None
    # Exact-match drop per task_type accepted before the comparison flags a regression.
    em_tolerance: float = 0.05
    # Relative validation-loss rise per task_type accepted before a regression is flagged.
    loss_tolerance: float = 0.05
    # general_drop rise over the baseline's accepted before forgetting is flagged.
    general_tolerance: float = 0.02
    # -- scorers: what "right" means per task_type (sweep_sft.evaluate.scorers) --
    # task_type pattern (fnmatch: `*` matches `/` too) -> scorer; the first pattern that matches
    # wins, in the order given; a task_type no pattern matches is scored exact. Scorers: exact,
    # normalized, contains, regex:<pattern>, json_valid, json_equal, chrf, rouge_l, module:function.
    # Every final metric of the task_type uses it (task/exact_match/<task> is its mean score).
    scorers: dict[str, str] = field(default_factory=dict)
    # A sampled answer counts as right for pass@k and sample_match when its score >= this. The
    # exact, normalized, contains, regex and json scorers score 0 or 1, so any threshold in
    # (0, 1] is exact behaviour for them; 0.5 lets chrf, rouge_l and partial-credit functions
    # count an answer at least half-way to the reference.
    pass_threshold: float = 0.5

    def __post_init__(self) -> None:
        at_least("eval.max_new_tokens", self.max_new_tokens, 1)
        at_least("eval.batch_size", self.batch_size, 1)
        at_least("eval.pass_k", self.pass_k, 0)
        at_least("eval.train_recall_examples", self.train_recall_examples, 0)
        if self.pass_k_examples is not None:
            at_least("eval.pass_k_examples", self.pass_k_examples, 1)
        if self.samples is not None and self.samples < self.pass_k:
            raise ConfigError(f"eval.samples={self.samples} must be at least eval.pass_k={self.pass_k} (or null)")
        within("eval.temperature", self.temperature, 0, math.inf, low_open=True)
        for key in ("em_tolerance", "loss_tolerance", "general_tolerance"):
            at_least(f"eval.{key}", getattr(self, key), 0)
        if self.baseline_run_id is not None and not str(self.baseline_run_id).strip():
            raise ConfigError("eval.baseline_run_id: expected an MLflow run id or a trial folder, or null")
        check_scorers(self.scorers)
        within("eval.pass_threshold", self.pass_threshold, 0, 1, low_open=True)

    @property
    def num_samples(self) -> int:
        return self.pass_k if self.samples is None else self.samples


@dataclass
class TrackingConfig:
    """The `tracking` node: the MLflow server, experiment and run, and outage limits."""

    # Log to MLflow.
    enabled: bool = True
    # MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite:///<working directory>/mlflow.db.
    uri: str | None = None
    # MLflow experiment name; null: $MLFLOW_EXPERIMENT_NAME, else $MLFLOW_EXPERIMENT_ID, else sweep-sft.
    experiment: str | None = None
    # Run name; null: derived from the Hydra job (overrides or the output folder).
    run_name: str | None = None
    # Seconds a trial waits at its start (run creation) and end (delivery) for an unreachable
    # server before failing; the undelivered records then go to mlflow_undelivered.json.
    outage_timeout_s: float = 300.0
    # Metric points kept in memory while the server is down; past it, logging waits for delivery.
    max_buffered_points: int = 200_000
    # Also log the saved model (trainer.save_model) as the run's `model` artifact, so it can be
    # evaluated from its run id where the trial folder cannot be reached; off: models can be large.
    log_model: bool = False

    def __post_init__(self) -> None:
        at_least("tracking.outage_timeout_s", self.outage_timeout_s, 0)
        if self.experiment is not None and not str(self.experiment).strip():
            raise ConfigError("tracking.experiment: expected an MLflow experiment name, got an empty string")
        at_least("tracking.max_buffered_points", self.max_buffered_points, 1000)  # one log_batch


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO (conf/deepspeed/); null: our own optimizer step. Batch size, accumulation,
    clipping and precision come from `trainer`, so the DeepSpeed JSON cannot disagree with them."""

    # ZeRO stage: 0 (plain data parallel), 1 (optimizer state sharded), 2 (+ gradients), 3 (+ parameters).
    zero_stage: int = 2
    # Keep the optimizer state and step on the CPU (ZeRO-Offload; stage >= 1).
    offload_optimizer: bool = False
    # Keep the parameters on the CPU between uses (ZeRO-Infinity; stage 3 only).
    offload_params: bool = False
    # With optimizer offload: DeepSpeedCPUAdam (compiled once, fast) instead of torch AdamW on the CPU.
    cpu_adam: bool = True
    # Overlap gradient reduction with backward (stage >= 2).
    overlap_comm: bool = False
    # Elements per gradient reduce / parameter all-gather bucket.
    bucket_size: int = 200_000_000
    # More DeepSpeed JSON keys, merged as given (+deepspeed.extra.wall_clock_breakdown=true); not the derived ones.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.zero_stage not in ZERO_STAGES:
            raise ConfigError(f"deepspeed.zero_stage must be one of 0, 1, 2, 3; got {self.zero_stage!r}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(
                f"deepspeed.offload_params=true needs deepspeed.zero_stage=3 (got {self.zero_stage}): "
                "only ZeRO-3 partitions parameters"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("deepspeed.offload_optimizer=true needs deepspeed.zero_stage >= 1 (got 0)")
        at_least("deepspeed.bucket_size", self.bucket_size, 1)
        checkpoint = self.extra.get("checkpoint")
        if isinstance(checkpoint, dict) and checkpoint.get("load_universal"):
            # DeepSpeed loads a universal checkpoint's files itself, with weights_only=False.
            raise ConfigError(
                "deepspeed.extra.checkpoint.load_universal: not supported; a universal checkpoint is unpickled "
                "by DeepSpeed with weights_only=False (it could run code), and sweep_sft loads checkpoints as data only"
            )
        for key in self.extra:
            if key in DEEPSPEED_DERIVED:
                raise ConfigError(
                    f"deepspeed.extra.{key}: set from {DEEPSPEED_DERIVED[key]}, so the DeepSpeed config "
                    "cannot disagree with ours; set it there"
                )


@dataclass
class StudyLinkConfig:
    """Where a trial reports its evaluations to an Optuna study (set per trial by the Optuna
    sweeper when a pruner is on), so the study can stop it early."""

    # Optuna storage: a journal file path (*.journal) or a database URL.
    storage: str | None = None
    study_name: str | None = None
    trial_number: int | None = None
    # Metric reported at each evaluation (e.g. val/loss); null: no reports, no pruning.
    metric: str | None = None
    # Seconds between the trial's heartbeats to the study (hydra.sweeper.heartbeat_s); null: none.
    heartbeat_s: float | None = None

    def __post_init__(self) -> None:
        for key in ("metric", "heartbeat_s"):
            if getattr(self, key) is not None and None in (self.storage, self.study_name, self.trial_number):
                raise ConfigError(f"study.{key} needs study.storage, study.study_name and study.trial_number")


@dataclass
class Config:
    """The root of every trial config (conf/config.yaml composes into it)."""

    # Short names for the most-swept knobs; the full paths interpolate them.
    lr: float = 1e-3
    grad_accum: int = 1
    epochs: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Metric the trial returns to the sweeper (see metrics.json for the names).
    objective: str = VAL_LOSS
    # Folder for trial outputs (metrics.json, resolved config); null: Hydra's job folder.
    output_dir: str | None = None
    # Set by the Optuna sweeper: the study this trial reports to (pruning).
    study: StudyLinkConfig = field(default_factory=StudyLinkConfig)
    # DeepSpeed ZeRO (deepspeed=zero2|zero3|zero2_offload|zero3_offload); null: our own optimizer step.
    deepspeed: DeepSpeedConfig | None = None
    # Loss-curve diagnostics run on every finished trial's series (e.g. diagnostics.loss_floor=0.2).
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
