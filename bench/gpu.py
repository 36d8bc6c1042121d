"""GPU training throughput: our step vs TRL's SFTTrainer on a ~0.5B Qwen2-style model, bf16, packed.

    .venv/bin/python bench/gpu.py [--steps 20] [--warmup 3] [--model-size 0.5b|tiny] [--out docs/performance.md]

A Qwen2 model of Qwen2.5-0.5B's shapes with random weights (no download), synthetic SFT examples
of a mixed length (prompt not supervised), packed into rows of --pack-len tokens. Ours runs the
project's own step (data.batches.collate, train.loop.backward_window, train.engine.build_engine,
train.optimizer.build_optimizer: fused AdamW on CUDA, bf16 autocast over fp32 weights); TRL's
SFTTrainer gets the same model, examples, pack length, bf16, fused AdamW and about the same tokens
per step. Each attention implementation (sdpa; flash_attention_2 where flash_attn is installed) and
trainer runs in this process, one after the other, with the peak memory reset in between. The table
(useful = non-padding tokens/s, MFU, peak torch.cuda.max_memory_allocated) is printed and written
to --out with the device, versions and command. --model-size tiny runs on CPU (fp32) for a test.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import shlex
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sweep_sft.config.schema import Config, TrainerConfig
from sweep_sft.data.batches import collate
from sweep_sft.data.tokenize import IGNORE, Tokenized
from sweep_sft.modeling import resolve_precision
from sweep_sft.train.distributed import DistEnv
from sweep_sft.train.engine import build_engine
from sweep_sft.train.loop import backward_window
from sweep_sft.train.optimizer import build_optimizer

# Qwen2.5-0.5B's shapes (its config.json); tiny: the same architecture, small enough for a CPU test.
SIZES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip
# Dense bf16 peak FLOP/s by device name (SXM parts; others need --peak-tflops).
PEAKS = ((r"H100(?!.*PCIe)", 989e12), (r"H200", 989e12), (r"A100", 312e12), (r"\bL4\b", 121e12))
SPECIAL = ("<pad>", "<eos>", "<unk>")
HEAD = ["trainer", "attention", "steps", "tokens/step", "useful tok/s", "MFU", "peak memory GiB"]


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s: --peak-tflops, else the table's, else None."""
    if override_tflops:
        return override_tflops * 1e12
    return next((peak for pattern, peak in PEAKS if re.search(pattern, device_name)), None)


