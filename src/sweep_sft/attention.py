"""How packed examples are kept apart on each attention implementation (`model.attn_implementation`),
and the checks that refuse, before training, one that cannot keep them apart or is not installed.

With `data.packing=packed` (see data/batches.py), per attn_implementation:
- eager: bin-packed rows of max_seq_len; an additive float mask, 0 where a token may attend and
  float32 min elsewhere (eager adds its 4-D mask to the scores: a boolean one would add 0 or 1).
- sdpa: bin-packed rows; a boolean block-diagonal causal mask.
- flex_attention: bin-packed rows; a BlockMask whose mask_mod is "same example and causal".
- flash_attention_2, flash_attention_3: one unpadded row per micro-batch; cu_seq_lens_q/k and
  max_length_q/k, with which the varlen kernel attends within each example only.
Every layout restarts position_ids at 0 for each example. Anything else (a hub kernel "org/repo",
paged attention, flash_attention_4) is refused with packing: sweep_sft cannot tell whether it
keeps examples apart.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from sweep_sft.errors import ConfigError

KEY = "model.attn_implementation"
MASKED = ("eager", "sdpa", "flex_attention")
FLATTENED = ("flash_attention_2", "flash_attention_3")
PACKABLE = MASKED + FLATTENED
# FlashAttention versions transformers 5.24 knows: (import name, distribution, minimum version).
FLASH_PACKAGES = {
    "flash_attention_2": ("flash_attn", "flash-attn", (2, 3, 3)),
    "flash_attention_3": ("flash_attn_interface", "flash-attn-3", None),
    "flash_attention_4": ("flash_attn", "flash-attn-4", None),
}
ALWAYS = ("eager", "sdpa", "paged|eager")
FLEX_MIN_TORCH = (2, 5)
# transformers' pattern of a hub kernel (integrations/hub_kernels.is_kernel): org/repo[@rev][:fn].
HUB_KERNEL = re.compile(r"^[^/:]+/[^/:]+(?:@[^/:]+)?(?::[^/:]+)?$")


def flattens(attn_implementation: str) -> bool:
    """Whether packing puts a micro-batch's examples into one unpadded row (the varlen kernels)."""
    return attn_implementation in FLATTENED


def check_packing(attn_implementation: str, packing: str) -> None:
    """data.packing=packed only with an attention implementation that keeps examples apart."""
    if packing != "packed" or attn_implementation in PACKABLE:
        return
    raise ConfigError(
        f"{KEY}={attn_implementation} with data.packing=packed: sweep_sft keeps packed examples apart only "
        f"through a 4-D mask or varlen sequence lengths, which this implementation is not known to honour; "
        f"use {KEY} one of {', '.join(PACKABLE)}, or data.packing=none"
    )


def check_installed(attn_implementation: str) -> None:
    """The packages `attn_implementation` needs are installed (looked up, not imported); an unknown
    name lists the implementations this environment has."""
    key = f"{KEY}={attn_implementation}"
    if attn_implementation in ALWAYS:
        return
    if attn_implementation == "flex_attention":
        torch_version = _version("torch")
        if torch_version is None or _parse(torch_version) < FLEX_MIN_TORCH:
            raise ConfigError(f"{key}: needs torch>=2.5; installed: torch {torch_version}")
        return
    if attn_implementation in FLASH_PACKAGES:
        if _flash_installed(attn_implementation) or _kernels_installed():
            return
        module, dist, minimum = FLASH_PACKAGES[attn_implementation]
        at_least = f">={'.'.join(map(str, minimum))}" if minimum else ""
        raise ConfigError(
            f"{key}: needs the {dist}{at_least} package (import {module}) and a CUDA GPU, or the `kernels` package "
            f"for transformers' hub build; neither is installed. Installed: {', '.join(available())}"
        )
    if HUB_KERNEL.match(attn_implementation):
        if not _kernels_installed():
            raise ConfigError(f"{key}: a hub kernel (org/repo) needs the `kernels` package (pip install kernels)")
        return
    raise ConfigError(
        f"{key}: unknown attention implementation; expected one of {', '.join(available())} (installed here), "
        "or a hub kernel org/repo"
    )


