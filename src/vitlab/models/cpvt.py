"""CPVT (Chu et al., "Conditional Positional Encodings for Vision Transformers", 2021).

A DeiT with no explicit position embedding: a Position Encoding Generator (PEG) after the first block makes the
encoding from the tokens themselves,

    PEG(X) = X + DWConv3x3(X reshaped to its h x w grid)          (class token passed through unchanged)

so the same weights run at any input size (a multiple of the patch) with no interpolation. The "GAP" variant
drops the class token and classifies the average of the patch tokens, which the paper finds better still.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..variants import register_model
from .vit import SIZES, VisionTransformer, ViTConfig


class PosConv(nn.Module):
    """Position Encoding Generator: a residual depthwise conv on the token grid.

    x (B, prefix + h*w, dim) -> same shape; prefix tokens ([CLS]) are left untouched.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
        prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        B, _, C = patches.shape
        feat = patches.transpose(1, 2).reshape(B, C, grid[0], grid[1])     # (B, dim, h, w), row-major as tokens
        patches = (self.proj(feat) + feat).flatten(2).transpose(1, 2)      # (B, h*w, dim)
        return torch.cat([prefix, patches], dim=1)


class CPVT(VisionTransformer):
    """ViT/DeiT with a PEG instead of a position embedding. x (B, 3, H, W), any H, W multiple of the patch.

    cfg.extra: `peg_index` (block after which the PEG sits; 0 = after the first, the paper's best) and
    `peg_kernel` (3).
    """

    def __init__(self, cfg: ViTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **{**kwargs, "pos_embed": "none"})
        self.patch_embed.strict_img_size = False    # no position table ties the model to one size
        self.peg_index = int(self.cfg.extra.get("peg_index", 0))
        self.peg = PosConv(self.cfg.dim, int(self.cfg.extra.get("peg_kernel", 3)))

    def forward_features(self, x: Tensor) -> Tensor:
        p = self.patch_embed.patch_size
        grid = (x.shape[2] // p[0], x.shape[3] // p[1])                    # the grid of THIS input
        x = self.embed(x)                                                  # (B, prefix + h*w, dim), no pos. embed.
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.peg_index:
                x = self.peg(x, grid, self.num_prefix_tokens)
        return self.norm(x)


def _cpvt(size: str, patch_size: int, img_size: int, overrides: dict[str, Any], gap: bool = False) -> CPVT:
    head = dict(class_token=False, pool="avg") if gap else {}          # GAP: average of the patch tokens, no [CLS]
    return CPVT(ViTConfig(**{**SIZES[size], "patch_size": patch_size, "img_size": img_size, "mean": IMAGENET_MEAN,
                             "std": IMAGENET_STD, **head, **overrides}))


# The paper's CPVT-Ti/S/B are DeiT-Ti/S/B with a PEG after block 0.
@register_model
def cpvt_ti_patch16_224(**kw: Any) -> CPVT:
    """CPVT (tiny), patch 16, built for 224x224."""
    return _cpvt("tiny", 16, 224, kw)


@register_model
def cpvt_ti_gap_patch16_224(**kw: Any) -> CPVT:
    """CPVT (tiny, GAP head), patch 16, built for 224x224."""
    return _cpvt("tiny", 16, 224, kw, gap=True)


@register_model
def cpvt_s_patch16_224(**kw: Any) -> CPVT:
    """CPVT (small), patch 16, built for 224x224."""
    return _cpvt("small", 16, 224, kw)


@register_model
def cpvt_s_gap_patch16_224(**kw: Any) -> CPVT:
    """CPVT (small, GAP head), patch 16, built for 224x224."""
    return _cpvt("small", 16, 224, kw, gap=True)


@register_model
def cpvt_b_patch16_224(**kw: Any) -> CPVT:
    """CPVT (base), patch 16, built for 224x224."""
    return _cpvt("base", 16, 224, kw)


@register_model
def cpvt_b_gap_patch16_224(**kw: Any) -> CPVT:
    """CPVT (base, GAP head), patch 16, built for 224x224."""
    return _cpvt("base", 16, 224, kw, gap=True)


# Small-image variants (8-64 px data).
@register_model
def cpvt_micro_patch4_32(**kw: Any) -> CPVT:
    """CPVT (micro), patch 4, built for 32x32."""
    return _cpvt("micro", 4, 32, kw)


@register_model
def cpvt_micro_gap_patch4_32(**kw: Any) -> CPVT:
    """CPVT (micro, GAP head), patch 4, built for 32x32."""
    return _cpvt("micro", 4, 32, kw, gap=True)


@register_model
def cpvt_ti_patch4_32(**kw: Any) -> CPVT:
    """CPVT (tiny), patch 4, built for 32x32."""
    return _cpvt("tiny", 4, 32, kw)


@register_model
def cpvt_ti_gap_patch4_32(**kw: Any) -> CPVT:
    """CPVT (tiny, GAP head), patch 4, built for 32x32."""
    return _cpvt("tiny", 4, 32, kw, gap=True)
