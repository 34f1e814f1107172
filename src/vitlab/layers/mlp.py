"""Transformer feed-forward block."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from . import cpu_kernels
from .linear import Linear


class Mlp(nn.Module):
    """Two linear layers with GELU between (ViT eq. 3): (..., dim) -> (..., out_dim)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_dim, out_dim or dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and isinstance(self.act, nn.GELU):     # CPU inference: GELU in fc1's GEMM epilogue
            h = cpu_kernels.linear_gelu(self.fc1, x, self.act.approximate, self.fc1.frozen)
            if h is not None:
                return self.fc2(h)
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
