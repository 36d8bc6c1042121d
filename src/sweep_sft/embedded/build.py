"""Build the embedded default: a BPE tokenizer, a tiny Llama pretrained on the general
corpus, and the multi-task JSONL files, each deterministic and cached.

What comes out is an ordinary model folder and ordinary JSONL files: the trial loads them
through `from_pretrained` and the JSONL loader exactly as it would a user's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sweep_sft.cache import build_once, source_hash
from sweep_sft.embedded import general, tasks

BUILD_VERSION = source_hash(tasks, general)
DATA_SPEC: dict[str, Any] = {"version": BUILD_VERSION, "train_per_task": 800, "val_per_task": 64, "seed": 1234}
MODEL_SPEC: dict[str, Any] = {
    "version": BUILD_VERSION,
    "builder": source_hash(sys.modules[__name__]),
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "pretrain_docs": 20000,
    "pretrain_steps": 200,
    "pretrain_batch": 32,
    "pretrain_seq_len": 64,
    "pretrain_lr": 3e-3,
    "seed": 1234,
    "data": DATA_SPEC,
}
END_OF_TURN = "<|end|>"
PAD = "<|pad|>"
END_OF_TEXT = "<|endoftext|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# The assistant's content and its end-of-turn token sit inside {% generation %}, so
# return_assistant_tokens_mask marks exactly what SFT should learn, EOS included.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def embedded_data() -> Path:
    """Folder with train.jsonl and validation.jsonl of the embedded multi-task set."""
    return build_once("data", DATA_SPEC, _write_data)


def embedded_model() -> Path:
    """Folder of the embedded base model and its tokenizer, for from_pretrained."""
    return build_once("model", MODEL_SPEC, _build_model)


def _write_data(folder: Path) -> None:
    train, val = tasks.generate(DATA_SPEC["train_per_task"], DATA_SPEC["val_per_task"], DATA_SPEC["seed"])
    for name, records in (("train.jsonl", train), ("validation.jsonl", val)):
        with open(folder / name, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def _build_model(folder: Path) -> None:
    import torch

    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(folder)
    torch.manual_seed(MODEL_SPEC["seed"])
    model = _new_llama(tokenizer)
    _pretrain(model, tokenizer)
    model.save_pretrained(folder)


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    train, _ = tasks.generate(DATA_SPEC["train_per_task"], 0, DATA_SPEC["seed"])
    # Each message separately: trained on templated lines, text after a special token
    # would lack its usual context and split badly.
    texts = tasks.all_texts(train) + general.corpus(MODEL_SPEC["pretrain_docs"], MODEL_SPEC["seed"])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    specials = [END_OF_TEXT, PAD, END_OF_TURN, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=MODEL_SPEC["vocab_size"],
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TEXT, *ROLE_TOKENS],
        model_max_length=MODEL_SPEC["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _new_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = MODEL_SPEC
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
    )
    return LlamaForCausalLM(config)


def _pretrain(model, tokenizer) -> None:
    """Brief causal-LM pretraining on the general corpus: documents joined by
    <|endoftext|> and cut into fixed-length rows, as base models are trained."""
    import torch

    spec = MODEL_SPEC
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    docs = general.corpus(spec["pretrain_docs"], spec["seed"] + 1)
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += [eot, *ids]
    width = spec["pretrain_seq_len"]
    rows = torch.tensor(stream[: len(stream) // width * width]).view(-1, width)
    generator = torch.Generator().manual_seed(spec["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["pretrain_lr"], weight_decay=0.0)
    steps = spec["pretrain_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    model.train()
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (spec["pretrain_batch"],), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
