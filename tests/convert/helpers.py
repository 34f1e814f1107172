"""Shared by the converter tests: random weights whose logits tell a wrong mapping apart."""
from __future__ import annotations

import torch


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn in place (norm weights near 1, other vectors small, matrices fan-in scaled), so no
    parameter keeps a constructor's symmetric init; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if p.ndim == 1 and name.endswith("weight") else
                    0.1 * noise if p.ndim == 1 else noise / p[0].numel() ** 0.5)
    return model.eval()
