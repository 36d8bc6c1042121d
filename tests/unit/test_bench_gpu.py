"""bench/gpu.py: the tiny model's run on CPU writes the table, 0.5b without CUDA is refused, MFU's peak."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPT = ROOT / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_flops_by_device_name(bench):
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert bench.peak_flops("NVIDIA H200", None) == 989e12
    assert bench.peak_flops("NVIDIA A100-SXM4-80GB", None) == 312e12
    assert bench.peak_flops("NVIDIA L4", None) == 121e12
    assert bench.peak_flops("NVIDIA L40S", None) is None and bench.peak_flops("NVIDIA H100 PCIe", None) is None
    assert bench.peak_flops("NVIDIA L40S", 362.0) == 362e12


def test_flops_count_parameters_and_attention_within_examples(bench):
    model = bench.build_model("tiny", "sdpa", "cpu")
    n = sum(p.numel() for p in model.parameters())
    per_layer = 6 * model.config.hidden_size * model.config.num_hidden_layers
    assert bench.flops_per_step(model, [[3, 4]]) == [6 * n * 7 + per_layer * (9 + 16)]


def test_half_b_without_cuda_is_refused(bench, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the refusal without CUDA")
    with pytest.raises(SystemExit):
        bench.main(["--model-size", "0.5b"])
    assert "needs a GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_writes_the_table(tmp_path):
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nintro kept\n\n## Measured\n\nold table\n")
    cmd = [sys.executable, str(SCRIPT), "--model-size", "tiny", "--steps", "2", "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Performance\n\nintro kept\n\n## Measured\n") and "old table" not in text
    assert "--model-size tiny --steps 2" in text and "transformers " in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert float(rows["ours"][4].replace(",", "")) > 0 and rows["ours"][2] == "2"
    trl = rows["TRL SFTTrainer"]
    assert trl[2] == "TRL not installed" if importlib.util.find_spec("trl") is None else trl[2] == "2"
