"""Load a model and tokenizer through from_pretrained, as a user's own would be, and
prepare the tokenizer for SFT (pad token, chat template, special tokens)."""

from __future__ import annotations

from pathlib import Path

from sweep_sft.config import ModelConfig
from sweep_sft.errors import ConfigError


def resolve_model_path(cfg: ModelConfig) -> str:
    if cfg.name_or_path == "embedded":
        from sweep_sft.embedded.build import embedded_model

        return str(embedded_model())
    return cfg.name_or_path


def load_tokenizer(cfg: ModelConfig, path: str):
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
            "set model.chat_template_path to a Jinja template with {% generation %} markers"
        )
    new_tokens = [t for t in cfg.add_special_tokens if t not in tokenizer.get_vocab()]
    if new_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
    if tokenizer.pad_token is None or tokenizer.pad_token == end_of_turn(cfg, tokenizer):
        # pad == EOS masks the EOS label away with the padding: the model never learns to stop.
        tokenizer.add_special_tokens({"pad_token": cfg.pad_token})
    return tokenizer


def end_of_turn(cfg: ModelConfig, tokenizer) -> str:
    token = cfg.end_of_turn_token or tokenizer.eos_token
    if token is None:
        raise ConfigError("model.end_of_turn_token: the tokenizer has no eos_token; name the token that ends a turn")
    if token not in tokenizer.get_vocab():
        raise ConfigError(f"model.end_of_turn_token: {token!r} is not in the tokenizer's vocabulary")
    return token


def load_model(cfg: ModelConfig, path: str, tokenizer, device):
    """The model in fp32 on `device`, its embeddings grown to fit any added tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        dtype=torch.float32,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # New rows start at the mean embedding, so new tokens do not dominate the logits.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device)
