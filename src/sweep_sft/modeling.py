"""Load a model and tokenizer through from_pretrained, as a user's own would be, and
prepare the tokenizer for SFT (pad token, chat template, special tokens); the torch device and
the seeding a trial runs with."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

from sweep_sft import lora
from sweep_sft.attention import check_installed
from sweep_sft.config.schema import Config, ModelConfig
from sweep_sft.embedded.build import embedded_model
from sweep_sft.errors import ConfigError


def resolve_model_path(cfg: ModelConfig) -> str:
    """The folder or hub id from_pretrained loads: the embedded model's cached folder for "embedded"."""
    if cfg.name_or_path == "embedded":
        return str(embedded_model())
    return cfg.name_or_path


def load(cfg: ModelConfig, device, path: str | None = None, tokenizer=None):
    """(tokenizer, model) of `cfg` (from `path` when given, else its resolved model path) on
    `device`: the one loading of trials, standalone evaluation and the benchmarks; a `tokenizer`
    given (a trained one beside its base model) is used as is."""
    path = path or resolve_model_path(cfg)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg, path)
    return tokenizer, load_model(cfg, path, tokenizer, device)


def torch_device(name: str):
    """The torch device trainer.device names; auto: CUDA when torch sees it."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but torch sees no CUDA device")
    return torch.device(name)


def resolve_precision(precision: str, device, bf16_supported: Callable[[], bool] | None = None) -> str:
    """trainer.precision as training and evaluation on `device` use it: fp32 or bf16 (autocast).
    auto: bf16 on a CUDA device that supports it (Ampere and later), else fp32. `bf16_supported`
    answers for a CUDA device (default torch.cuda.is_bf16_supported); it is not asked elsewhere."""
    if precision != "auto":
        return precision
    import torch

    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if (bf16_supported or torch.cuda.is_bf16_supported)() else "fp32"


def with_precision(config: Config, precision: str) -> Config:
    """`config` with trainer.precision set to a resolved `precision` (a copy; `config` itself when equal)."""
    if config.trainer.precision == precision:
        return config
    return dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, precision=precision))


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (trainer.seed)."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


# What from_pretrained needs in a local model folder. Tokenizers come in many layouts (a fast
# tokenizer.json, a sentencepiece *.model, Qwen's *.tiktoken, Mistral's tekken.json, a vocab.*,
# or only tokenizer_config.json for byte-level and remote-code ones): any of them will do, and
# from_pretrained's own error (named) covers a layout that still cannot load.
MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tekken.json")
TOKENIZER_SUFFIXES = (".model", ".tiktoken")
TOKENIZER_PREFIXES = ("vocab.",)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# What transformers' errors about an attention implementation this model or machine lacks say.
ATTENTION_WORDS = ("attn_implementation", "FlashAttention", "Flash Attention", "Flex Attention")


def check_model(cfg: ModelConfig) -> None:
    """The model folder's files, the chat template's syntax and the attention implementation's
    packages, checked without torch or transformers, so a wrong path, a broken template or a
    missing kernel fails before the data is read."""
    check_installed(cfg.attn_implementation)
    if cfg.name_or_path != "embedded":
        check_model_folder(cfg.name_or_path)
    if cfg.chat_template_path:
        check_chat_template(cfg.chat_template_path)


def check_model_folder(name_or_path: str) -> None:
    """A local model folder holds a config, weights and tokenizer files (a hub id is left to from_pretrained)."""
    folder = Path(name_or_path)
    key = f"model.name_or_path={name_or_path}"
    if not folder.exists():
        if _looks_like_path(name_or_path):
            raise ConfigError(f"{key}: no such folder; expected a model folder (config.json, weights, tokenizer files)")
        return  # a hub id (namespace/name): from_pretrained resolves it
    if not folder.is_dir():
        raise ConfigError(f"{key}: is a file; expected a model folder (config.json, weights, tokenizer files)")
    names = {p.name for p in folder.iterdir()}
    missing = [f for f in MODEL_FILES if f not in names]
    if not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        missing.append("weights (*.safetensors or *.bin)")
    if not any(_is_tokenizer_file(n) for n in names):
        missing.append(f"tokenizer files ({', '.join(TOKENIZER_FILES)}, *.model, *.tiktoken or vocab.*)")
    if missing:
        raise ConfigError(f"{key}: the folder lacks {'; '.join(missing)}")


def _is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name.endswith(TOKENIZER_SUFFIXES) or name.startswith(TOKENIZER_PREFIXES)


def _looks_like_path(name: str) -> bool:
    # Hub ids are `name` or `namespace/name`; anything else was meant as a local folder.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def check_chat_template(path: str) -> None:
    """Parse the template as transformers compiles it (with its {% generation %} tag), naming
    the file and line of a syntax error."""
    import jinja2
    from jinja2.ext import loopcontrols

    key = f"model.chat_template_path={path}"
    template = Path(path)
    if not template.is_file():
        raise ConfigError(f"{key}: not found; expected a Jinja chat template file")
    try:
        source = template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot be read as UTF-8 text: {exc}") from exc
    env = jinja2.Environment(extensions=[_generation_tag(), loopcontrols])
    try:
        env.parse(source, filename=str(template))
    except jinja2.TemplateSyntaxError as exc:
        message = f"{template}:{exc.lineno}: Jinja syntax error in the chat template ({key}): {exc.message}"
        raise ConfigError(message) from None


def _generation_tag():
    import jinja2.ext
    from jinja2 import nodes

    class GenerationTag(jinja2.ext.Extension):
        """transformers' {% generation %}...{% endgeneration %} (assistant-token masks), parsed only."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return GenerationTag


