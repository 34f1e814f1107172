"""SETR-naive (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", CVPR 2021), the simplest transformer segmenter: the baseline that shows what UNETR's and TransUNet's
decoders add.

    x -> ViT (no class token) -> final tokens (B, N, dim) -> map (B, dim, H/p, W/p)
      -> 1x1 conv -> norm -> ReLU -> 1x1 conv (num_classes) -> bilinear up-sampling to H x W      (paper §3.3)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..variants import register_model
from .unet import default_norm
from .vit_encoder import ViTEncoder


@dataclass
class SETRConfig:
    spatial_dims: int = 2                   # images only: the paper's SETR is 2-D
    img_size: int = 64                      # input side
    in_chans: int = 3
    num_classes: int = 7                    # background included
    patch_size: int = 8                     # ViT patch side (the paper: 16)
    dim: int = 192                          # ViT width
    depth: int = 8                          # transformer layers (the paper: 24, ViT-L)
    num_heads: int = 3
    mlp_dim: int = 768
    head_dim: int = 256                     # channels of the hidden 1x1 conv of the naive head
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    mean: tuple[float, ...] = ()            # () = 0.5 per channel
    std: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.std = default_norm(self.mean, self.in_chans), default_norm(self.std, self.in_chans)


class SETRNaive(nn.Module):
    """x (B, in_chans, H, W) normalised -> logits (B, num_classes, H, W)."""

    def __init__(self, cfg: SETRConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = SETRConfig(**{**asdict(cfg or SETRConfig()), **kwargs, "spatial_dims": 2})
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.vit = ViTEncoder(2, cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim, cfg.depth, cfg.num_heads,
                              cfg.mlp_dim, True, cfg.norm_eps, cfg.drop_rate, cfg.attn_drop_rate, cfg.drop_path_rate)
        self.decode = nn.Sequential(nn.Conv2d(cfg.dim, cfg.head_dim, 1, bias=False), nn.BatchNorm2d(cfg.head_dim),
                                    nn.ReLU(inplace=True))
        self.head = nn.Conv2d(cfg.head_dim, cfg.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        tokens, _ = self.vit(x)                                              # (B, N, dim)
        B, N, C = tokens.shape
        x = tokens.transpose(1, 2).reshape(B, C, *self.vit.grid_size)        # (B, dim, H/p, W/p)
        x = self.head(self.decode(x))                                        # (B, num_classes, H/p, W/p)
        return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)


@register_model(task="segmentation")
def setr_naive_small_64(**kw: Any) -> SETRNaive:
    """SETR-naive for 64x64 `scenes` (7 classes): 8 px patches, ViT d 192 / 8 layers / 3 heads; 3.6M params."""
    return SETRNaive(SETRConfig(**kw))
