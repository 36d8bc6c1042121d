"""What a trial checks before its model loads: before it reads its data or imports torch, its
output folder, its model's files, and whether its checkpoints can be written at all; once its
data is read, the scorers of its task_types."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from sweep_sft import lora
from sweep_sft.attention import check_device
from sweep_sft.config.schema import Config, EvalConfig
from sweep_sft.config.scorers import is_function_spec, matching_pattern, scorer_key
from sweep_sft.data.records import Example
from sweep_sft.diagnostics.divergence import toy_defaults_warning
from sweep_sft.errors import ConfigError
from sweep_sft.evaluate.general_set import check_source
from sweep_sft.evaluate.generation import reference
from sweep_sft.evaluate.scorers import TaskScorers, parse_json
from sweep_sft.modeling import check_model
from sweep_sft.train.engine import check_compile


def check_early(config: Config, out: Path) -> None:
    """What can be checked before the data is read and torch imported: the output folder
    (created here), the model's files and the user's general set; a warning when a real model
    starts from the toy's values."""
    make_output_dir(out)
    check_model(config.model)
    lora.check(config)
    check_compile(config)
    if config.trainer.device != "auto":  # auto is resolved once torch is imported (trial/run.py)
        check_device(config.model.attn_implementation, config.trainer.device, config.trainer.precision)
    if config.eval.general_probe:
        check_source(config.eval.general)
    tc = config.trainer
    warning = toy_defaults_warning(
        config.model.name_or_path, tc.defaults_for, config.optimizer.lr, tc.epochs, tc.batch_size
    )
    if warning:
        print(warning, file=sys.stderr)


def make_output_dir(out: Path) -> None:
    """The trial's output folder, made if missing; a file in its place or an unwritable parent named."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out}: is a file; expected a folder for the trial's outputs (made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file as a parent folder, no permission, a read-only disk
        raise ConfigError(f"output_dir={out}: cannot create the folder: {exc.strerror or exc}") from exc


def checkpointable(config: Config) -> bool:
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


def check_scorers(ev: EvalConfig, tasks: list[str], val: list[Example], train: list[Example] = ()) -> None:
    """Every scorer eval.scorers names, loaded: a user's module:function imported and called on
    a reference once per task_type (it must return a number in [0, 1]); every json_equal
    reference (validation, and training ones, which train recall scores) parsed. A pattern that
    matches no task_type is named, as a warning."""
    scorers = TaskScorers(ev.scorers)
    scorers.load_all()
    if not ev.generate:
        return
    for pattern in ev.scorers:
        if not any(fnmatch.fnmatchcase(task, pattern) for task in tasks):
            print(
                f"warning: {scorer_key(pattern)}: matches no task_type of the data ({', '.join(tasks)}); "
                "fnmatch patterns, e.g. 'summ*' or 'qa/*'",
                file=sys.stderr,
            )
    if not any(spec == "json_equal" or is_function_spec(spec) for spec in ev.scorers.values()):
        return  # nothing to try on a reference
    tried: set[str] = set()
    for split, examples in (("validation", val), ("training", train)):
        for example in examples:
            _check_reference(scorers, ev.scorers, example, split, tried)


def _check_reference(scorers: TaskScorers, patterns: dict[str, str], example: Example, split: str, tried: set) -> None:
    task, spec = example.task_type, scorers.spec(example.task_type)
    if spec != "json_equal" and (not is_function_spec(spec) or task in tried):
        return
    key = f"{scorer_key(matching_pattern(task, patterns) or '')}={spec}"
    answer = reference(example)
    if spec == "json_equal" and not parse_json(answer)[0]:
        raise ConfigError(
            f"{key}: a {split} reference of task_type {task} (source {example.source}) is not JSON: {answer[:200]!r}"
        )
    if is_function_spec(spec):
        tried.add(task)
        try:
            scorers.score(task, answer, answer)
        except Exception as exc:
            raise ConfigError(
                f"{key}: failed on a reference of task_type {task}: {type(exc).__name__}: {exc}"
            ) from None
