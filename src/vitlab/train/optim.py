"""AdamW with the usual exclusions from weight decay; a linear warm-up + cosine schedule, or the 2017
Transformer's warm-up + inverse square root ("noam")."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and non-decayed norms/biases/tokens/position embeddings."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.split(".")[-1] in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                    fused: bool | None = None) -> torch.optim.AdamW:
    kwargs = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **kwargs)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """lr factor: linear 0 -> 1 over warmup_steps, then cosine 1 -> min_lr_ratio at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_rsqrt(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Vaswani et al. 2017 §5.3, lrate = d^-0.5 * min(n^-0.5, n * warmup^-1.5) at step n (from 1), scaled so
    that its peak (n = warmup) is the optimizer's lr: factor = warmup^0.5 * min(n^-0.5, n * warmup^-1.5). With
    lr = d^-0.5 * warmup^-0.5 this is the paper's schedule exactly."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        n = step + 1
        return warmup ** 0.5 * min(n ** -0.5, n * warmup ** -1.5)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
