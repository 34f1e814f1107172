"""The initialisation the reference transformer implementations share."""
from __future__ import annotations

from torch import nn


def init_transformer_(module: nn.Module, std: float = 0.02) -> None:
    """In place: truncated-normal(std) Linear weights, zero biases, LayerNorms at identity (weight 1, bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
