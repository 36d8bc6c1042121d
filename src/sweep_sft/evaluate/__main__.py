"""`python -m sweep_sft.evaluate TARGET [key=value ...]`: evaluate a trained model again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweep_sft.compare import Side, table
from sweep_sft.errors import UserInputError
from sweep_sft.evaluate import standalone
from sweep_sft.evaluate import target as eval_target
from sweep_sft.evaluate.baseline import compare_with_baseline, load_baseline
from sweep_sft.evaluate.tables import general_lines, task_table
from sweep_sft.metrics import EVAL_TIME
from sweep_sft.names import GENERAL_SOURCE_FIELD, SCORERS_FIELD


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweep_sft.evaluate",
        description="Evaluate a trial's saved model, one of its checkpoints, or an MLflow run's model per task_type, "
        "with the trial's own data and eval settings (key=value overrides change them, e.g. eval.pass_k=8).",
    )
    parser.add_argument("target", help="trial folder, its model/ folder, a checkpoints/step-N folder, or a run id")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.temperature=1.0 eval.pass_k=8")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store holding a run id (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument("--out", type=Path, help="result file (default: <trial folder>/evaluation.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate the target, print its per-task_type table, write evaluation.json; exit 1 on a
    regression against eval.baseline_run_id, 2 on bad input."""
    # Options may sit among the overrides (`RUN_ID --tracking-uri URI eval.pass_k=8`).
    args = _parser().parse_intermixed_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a tiny model: bars are noise beside the table
    try:
        target = eval_target.resolve(args.target, args.tracking_uri)
        config = standalone.load_config(target, args.overrides)
        if config.eval.baseline_run_id is not None:
            baseline = load_baseline(config, args.tracking_uri)  # the store the target came from
        result = standalone.evaluate(target, config)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = result["metrics"]
    print(f"evaluated {target.model_dir or target.checkpoint} with {target.config_file}")
    print(task_table(metrics, result["tasks"], scorers=config.eval.scorers))
    print("\n".join(general_lines(metrics)))
    path = standalone.write(result, target, args.target, args.overrides, args.out)
    print(f"results in {path} ({metrics[EVAL_TIME]:.1f}s)")
    if config.eval.baseline_run_id is not None:
        measured = Side(metrics, result[SCORERS_FIELD], result.get(GENERAL_SOURCE_FIELD))
        comparison = compare_with_baseline(config, baseline, measured)
        print(table(comparison, baseline, measured, (f"baseline {config.eval.baseline_run_id}", str(path))))
        return 1 if comparison.regressions else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