def load_tokenizer(cfg: ModelConfig, path: str):
    """The tokenizer at `path`, with the chat template, special tokens and pad token `cfg` asks for."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template_path:
        template = Path(cfg.chat_template_path)
        if not template.is_file():
            raise ConfigError(f"model.chat_template_path: {template} not found")
        tokenizer.chat_template = template.read_text()
    if not tokenizer.chat_template:
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path}: the tokenizer has no chat template; "
            "set model.chat_template_path to a Jinja chat template file"
        )
    new_tokens = [t for t in cfg.add_special_tokens if t not in tokenizer.get_vocab()]
    if new_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
    _set_pad_token(cfg, tokenizer)
    return tokenizer


def _set_pad_token(cfg: ModelConfig, tokenizer) -> None:
    """model.pad_token when asked for (added if new), else the tokenizer's own pad token, else its
    EOS: padding is told apart by explicit label masks and lengths, never by its id, so a pad
    token equal to EOS or end-of-turn costs nothing and needs no new token (the vocabulary, and so
    the saved model, stays the base model's)."""
    if cfg.pad_token is not None:
        if cfg.pad_token in tokenizer.get_vocab():
            tokenizer.pad_token = cfg.pad_token
        else:
            tokenizer.add_special_tokens({"pad_token": cfg.pad_token})
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or end_of_turn(cfg, tokenizer)


def end_of_turn(cfg: ModelConfig, tokenizer) -> str:
    """The token that ends an assistant turn (model.end_of_turn_token, else the tokenizer's EOS)."""
    token = cfg.end_of_turn_token or tokenizer.eos_token
    if token is None:
        raise ConfigError("model.end_of_turn_token: the tokenizer has no eos_token; name the token that ends a turn")
    if token not in tokenizer.get_vocab():
        raise ConfigError(f"model.end_of_turn_token: {token!r} is not in the tokenizer's vocabulary")
    return token


def load_model(cfg: ModelConfig, path: str, tokenizer, device):
    """The model in fp32 on `device` (a 4-bit base with QLoRA), its embeddings grown to fit any
    added tokens, LoRA adapters on it when model.lora.r is set."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation,
            **lora.load_kwargs(cfg, device),
        )
    except (ValueError, ImportError) as exc:  # transformers alone knows which kernels this model and machine support
        if not any(word in str(exc) for word in ATTENTION_WORDS):
            raise
        raise ConfigError(f"model.attn_implementation={cfg.attn_implementation}: {exc}") from exc
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # New rows start at the mean embedding, so new tokens do not dominate the logits.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    special = [tokenizer.convert_tokens_to_ids(t) for t in cfg.add_special_tokens]
    return lora.apply(cfg, model, device, special)  # LoRA off: model.to(device)
