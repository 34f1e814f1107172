"""Tiny models for the explain tests: small enough for milliseconds, with peaked (non-uniform) attention so that
recording and rollout are checked on informative weights."""
from __future__ import annotations

import pytest
import torch

from vitlab.models.vit import VisionTransformer, ViTConfig


def tiny_vit(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = {"img_size": 16, "patch_size": 4, "dim": 32, "depth": 3, "num_heads": 4, "num_classes": 5}
    model = VisionTransformer(ViTConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():                      # larger weights than the 0.02 init: attention far from uniform
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.6 if "qkv.weight" in name else 0.3)
    return model


@pytest.fixture
def vit() -> VisionTransformer:
    return tiny_vit()


@pytest.fixture
def make_vit():
    return tiny_vit
