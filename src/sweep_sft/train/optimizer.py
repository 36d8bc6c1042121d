"""The optimizer every trial steps: AdamW over two parameter groups (decayed, not decayed).

On CUDA it is torch's fused AdamW (one kernel for all parameters; the same update as the
per-tensor loop up to float rounding); elsewhere torch's default implementation. DeepSpeed
takes it as is, or rebuilds its groups as DeepSpeedCPUAdam (train/engine.py).
"""

from __future__ import annotations

from sweep_sft.config.schema import Config


def build_optimizer(model, cfg: Config):
    """AdamW over the trainable parameters, norm weights and biases not decayed; fused when the
    parameters are on CUDA."""
    import torch

    # Norm weights and biases are not decayed, as in every major SFT recipe.
    decay, no_decay = [], []
    for _name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.optimizer.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    params = decay + no_decay
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(
        groups,
        lr=cfg.optimizer.lr,
        betas=tuple(cfg.optimizer.betas),
        eps=cfg.optimizer.eps,
        fused=True if on_cuda else None,  # None: torch's default (foreach where it can)
    )