def check_device(attn_implementation: str, device_type: str, precision: str = "auto") -> None:
    """The implementation can train on this device and in this precision (trainer.precision,
    resolved or not): FlashAttention only on CUDA and in bf16; torch's flex_attention has no
    backward on CPU."""
    key = f"{KEY}={attn_implementation}"
    if attn_implementation in FLASH_PACKAGES and precision == "fp32":
        raise ConfigError(
            f"{key}: FlashAttention computes in bf16/fp16 only, and trainer.precision is fp32 here (the weights "
            f"load in fp32); set trainer.precision=bf16 (auto picks it on a GPU that supports bf16), or use {KEY}=sdpa"
        )
    if attn_implementation in FLASH_PACKAGES and device_type != "cuda":
        raise ConfigError(
            f"{key}: FlashAttention runs on CUDA GPUs only, and this trial runs on {device_type} "
            f"(trainer.device); use {KEY}=sdpa or eager there"
        )
    if attn_implementation == "flex_attention" and device_type == "cpu":
        raise ConfigError(
            f"{key}: torch's flex_attention has no backward pass on CPU, so it cannot train there "
            f"(trainer.device); use {KEY}=sdpa or eager on CPU, or trainer.device=cuda"
        )


def available() -> list[str]:
    """The attention implementations this environment can load, by name."""
    names = ["eager", "sdpa"]
    torch_version = _version("torch")
    if torch_version is not None and _parse(torch_version) >= FLEX_MIN_TORCH:
        names.append("flex_attention")
    names += [name for name in FLASH_PACKAGES if _flash_installed(name)]
    return names + ["paged|eager"]


def _flash_installed(attn_implementation: str) -> bool:
    # As transformers checks it: the import name, provided by the right distribution (FA2 and FA4
    # share `flash_attn`), at a version it supports.
    module, dist, minimum = FLASH_PACKAGES[attn_implementation]
    if importlib.util.find_spec(module) is None:
        return False
    found = _version(dist)
    return found is not None and (minimum is None or _parse(found) >= minimum)


def _kernels_installed() -> bool:
    return importlib.util.find_spec("kernels") is not None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _parse(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def packed_inputs(attn_implementation: str, input_ids, segments, position_ids, cu_seq_lens, device) -> dict:
    """The forward kwargs of a packed micro-batch on `device`, as `attn_implementation` needs them."""
    check_packing(attn_implementation, "packed")  # config validation refused any other name already
    inputs = {"input_ids": input_ids.to(device), "position_ids": position_ids.to(device)}
    if attn_implementation in FLATTENED:
        return inputs | varlen_kwargs(cu_seq_lens, device)
    segments = segments.to(device)
    if attn_implementation == "flex_attention":
        return inputs | {"attention_mask": block_mask(segments)}
    allowed = allowed_pairs(segments)
    if attn_implementation == "eager":
        return inputs | {"attention_mask": additive_mask(allowed)}
    return inputs | {"attention_mask": allowed}  # sdpa


def allowed_pairs(segments):
    """(B, 1, T, T) bool: query i may attend key j (same example, j <= i); padding sees padding only."""
    import torch

    width = segments.shape[-1]
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=segments.device))
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


def additive_mask(allowed):
    """eager adds its 4-D mask to the scores: 0 where allowed, float32 min elsewhere. Kept in float32
    under bf16 autocast too (bf16 scores + float32 mask promote to float32), so min stays finite and
    the softmax weight of a masked key is exactly 0."""
    import torch

    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )


def block_mask(segments):
    """flex_attention's BlockMask over (B, T) segment ids: same example and causal."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_example_causal(b, h, q, kv):
        return (segments[b, q] == segments[b, kv]) & (q >= kv)

    batch, width = segments.shape
    return create_block_mask(same_example_causal, batch, None, width, width, device=segments.device)


def cumulative_lengths(lengths: list[int]):
    """Example starts in one row of examples of `lengths` laid end to end, with 0 and the total:
    int32 (E+1,), flash's cu_seqlens."""
    import torch

    cu_seq_lens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu_seq_lens


def varlen_kwargs(cu_seq_lens, device) -> dict:
    """FlashAttentionKwargs of one flattened row: the varlen kernel's sequence bounds, q and k alike."""
    cu = cu_seq_lens.to(device)
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())  # an int: flash_attn_varlen_func takes no tensor
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
