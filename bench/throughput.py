"""SFT throughput: our trainer vs TRL's SFTTrainer, on the embedded model and data.

    .venv/bin/python bench/throughput.py [--steps 60] [--batch-size 32] [--threads N] [--configs a,b] [-v]

Every config trains the same tiny Llama (fp32, no gradient checkpointing, AdamW lr 1e-3, cosine, no
warmup, grad clip 1.0) for the same number of optimizer steps, each in its own fresh subprocess
(`--child NAME`), so peak memory is per config. The counts are measured from the batches each
optimizer step really trained on; the parent prints one Markdown table. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "ours-none": "ours, packing=none",
    "ours-packed": "ours, packing=packed ({pack_len})",
    "trl-padded": "TRL, padded to longest",
    "trl-packed": "TRL, packing=bfd padding-free ({pack_len})",
    "trl-packed-matched": "TRL, bfd padding-free ({pack_len}), packs/step ~ {n} examples",
}
BASELINE = "trl-padded"
LR = 1e-3
MAX_LEN_UNPACKED = 256
IGNORE = -100


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def new_counts() -> dict[str, int]:
    return {"steps": 0, "examples": 0, "supervised": 0, "real": 0, "computed": 0}


def run_ours(name: str, args) -> dict:
    """run_trial with two probes: one counts each optimizer step's batches, one times the loop.

    With eval_every=0 the loop sits between the step-0 and the final validation_loss call, so
    its wall time is (start of the 2nd call) - (end of the 1st): training only, no eval.
    """
    import sweep_sft.evaluate.evaluator as evaluate_mod
    import sweep_sft.train.loop as loop
    from sweep_sft.config.compose import compose
    from sweep_sft.trial.run import run_trial

    counts, marks, rss = new_counts(), [], []
    validation_loss, backward_window = evaluate_mod.validation_loss, loop.backward_window

    def timed_validation_loss(*a, **k):
        sync()
        marks.append(time.perf_counter())
        out = validation_loss(*a, **k)
        sync()
        marks.append(time.perf_counter())
        rss.append(peak_memory_mb())
        return out

    def counting_backward_window(model, batches, *a, **k):
        counts["steps"] += 1
        for b in batches:
            counts["examples"] += len(b.example_tasks)
            counts["supervised"] += b.n_supervised
            counts["real"] += b.n_tokens
            counts["computed"] += b.n_computed
        return backward_window(model, batches, *a, **k)

    evaluate_mod.validation_loss = timed_validation_loss
    loop.backward_window = counting_backward_window
    packed = name == "ours-packed"
    overrides = [
        f"data.packing={'packed' if packed else 'none'}",
        f"data.max_seq_len={args.pack_len if packed else MAX_LEN_UNPACKED}",
        "data.max_val_per_task=1",  # the step-0 and final evals are not timed, but keep them short
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.grad_accum=1",
        "trainer.precision=fp32",
        "trainer.grad_clip=1.0",
        "trainer.seed=0",
        f"trainer.log_every={args.steps}",
        "trainer.eval_every=0",
        "trainer.progress=false",
        f"optimizer.lr={LR}",
        "optimizer.weight_decay=0.0",
        "scheduler=cosine",
        "eval.generate=false",
        "eval.general_probe=false",
        "tracking.enabled=false",
    ]
    if args.threads:
        overrides.append(f"trainer.num_threads={args.threads}")
    with tempfile.TemporaryDirectory() as out:
        result = run_trial(compose(overrides), output_dir=out)
    return {
        **counts,
        "wall_s": marks[2] - marks[1],
        "rss_train_start_mb": rss[0],
        "train_loss": result.metrics["train/loss"],  # token mean over all steps (log_every=steps)
    }


def run_trl(name: str, args) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sweep_sft import modeling
    from sweep_sft.config.schema import ModelConfig
    from sweep_sft.data.batches import epoch_windows
    from sweep_sft.embedded.build import embedded_data

    # The trial's own loading (fp32, sdpa): the embedded tokenizer already has its pad token.
    tokenizer, model = modeling.load(ModelConfig(attn_implementation="sdpa"), "cpu")
    records = [json.loads(line) for line in open(embedded_data() / "train.jsonl")]
    dataset = datasets.Dataset.from_list([{"messages": r["messages"]} for r in records])
    packed = name != "trl-padded"
    batch_size = args.batch_size
    if name == "trl-packed-matched":
        # As many packs per step as hold ~batch_size examples on average.
        ids = tokenizer.apply_chat_template([r["messages"] for r in records], tokenize=True, return_dict=True)
        mean_len = sum(map(len, ids["input_ids"])) / len(records)
        batch_size = max(1, round(args.batch_size * mean_len / args.pack_len))
    if not packed:
        # Unpacked: exactly our data order (seed 0, epoch 0), read sequentially, so each TRL step
        # trains on the same examples as the same step of ours. Packed: TRL's own BFD packs, shuffled.
        windows = epoch_windows(len(dataset), args.batch_size, 1, 0, 0)
        dataset = dataset.select([i for window in windows for micro in window for i in micro])

    counts = new_counts()

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kw):
            # Counted here, not in the collator: accelerate's loader collates one batch ahead.
            labels = inputs["labels"]
            counts["steps"] += 1  # grad_accum=1: one training_step per optimizer step
            counts["supervised"] += int((labels[:, 1:] != IGNORE).sum())
            counts["computed"] += labels.numel()
            if "attention_mask" in inputs:  # padded: one example per row
                counts["examples"] += labels.shape[0]
                counts["real"] += int(inputs["attention_mask"].sum())
            else:  # padding-free: the whole batch is one row, each example restarting at position 0
                counts["examples"] += int((inputs["position_ids"] == 0).sum())
                counts["real"] += labels.numel()
            return super().training_step(model, inputs, *rest, **kw)

    class LoopClock(TrainerCallback):
        # Cross-check only: the loop without train()'s own setup (dataloader, optimizer, accelerate).
        def on_train_begin(self, *a, **k):
            self.begin = time.perf_counter()

        def on_train_end(self, *a, **k):
            sync()
            self.seconds = time.perf_counter() - self.begin

    clock = LoopClock()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            learning_rate=LR,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",  # torch.optim.AdamW, as ours (TRL's default here would be the fused one)
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            assistant_only_loss=True,
            max_length=args.pack_len if packed else MAX_LEN_UNPACKED,
            packing=packed,
            packing_strategy="bfd",
            padding_free=packed,
            train_sampling_strategy="random" if packed else "sequential",
            seed=0,
            logging_steps=args.steps,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        trainer = CountingSFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
        rss_start = peak_memory_mb()
        sync()
        started = time.perf_counter()
        output = trainer.train()
        sync()
        wall = time.perf_counter() - started
    assert counts["steps"] == trainer.state.global_step, (counts, trainer.state.global_step)
    return {
        **counts,
        "wall_s": wall,
        "callback_loop_s": clock.seconds,
        "rss_train_start_mb": rss_start,
        "train_loss": output.training_loss,
        "per_step_batch": batch_size,
    }


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = (run_ours if args.child.startswith("ours") else run_trl)(args.child, args)
    result.update(
        config=args.child,
        peak_mb=peak_memory_mb(),
        memory="cuda max allocated" if torch.cuda.is_available() else "peak RSS",
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        threads=torch.get_num_threads(),
    )
    Path(args.out).write_text(json.dumps(result))


def table(rows: list[dict], batch_size: int, pack_len: int) -> str:
    base = next((r for r in rows if r["config"] == BASELINE), None)
    memory = rows[0]["memory"] if rows else "peak RSS"
    head = [
        "config",
        "optimizer steps",
        "examples seen",
        "supervised tokens",
        "train wall s",
        "useful tok/s",
        "real tok/s",
        "real / computed tokens",
        f"{memory} MB",
        f"useful tok/s vs {BASELINE}",
        "RSS at train start MB" if memory == "peak RSS" else "cuda MB at train start",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        useful = r["supervised"] / r["wall_s"]
        ratio = f"{useful / (base['supervised'] / base['wall_s']):.2f}x" if base else "-"
        label = CONFIGS[r["config"]].format(n=batch_size, pack_len=pack_len)
        if "per_step_batch" in r and r["config"] != BASELINE:
            label += f", {r['per_step_batch']} packs/step"
        cells = [
            label,
            r["steps"],
            r["examples"],
            r["supervised"],
            f"{r['wall_s']:.2f}" + (f" ({r['walls'][0]:.2f}-{r['walls'][-1]:.2f})" if len(r["walls"]) > 1 else ""),
            f"{useful:,.0f}",
            f"{r['real'] / r['wall_s']:,.0f}",
            f"{r['real'] / max(r['computed'], 1):.1%}",
            f"{r['peak_mb']:.0f}",
            ratio,
            f"{r['rss_train_start_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def run_child(name: str, args, env: dict, out: Path) -> dict | None:
    cmd = [sys.executable, __file__, "--child", name, "--out", str(out)]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--pack-len", str(args.pack_len)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    quiet = None if args.verbose else subprocess.PIPE
    proc = subprocess.run(cmd, env=env, stdout=quiet, stderr=quiet, text=True)
    if proc.returncode != 0 or not out.exists():
        print(f"[bench] {name} failed (exit {proc.returncode})", file=sys.stderr)
        if proc.stderr:
            print(proc.stderr[-4000:], file=sys.stderr)
        return None
    result = json.loads(out.read_text())
    print(f"[bench] {name}: {result['wall_s']:.1f}s", file=sys.stderr, flush=True)
    return result


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "accelerate", "datasets"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every config (default: torch's)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--pack-len", type=int, default=256, help="packed row length, ours and TRL's")
    parser.add_argument("--repeat", type=int, default=3, help="runs per config; the table shows the median")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the trainers' own output")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    runs: dict[str, list[dict]] = {name: [] for name in names}
    failed = set()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):  # rounds interleave the configs, so a slow spell hits all alike
            for name in names:
                if name in failed:
                    continue
                result = run_child(name, args, env, Path(tmp) / f"{name}-{round_}.json")
                if result is None:
                    failed.add(name)
                else:
                    runs[name].append(result)
    rows = []
    for name in names:
        if runs[name]:  # the run with the median wall time, with every wall time beside it
            walls = sorted(r["wall_s"] for r in runs[name])
            median = sorted(runs[name], key=lambda r: r["wall_s"])[(len(walls) - 1) // 2]
            rows.append({**median, "walls": walls})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if rows:
        r = rows[0]
        print(
            f"{args.steps} optimizer steps, batch {args.batch_size}, fp32, no gradient checkpointing, "
            f"median of {args.repeat} run(s) per config (min-max in brackets); "
            f"device {r['device']}, {r['threads']} torch threads; {versions()}\n"
        )
        print(table(rows, args.batch_size, args.pack_len))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
