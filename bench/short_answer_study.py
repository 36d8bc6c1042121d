"""Short-answer study: how loss normalisation and up-sampling change the weight a one-token
task gets in each gradient step, and how fast it learns. Prints a Markdown table.

    python bench/short_answer_study.py [--steps 150]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {
    "token (default)": ["trainer.loss_norm=token"],
    "sequence": ["trainer.loss_norm=sequence"],
    "task_balanced": ["trainer.loss_norm=task_balanced"],
    "token + classification x4": ["trainer.loss_norm=token", "data.mix.task_repeat.classification=4"],
}
TASK = "classification/sentiment"


def run(overrides: list[str], steps: int) -> dict:
    from sweep_sft.config.compose import compose
    from sweep_sft.trial.run import run_trial

    base = [
        "data.packing=packed",
        "data.max_seq_len=128",
        f"trainer.max_steps={steps}",
        "trainer.eval_every=25",
        "trainer.log_every=5",
        "trainer.progress=false",
        "tracking.enabled=false",
        "eval.general_probe=false",
        "scheduler=constant",
        "output_dir=outputs/short_answer_study",
    ]
    return run_trial(compose(base + overrides)).__dict__


def row(name: str, result: dict) -> str:
    series, metrics = result["series"], result["metrics"]
    shares = [v for _, v in series[f"train/loss_weight_share/{TASK}"]]
    token_share = series[f"data/token_share/{TASK}"][0][1]
    val = {int(s): v for s, v in series[f"val/loss/{TASK}"]}
    checkpoints = " / ".join(f"{val[s]:.3f}" for s in sorted(val) if s in (25, 50, 100) or s == max(val))
    return (
        f"| {name} | {token_share:.1%} | {sum(shares) / len(shares):.1%} | {checkpoints} | "
        f"{metrics[f'task/exact_match/{TASK}']:.2f} | {metrics['task/exact_match']:.2f} | "
        f"{metrics['val/loss']:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    lines = [
        f"| setting | {TASK} share of supervised tokens | its share of the loss weight | "
        f"its val loss at steps 25 / 50 / 100 / {args.steps} | its exact match | mean exact match | val loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, overrides in SETTINGS.items():
        lines.append(row(name, run(overrides, args.steps)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
