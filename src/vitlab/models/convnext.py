"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022): a ResNet modernised step by step toward Swin.

    stem:   4x4/4 conv ("patchify") + LayerNorm
    block:  x + DropPath(gamma * Linear_{4C->C}(GELU(Linear_{C->4C}(LN(DWConv7x7(x))))))   (inverted bottleneck)
    stages: (3, 3, 9, 3) blocks for T, separated by LayerNorm + 2x2/2 conv down-sampling
    head:   global average pool, LayerNorm, linear
gamma is the layer scale (Touvron et al. 2021, init 1e-6); stochastic depth rises linearly over all blocks.
Parameter names follow timm (stem, stages.i.downsample, stages.i.blocks.j.conv_dw/norm/mlp/gamma); the head's
LayerNorm is `head_norm`, the classifier `head`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..layers import DropPath, Mlp, drop_path_rates
from ..variants import register_model


@dataclass
class ConvNeXtConfig:
    img_size: int | tuple[int, int] = 224   # input side the model is meant for (any size runs)
    in_chans: int = 3
    num_classes: int = 1000                 # 0 = no head
    depths: tuple[int, ...] = (3, 3, 9, 3)  # blocks per stage (T)
    dims: tuple[int, ...] = (96, 192, 384, 768)   # channels per stage (T)
    patch_size: int = 4                     # stem stride ("patchify")
    kernel_size: int = 7                    # depthwise kernel
    mlp_ratio: float = 4.0                  # inverted bottleneck width
    layer_scale_init: float = 1e-6          # gamma init; 0 = no layer scale
    norm_eps: float = 1e-6
    head_norm_eps: float = 1e-6             # the head LayerNorm's (HF transformers checkpoints use 1e-12)
    drop_rate: float = 0.0                  # dropout before the head
    drop_path_rate: float = 0.0             # stochastic depth, linear over all blocks (paper: T 0.1, S 0.4, B 0.5)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)                                               # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)                                            # (B, C, H, W)


class ConvNeXtBlock(nn.Module):
    """DWConv 7x7 -> LN -> MLP (C -> 4C -> C) -> layer scale, residual. (B, C, H, W) -> same."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-6,
                 drop_path: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))                               # the 1x1 convs, as linears
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)                                 # (B, H, W, C): channels last
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))                 # (B, C, H, W)


class ConvNeXtStage(nn.Module):
    """Optional down-sampling (LN + 2x2/2 conv) then blocks. (B, cin, H, W) -> (B, dim, H/s, W/s)."""

    def __init__(self, cin: int, dim: int, depth: int, stride: int, dprs: list[float], cfg: ConvNeXtConfig) -> None:
        super().__init__()
        self.downsample = nn.Sequential(LayerNorm2d(cin, eps=cfg.norm_eps),
                                        nn.Conv2d(cin, dim, stride, stride=stride)) if stride > 1 else nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, cfg.kernel_size, cfg.mlp_ratio, cfg.layer_scale_init,
                                                    dprs[j], cfg.norm_eps) for j in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    """ConvNeXt classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> feature map (B, dims[-1], H/32, W/32); forward_head(pre_logits=True) -> (B, dims[-1]).
    """

    def __init__(self, cfg: ConvNeXtConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = ConvNeXtConfig(**{**asdict(cfg or ConvNeXtConfig()), **kwargs})
        if len(cfg.depths) != len(cfg.dims):
            raise VitlabError(f"depths {tuple(cfg.depths)} and dims {tuple(cfg.dims)} must have the same length")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, cfg.dims[0], cfg.patch_size, stride=cfg.patch_size),
                                  LayerNorm2d(cfg.dims[0], eps=cfg.norm_eps))
        dprs = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        stages, cin, start = [], cfg.dims[0], 0
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims, strict=True)):
            stages.append(ConvNeXtStage(cin, dim, depth, 1 if i == 0 else 2, dprs[start:start + depth], cfg))
            cin, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(cfg.dims[-1], eps=cfg.head_norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal(0.02) conv and linear weights, zero biases (the official init)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))                                       # (B, C, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.head_norm(x.mean(dim=(2, 3))))                  # pool, then LN: (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _convnext(overrides: dict[str, Any], **defaults: Any) -> ConvNeXt:
    return ConvNeXt(ConvNeXtConfig(**{**defaults, **overrides}))


@register_model
def convnext_tiny(**kw: Any) -> ConvNeXt:
    """ConvNeXt-T: depths (3, 3, 9, 3), dims 96-768, 224x224."""
    return _convnext(kw, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))


@register_model
def convnext_small(**kw: Any) -> ConvNeXt:
    """ConvNeXt-S: depths (3, 3, 27, 3), dims 96-768, 224x224."""
    return _convnext(kw, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))


@register_model
def convnext_base(**kw: Any) -> ConvNeXt:
    """ConvNeXt-B: depths (3, 3, 27, 3), dims 128-1024, 224x224."""
    return _convnext(kw, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))


@register_model
def convnext_large(**kw: Any) -> ConvNeXt:
    """ConvNeXt-L: depths (3, 3, 27, 3), dims 192-1536, 224x224."""
    return _convnext(kw, depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))


# Small-image variant: a 2x2/2 stem instead of 4x4/4, so 32 px -> 16, 8, 4, 2 maps.
@register_model
def convnext_micro_32(**kw: Any) -> ConvNeXt:
    """A 1.4M-parameter ConvNeXt for 32x32: depths (1, 1, 3, 1), dims 32-256, 2x2 stem."""
    return _convnext(kw, depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), patch_size=2, img_size=32)
