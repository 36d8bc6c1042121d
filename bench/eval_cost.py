"""What each final evaluation costs: the parts of a trial's end (and of
`python -m sweep_sft.evaluate`) timed one by one on a trained model, as a table.

    python bench/eval_cost.py <trial folder with model/>   # e.g. the folder `make run` printed
    python bench/eval_cost.py <trial> --repeat 3 --threads 2 eval.pass_k=8
    make bench-eval        # the embedded default: trains it first (--train), timed as `make run` runs it
    make bench-eval-real   # a real model: SmolLM2-135M-Instruct, trained two steps on tests/fixtures/real_data

The general probe's set and the base model's scores on it are built once per base model and
cached (for a real model: the base model's own greedy answers); their first build is timed once.

The trial's own config gives the data and eval settings (key=value overrides change them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trial", help="a trial output folder (its model/ is evaluated)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.pass_k_examples=64")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--train", action="store_true", help="first train the default trial into the folder, as `make run` does"
    )
    args = parser.parse_args()
    trial_rows = train_default(Path(args.trial)) if args.train else []

    import torch

    from sweep_sft import modeling
    from sweep_sft.data.pipeline import prepare
    from sweep_sft.data.records import first_per_task
    from sweep_sft.evaluate import general_probe
    from sweep_sft.evaluate import standalone as standalone_eval
    from sweep_sft.evaluate import target as eval_target
    from sweep_sft.evaluate.evaluator import Evaluator
    from sweep_sft.evaluate.generation import trained_sample

    torch.set_num_threads(args.threads)
    target = eval_target.resolve(args.trial)
    config = standalone_eval.load_config(target, args.overrides)
    ev, cpu = config.eval, torch.device("cpu")
    tokenizer, model = standalone_eval.load_trained(config, target, cpu)
    evaluator = Evaluator.for_trial(model, tokenizer, cpu, config)
    data = prepare(config, tokenizer, evaluator.end_of_turn_id)
    sampled = first_per_task(data.val_examples, ev.pass_k_examples)
    recalled = trained_sample(data.train_rows, ev.train_recall_examples, config.trainer.seed)
    base_path = modeling.resolve_model_path(config.model)
    start = time.perf_counter()
    evaluator.general = general_probe.probe_base(
        config, evaluator, lambda: modeling.load(config.model, cpu, base_path, tokenizer)[1], base_path
    )
    probe_set_s = time.perf_counter() - start
    parts = {
        f"validation loss ({len(data.val_rows)} examples)": lambda: evaluator.validation_loss(
            data.val_rows, data.tasks
        ),
        f"exact match, greedy ({len(data.val_examples)} prompts)": lambda: evaluator.exact_match(data.val_examples),
        f"pass@{ev.pass_k}, {ev.num_samples} samples x {len(sampled)} prompts": lambda: evaluator.pass_at_k(sampled),
        f"train recall, greedy ({len(recalled)} prompts)": lambda: evaluator.exact_match(recalled),
        f"general probe, trained model ({len(evaluator.general.pairs)} items, {evaluator.general.source})": (
            evaluator.general_probe
        ),
    }
    print(f"| part | median s of {args.repeat} | min s |\n|---|---|---|")
    # Built once per base model and cached: a first run pays the build, later runs read the cache.
    print(f"| general set + base scores ({evaluator.general.source}; once per base model) | {probe_set_s:.2f} | |")
    for name, run in parts.items():
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} |")
    for name, seconds in trial_rows:
        print(f"| {name} | {seconds:.2f} | |")


def train_default(folder: Path) -> list[tuple[str, float]]:
    """Trains the default trial into `folder` as `make run` does (logging to MLflow, here a store in
    the folder), and returns its times: the process's wall time and the trial's own timing."""
    from sweep_sft.metrics import TOTAL_TIME, TRAIN_TIME
    from sweep_sft.names import METRICS_FILE

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder.resolve()}/mlflow.db"}
    command = [sys.executable, "-m", "sweep_sft", "trainer.progress=false", f"hydra.run.dir={folder}"]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    final = json.loads((folder / METRICS_FILE).read_text())["metrics"]
    return [
        ("default trial: training (its time/train_s)", final[TRAIN_TIME]),
        ("default trial: training + final evaluation (its time/total_s)", final[TOTAL_TIME]),
        ("default trial: `python -m sweep_sft` wall time, start-up and MLflow included", wall),
    ]


if __name__ == "__main__":
    main()
