"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero whole samples of a residual branch with probability p, scaling survivors by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate rising linearly from 0 to `rate` over `depth` blocks (as DeiT/Swin)."""
    return [rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [rate] * depth
