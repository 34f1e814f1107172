"""Shared fixtures: HF transformers reference models with random weights (LayerNorms perturbed too, so that a
swapped norm or a wrong eps shows in the logits)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values of the size training would (LayerNorm around 1, the rest around 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and ("norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * (0.5 / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.05))
    return model.eval()


@pytest.fixture
def hf_model() -> Callable[..., Any]:
    """hf_model(cls_name, depth=2, dim=192, heads=3, **config) -> a random-weight transformers model in eval mode."""
    transformers = pytest.importorskip("transformers", reason="transformers is the HF reference (dev dependency)")

    def make(cls_name: str, depth: int = 2, dim: int = 192, heads: int = 3, seed: int = 0, **config: Any):
        family = "DeiT" if cls_name.startswith("DeiT") else "ViT"
        cfg = getattr(transformers, f"{family}Config")(hidden_size=dim, num_hidden_layers=depth,
                                                       num_attention_heads=heads, intermediate_size=4 * dim,
                                                       **config)
        torch.manual_seed(seed)
        return randomize_(getattr(transformers, cls_name)(cfg), seed)

    return make


@pytest.fixture
def randomize() -> Callable[..., torch.nn.Module]:
    """randomize(model, seed=0): trained-like random weights, in place; returns the model in eval mode."""
    return randomize_
