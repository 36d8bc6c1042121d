"""The `model.lora` node: LoRA adapters through peft instead of full fine-tuning (docs/lora.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sweep_sft.config.checks import at_least, one_of, within
from sweep_sft.errors import ConfigError

QUANTIZE = ("none", "4bit")
ALL_LINEAR = "all-linear"  # peft's shorthand: every Linear layer but the output head


@dataclass
class LoraConfig:
    """LoRA off (r: null) or on: which layers get adapters, their rank and scale, and what is saved."""

    # Adapter rank; null: full fine-tuning. Any int >= 1 turns LoRA on (model.lora.r=8,16,64 sweeps it).
    r: int | None = None
    # Adapter scale numerator (the update is scaled by alpha/r); null: 2*r, so alpha/r stays 2 as r is swept.
    alpha: float | None = None
    # Dropout on the adapters' input while training.
    dropout: float = 0.05
    # Layers that get adapters: ["all-linear"] (every Linear but the output head, as in QLoRA) or
    # leaf module names (q_proj, v_proj, ...).
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])
    # At the end, save the base with the adapters merged in (a plain model) instead of the adapter alone.
    merge: bool = False
    # none, or 4bit: QLoRA, the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), computed in bf16.
    quantize: str = "none"

    def __post_init__(self) -> None:
        if self.r is not None:
            if isinstance(self.r, bool) or not isinstance(self.r, int):
                raise ConfigError(f"model.lora.r must be an integer >= 1 or null (full fine-tuning), got {self.r!r}")
            at_least("model.lora.r", self.r, 1)
        if self.alpha is not None:
            within("model.lora.alpha", self.alpha, 0, math.inf, low_open=True)
        within("model.lora.dropout", self.dropout, 0, 1)
        if self.dropout == 1:
            raise ConfigError("model.lora.dropout must be in [0, 1), got 1.0 (it would drop every adapter input)")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError(
                "model.lora.target_modules: expected [all-linear] or module names (q_proj, ...), "
                f"got {self.target_modules}"
            )
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ConfigError(
                f"model.lora.target_modules: all-linear already names every Linear layer; give it alone, "
                f"got {self.target_modules}"
            )
        one_of("model.lora.quantize", self.quantize, QUANTIZE)
        if self.r is None and (self.merge or self.quantize != "none"):
            raise ConfigError(
                "model.lora.merge and model.lora.quantize need LoRA on: set model.lora.r (e.g. 16), "
                f"got r=null with merge={self.merge}, quantize={self.quantize}"
            )
        if self.merge and self.quantize != "none":
            raise ConfigError(
                "model.lora.merge=true with model.lora.quantize=4bit: merging into a 4-bit base rounds the "
                "adapter's update away; save the adapter (merge=false) and merge it into the unquantized base"
            )

    @property
    def enabled(self) -> bool:
        """LoRA is on (model.lora.r is set)."""
        return self.r is not None

    @property
    def scale_alpha(self) -> float:
        """alpha, or 2*r when null."""
        if self.r is None:
            raise ConfigError("model.lora.r is null: LoRA is off, it has no alpha")
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


def check_with(lora: LoraConfig, deepspeed) -> None:
    """What LoRA cannot be combined with in one config (so a sweep's preflight names it before
    any job starts): DeepSpeed, for now."""
    if not lora.enabled:
        return
    if deepspeed is not None and deepspeed.zero_stage == 3:
        raise ConfigError(
            "model.lora.r with deepspeed.zero_stage=3: not supported (ZeRO-3 partitions the frozen base, and the "
            "adapter could be neither checkpointed nor saved); LoRA's small optimizer state rarely needs ZeRO-3: "
            "run it without DeepSpeed"
        )
    if deepspeed is not None:
        # Seen with ZeRO-2: LoRA trains only matrices, so the optimizer's no-decay group is empty,
        # DeepSpeed drops it, and the LR scheduler (built over both groups) then fails at its first step.
        raise ConfigError(
            f"model.lora.r with deepspeed.zero_stage={deepspeed.zero_stage}: not supported yet (DeepSpeed "
            "drops the optimizer's empty no-decay group and the LR scheduler fails); LoRA's optimizer state is "
            "small: run it without DeepSpeed (deepspeed=null)"
        )
