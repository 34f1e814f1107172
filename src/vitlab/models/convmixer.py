"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", TMLR 2023 / arXiv 2022).

    z0 = BN(act(Conv_{c_in -> h}(X, kernel p, stride p)))         patch embedding
    z' = BN(act(DepthwiseConv(z))) + z                             spatial mixing (large kernel k), residual
    z  = BN(act(PointwiseConv(z')))                                channel mixing
then global average pooling and a linear head. Name: ConvMixer-h/d (width h, depth d), with kernel k, patch p.
The feature map keeps the patch grid's resolution through the whole network, as ViT's tokens do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..layers import PatchEmbed
from ..variants import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class ConvMixerConfig:
    img_size: int | tuple[int, int] = 224   # input side the model is meant for (any size >= patch runs, floored)
    patch_size: int = 7                     # p
    in_chans: int = 3
    num_classes: int = 1000                 # 0 = no head
    dim: int = 768                          # width h
    depth: int = 32                         # blocks d
    kernel_size: int = 7                    # depthwise kernel k
    act: str = "relu"                       # "gelu" or "relu" (ConvMixer-768/32 was trained with ReLU)
    drop_rate: float = 0.0                  # dropout before the head
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)


class ConvMixerBlock(nn.Module):
    """Residual depthwise conv (spatial mixing) then pointwise conv (channel mixing). (B, h, H, W) -> same."""

    def __init__(self, dim: int, kernel_size: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2)   # "same" padding
        self.act1 = act()
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv_pw = nn.Conv2d(dim, dim, 1)
        self.act2 = act()
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.norm1(self.act1(self.conv_dw(x)))
        return self.norm2(self.act2(self.conv_pw(x)))


class ConvMixer(nn.Module):
    """ConvMixer classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> feature map (B, dim, H/p, W/p); forward_head(pre_logits=True) -> pooled (B, dim).
    """

    def __init__(self, cfg: ConvMixerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = ConvMixerConfig(**{**asdict(cfg or ConvMixerConfig()), **kwargs})
        if cfg.act not in ACTIVATIONS:
            raise VitlabError(f"act must be one of {', '.join(ACTIVATIONS)}, got {cfg.act!r}")
        if cfg.kernel_size % 2 == 0:     # the paper's "same" padding keeps the grid only for odd kernels here
            raise VitlabError(f"kernel_size must be odd, got {cfg.kernel_size}")
        act = ACTIVATIONS[cfg.act]
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.stem = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim, flatten=False,
                               strict_img_size=False)
        self.stem_act = act()
        self.stem_norm = nn.BatchNorm2d(cfg.dim)
        self.blocks = nn.Sequential(*[ConvMixerBlock(cfg.dim, cfg.kernel_size, act) for _ in range(cfg.depth)])
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem_norm(self.stem_act(self.stem(x)))                       # (B, dim, H/p, W/p)
        return self.blocks(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))                                 # global average pool: (B, dim)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _convmixer(overrides: dict[str, Any], **defaults: Any) -> ConvMixer:
    return ConvMixer(ConvMixerConfig(**{**defaults, **overrides}))


@register_model
def convmixer_768_32(**kw: Any) -> ConvMixer:
    """ConvMixer-768/32, kernel 7, patch 7, ReLU (the paper's Table 1), 224x224."""
    return _convmixer(kw, dim=768, depth=32, kernel_size=7, patch_size=7, act="relu")


@register_model
def convmixer_1024_20_ks9_p14(**kw: Any) -> ConvMixer:
    """ConvMixer-1024/20, kernel 9, patch 14, GELU, 224x224."""
    return _convmixer(kw, dim=1024, depth=20, kernel_size=9, patch_size=14, act="gelu")


@register_model
def convmixer_1536_20(**kw: Any) -> ConvMixer:
    """ConvMixer-1536/20, kernel 9, patch 7, GELU, 224x224."""
    return _convmixer(kw, dim=1536, depth=20, kernel_size=9, patch_size=7, act="gelu")


# Small-image variants: the paper's CIFAR-10 models use patch 1-2 and kernel 5-9 on 32x32 inputs.
@register_model
def convmixer_256_8_ks5_p2_32(**kw: Any) -> ConvMixer:
    """ConvMixer-256/8, kernel 5, patch 2, GELU, for 32x32 (a CIFAR-10 setting of the paper)."""
    return _convmixer(kw, dim=256, depth=8, kernel_size=5, patch_size=2, act="gelu", img_size=32)


@register_model
def convmixer_128_4_ks5_p2_32(**kw: Any) -> ConvMixer:
    """ConvMixer-128/4, kernel 5, patch 2, GELU, for 32x32: a fast CPU model."""
    return _convmixer(kw, dim=128, depth=4, kernel_size=5, patch_size=2, act="gelu", img_size=32)
