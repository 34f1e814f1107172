"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through attention", ICML 2021).

The architecture is ViT's; what DeiT adds is a distillation token, a second learned token that goes through the
encoder beside [CLS] and feeds its own head, trained against a teacher's predictions (§4):

    z0 = [x_class; x_distill; x_p^1 E; ...; x_p^N E] + E_pos
    training: cls_logits = head(z_L^0), distillation_logits = head_dist(z_L^1) -> class + distillation loss
    test:     logits = (head(z_L^0) + head_dist(z_L^1)) / 2     (the "late fusion" of the two heads, Table 3)

The non-distilled variants are plain ViTs trained with the DeiT recipe; all use ImageNet's mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..variants import register_model
from .vit import SIZES, VisionTransformer, ViTConfig


@dataclass
class DeiTConfig(ViTConfig):
    distilled: bool = False                 # add the distillation token and its head (the "⚗" models)
    dist_head: bool = True                  # distilled: a second head on the distillation token (HF's
                                            # DeiTForImageClassification keeps the token but has only one head)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class DeiT(VisionTransformer):
    """ViT with an optional distillation token. x (B, 3, H, W) -> logits (B, num_classes).

    Distilled with two heads: a dict of named logits in both modes (forward_head).
    forward_features -> tokens (B, 2 + N, dim) when distilled ([CLS], [DIST], patches).
    """

    config_class = DeiTConfig
    cfg: DeiTConfig

    def __init__(self, cfg: DeiTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        c = self.cfg
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.distilled else None
        has_dist_head = c.distilled and c.dist_head and c.num_classes > 0
        self.head_dist = nn.Linear(c.representation_size or c.dim, c.num_classes) if has_dist_head else None
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.head_dist is not None:               # made after init_weights ran: initialise it like the head
            if c.weight_init == "jax":
                nn.init.zeros_(self.head_dist.weight)
            else:
                nn.init.trunc_normal_(self.head_dist.weight, std=0.02)
            nn.init.zeros_(self.head_dist.bias)

    def _extra_prefix_tokens(self) -> int:
        return int(self.cfg.distilled)

    def prefix_tokens(self, batch: int) -> list[Tensor]:
        tokens = super().prefix_tokens(batch)
        if self.cfg.distilled:
            tokens.append(self.dist_token.expand(batch, -1, -1))           # after [CLS], as in the paper
        return tokens

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | dict[str, Tensor]:
        """Two heads: {"logits": their average (the paper's late fusion, what is evaluated), "cls_logits",
        "distillation_logits"} (B, num_classes) each, in training and eval alike (HF's names); one head: logits."""
        if self.head_dist is None:
            return super().forward_head(x, pre_logits)
        x_cls = self.head_drop(self.pre_logits(x[:, 0]))
        x_dist = self.head_drop(self.pre_logits(x[:, 1]))
        if pre_logits:
            return (x_cls + x_dist) / 2
        logits, logits_dist = self.head(x_cls), self.head_dist(x_dist)
        return {"logits": (logits + logits_dist) / 2, "cls_logits": logits, "distillation_logits": logits_dist}


# --- variants ----------------------------------------------------------------------------------------------------
def _deit(size: str, img_size: int, overrides: dict[str, Any], distilled: bool = False) -> DeiT:
    return DeiT(DeiTConfig(**{**SIZES[size], "patch_size": 16, "img_size": img_size, "distilled": distilled,
                              **overrides}))


@register_model
def deit_tiny_patch16_224(**kw: Any) -> DeiT:
    """DeiT-T (16x16 patches) at 224x224."""
    return _deit("tiny", 224, kw)


@register_model
def deit_tiny_distilled_patch16_224(**kw: Any) -> DeiT:
    """DeiT-T distilled (16x16 patches) at 224x224."""
    return _deit("tiny", 224, kw, distilled=True)


@register_model
def deit_small_patch16_224(**kw: Any) -> DeiT:
    """DeiT-S (16x16 patches) at 224x224."""
    return _deit("small", 224, kw)


@register_model
def deit_small_distilled_patch16_224(**kw: Any) -> DeiT:
    """DeiT-S distilled (16x16 patches) at 224x224."""
    return _deit("small", 224, kw, distilled=True)


@register_model
def deit_base_patch16_224(**kw: Any) -> DeiT:
    """DeiT-B (16x16 patches) at 224x224."""
    return _deit("base", 224, kw)


@register_model
def deit_base_distilled_patch16_224(**kw: Any) -> DeiT:
    """DeiT-B distilled (16x16 patches) at 224x224."""
    return _deit("base", 224, kw, distilled=True)


@register_model
def deit_base_patch16_384(**kw: Any) -> DeiT:
    """DeiT-B (16x16 patches) at 384x384."""
    return _deit("base", 384, kw)


@register_model
def deit_base_distilled_patch16_384(**kw: Any) -> DeiT:
    """DeiT-B distilled (16x16 patches) at 384x384."""
    return _deit("base", 384, kw, distilled=True)