def synthetic_rows(n: int, vocab: int, max_len: int, seed: int = 0) -> list[Tokenized]:
    """SFT-like examples: log-normal lengths (median ~max_len/8, a long tail cut at max_len), the
    first 30-70% a prompt without loss. Token ids avoid the special ids below len(SPECIAL)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = min(max_len, max(16, int(rng.lognormvariate(math.log(max_len / 8), 0.9))))
        prompt = int(length * rng.uniform(0.3, 0.7))
        ids = [rng.randrange(len(SPECIAL), vocab) for _ in range(length)]
        rows.append(Tokenized(ids, [IGNORE] * prompt + ids[prompt:], "synthetic"))
    return rows


def step_windows(rows: list[Tokenized], tokens_per_step: int, steps: int) -> list[list[Tokenized]]:
    """Consecutive examples per step, as many as fill tokens_per_step (the rows are reused if short)."""
    windows, i = [], 0
    for _ in range(steps):
        window, n = [], 0
        while n < tokens_per_step:
            row = rows[i % len(rows)]
            window.append(row)
            n, i = n + len(row.input_ids), i + 1
        windows.append(window)
    return windows


def split(window: list[Tokenized], parts: int) -> list[list[Tokenized]]:
    """The window's examples in `parts` consecutive micro-batches of about equal tokens."""
    total, out, n = sum(len(r.input_ids) for r in window), [[] for _ in range(parts)], 0
    for r in window:
        out[min(parts - 1, n * parts // total)].append(r)
        n += len(r.input_ids)
    return [part for part in out if part]


def build_model(size: str, attn: str, device):
    """A randomly initialised Qwen2ForCausalLM of `size`, fp32 weights (bf16 is autocast)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**SIZES[size], max_position_embeddings=32768, attn_implementation=attn)
    return Qwen2ForCausalLM(config).to(device)


def flops_per_step(model, windows_lengths: list[list[int]]) -> list[float]:
    """Useful training FLOPs of each step: 6 N per token plus causal attention within each example,
    6 * layers * hidden * sum(L^2) (forward and backward; what a block-diagonal mask computes besides
    is not counted)."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    attn = 6 * cfg.num_hidden_layers * cfg.hidden_size
    return [6 * n * sum(lens) + attn * sum(length * length for length in lens) for lens in windows_lengths]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_ours(args, attn: str, device, windows) -> dict:
    """Our step over `windows`: --accum packed micro-batches per optimizer step through build_engine."""
    import torch

    precision = resolve_precision("auto", device)
    cfg = Config(trainer=TrainerConfig(precision=precision, grad_clip=1.0, device=device.type))
    model = build_model(args.model_size, attn, device)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    engine = build_engine(model, optimizer, scheduler, cfg, DistEnv())
    timed, started = [], None
    for step, window in enumerate(windows):
        if step == args.warmup:
            sync(device)
            started = time.perf_counter()
        parts = split(window, args.accum)
        batches = [collate(part, {"synthetic": 0}, 0, "packed", args.pack_len, attn) for part in parts]
        backward_window(engine.model, batches, device, precision, engine=engine)
        engine.step()
        if step >= args.warmup:
            timed.append([len(r.input_ids) for r in window])
    sync(device)
    return {"seconds": time.perf_counter() - started, "lengths": timed, "model": model}


def trl_tokenizer():
    """A word-level tokenizer of the special tokens only: the data is token ids already."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def run_trl(args, attn: str, device, rows: list[Tokenized], packs_per_step: int) -> dict:
    """TRL's SFTTrainer: its BFD packing (padding-free) of the same examples at --pack-len."""
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    micro: list[list[int]] = []  # the examples' lengths of each timed micro-batch
    clock: dict[str, float] = {}

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kw):
            if self.state.global_step >= args.warmup:  # padding-free: one row, examples restart at 0
                starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [inputs["input_ids"].shape[1]]
                micro.append([b - a for a, b in zip(starts, starts[1:], strict=False)])
            return super().training_step(model, inputs, *rest, **kw)

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, *a, **k):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                sync(device)
                clock[str(state.global_step)] = time.perf_counter()

    data = datasets.Dataset.from_list(
        [{"input_ids": r.input_ids, "completion_mask": [int(v != IGNORE) for v in r.labels]} for r in rows]
    )
    bf16 = resolve_precision("auto", device) == "bf16"
    model = build_model(args.model_size, attn, device)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, max_steps=args.warmup + args.steps, gradient_accumulation_steps=args.accum,
            per_device_train_batch_size=max(1, packs_per_step // args.accum),
            learning_rate=1e-5, lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
            optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch", bf16=bf16, fp16=False,
            completion_only_loss=True, max_length=args.pack_len, packing=True, packing_strategy="bfd",
            padding_free=True, seed=0, logging_steps=10**6, save_strategy="no", eval_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=device.type != "cuda", dataloader_num_workers=0,
        )  # fmt: skip
        trainer = Counting(model=model, args=config, train_dataset=data, processing_class=trl_tokenizer(),
                           callbacks=[Clock()])  # fmt: skip
        trainer.train()
    del trainer
    seconds = clock[str(args.warmup + args.steps)] - clock[str(args.warmup)]
    steps = [sum(micro[i : i + args.accum], []) for i in range(0, len(micro), args.accum)]
    return {"seconds": seconds, "lengths": steps[: args.steps], "model": model}


def row(name: str, attn: str, result: dict, device, peak: float | None) -> list[str]:
    """One table row from a run: steps, mean tokens per step, useful tokens/s, MFU, peak memory."""
    import torch

    lengths, seconds = result["lengths"], result["seconds"]
    tokens = sum(map(sum, lengths))
    flops = sum(flops_per_step(result["model"], lengths))
    mfu = f"{flops / seconds / peak:.1%}" if peak else "-"
    memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"
    return [name, attn, str(len(lengths)), f"{tokens / len(lengths):,.0f}", f"{tokens / seconds:,.0f}", mfu, memory]


def attentions() -> list[str]:
    """sdpa, and flash_attention_2 where flash_attn is installed."""
    import importlib.util

    return ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


def run_all(args, device) -> list[list[str]]:
    import importlib.util

    import torch

    rows = synthetic_rows(4096, SIZES[args.model_size]["vocab_size"], args.pack_len)
    windows = step_windows(rows, args.tokens_per_step, args.warmup + args.steps)
    packs = max(1, round(args.tokens_per_step / args.pack_len / 0.95))  # BFD fills packs ~95%
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", args.peak_tflops)
    table = []
    for attn in attentions():
        for name in ("ours", "TRL SFTTrainer"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if name == "ours":
                table.append(row(name, attn, run_ours(args, attn, device, windows), device, peak))
            elif importlib.util.find_spec("trl") is None:
                table.append([name, attn, "TRL not installed"] + [""] * 4)
            else:
                flat = [r for window in windows for r in window]
                table.append(row(name, attn, run_trl(args, attn, device, flat, packs), device, peak))
            print(f"[bench-gpu] {' | '.join(table[-1])}", file=sys.stderr, flush=True)
    return table


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def markdown(table: list[list[str]], args, device_name: str, peak: float | None) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    versions = ", ".join(f"{p} {installed(p)}" for p in ("torch", "transformers", "trl", "flash-attn"))
    peak_note = f"{peak / 1e12:.0f} TFLOP/s bf16 dense peak" if peak else "no known peak (--peak-tflops): MFU not shown"
    return (
        f"Device: {device_name} ({peak_note}); {versions}.\n"
        f"Model: Qwen2 {args.model_size} (random weights), pack length {args.pack_len}, "
        f"~{args.tokens_per_step} tokens/step in {args.accum} micro-batches, "
        f"{args.steps} timed steps after {args.warmup} warmup.\n\n"
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`\n\n" + "\n".join(lines) + "\n"
    )


def write_out(path: Path, text: str) -> None:
    """Write the measured section into --out: after the file's '## Measured' heading when it has one."""
    marker = "## Measured"
    old = path.read_text() if path.exists() else ""
    head = old[: old.index(marker)] if marker in old else old
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{marker}\n\n{text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--model-size", choices=list(SIZES), default="0.5b")
    parser.add_argument("--pack-len", type=int, default=None, help="packed row length (0.5b: 4096, tiny: 256)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="(0.5b: 32768, tiny: 1024)")
    parser.add_argument("--accum", type=int, default=None, help="micro-batches per step (0.5b: 4, tiny: 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak, for MFU")
    parser.add_argument("--out", default="docs/performance.md", help="Markdown file the table is written into")
    args = parser.parse_args(argv)
    tiny = args.model_size == "tiny"
    args.pack_len = args.pack_len or (256 if tiny else 4096)
    args.tokens_per_step = args.tokens_per_step or (1024 if tiny else 32768)
    args.accum = args.accum or (2 if tiny else 4)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not tiny:
        parser.error("no CUDA device: the 0.5b benchmark needs a GPU (--model-size tiny runs on CPU, as a test)")
    table = run_all(args, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (fp32)"
    text = markdown(table, args, device_name, peak_flops(device_name, args.peak_tflops))
    print(text)
    write_out(Path(args.out), text)


if __name__ == "__main__":
    main()
