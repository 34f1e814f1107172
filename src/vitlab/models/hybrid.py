"""Hybrid ViT (Dosovitskiy et al. 2021, §3.1 "Hybrid Architecture").

"As an alternative to raw image patches, the input sequence can be formed from feature maps of a CNN": a ResNet
turns the image into a (C, h, w) feature map, and the patch embedding E of eq. 1 is applied to patches of size
1x1 of that map, i.e. a 1x1 convolution C -> dim. Everything after that is the plain ViT.

The paper's backbone is a BiT ResNet (GroupNorm + weight standardisation, models/bit.py): the registered
timm-named variants use it, so timm's and Google's hybrid checkpoints load (`vit_small_r26_s32_224`: ResNet-26,
four stages of two bottlenecks, stride 32, under a ViT-S; `vit_base_r50_s16_384`: the paper's R50+ViT-B/16).
cfg.extra["backbone"]["kind"] = "resnet" swaps in vitlab's batch-norm ResNet instead (models/resnet.py; the small
CIFAR-style `vit_micro_r8_s4_32` uses it: BatchNorm trains well from scratch at batch sizes a CPU runs).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..layers import to_2tuple
from ..variants import register_model
from .bit import BiTConfig, BiTResNet
from .resnet import ResNet, ResNetConfig
from .vit import SIZES, VisionTransformer, ViTConfig


class HybridEmbed(nn.Module):
    """CNN feature map as the patch sequence: (B, 3, H, W) -> (B, h*w, dim), h = H / backbone stride.

    Offers PatchEmbed's interface (img_size, patch_size, grid_size, num_patches, proj) so the ViT around it is
    unchanged; `patch_size` is the backbone's stride in pixels.
    """

    def __init__(self, backbone: ResNet | BiTResNet, img_size: int | tuple[int, int], dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.img_size = to_2tuple(img_size)
        stride = backbone.cfg.stride
        if self.img_size[0] % stride or self.img_size[1] % stride:
            raise VitlabError(f"image size {self.img_size[0]}x{self.img_size[1]} is not divisible by the "
                              f"backbone stride {stride}")
        self.patch_size = (stride, stride)
        self.grid_size = (self.img_size[0] // stride, self.img_size[1] // stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(backbone.num_features, dim, kernel_size=1)   # patch size 1 on the feature map

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        if (H, W) != self.img_size:
            raise VitlabError(f"input is {H}x{W} but the model was built for {self.img_size[0]}x{self.img_size[1]}")
        x = self.proj(self.backbone.forward_features(x))                    # (B, dim, h, w)
        return x.flatten(2).transpose(1, 2)                                 # (B, h*w, dim)


class HybridViT(VisionTransformer):
    """ViT whose patch embedding is a ResNet + 1x1 projection. cfg.extra["backbone"]: kind ("bit", the paper's, or
    "resnet", batch norm) and that backbone's config fields (BiTConfig: layers, widths, stem_width; ResNetConfig:
    block, layers, widths, stem, stem_width); cfg.patch_size is ignored (the backbone stride replaces it)."""

    def __init__(self, cfg: ViTConfig | None = None, **kwargs: Any) -> None:
        cfg = ViTConfig(**{**asdict(cfg or ViTConfig()), **kwargs})
        backbone = build_backbone(cfg.extra.get("backbone", {}), cfg.img_size, cfg.in_chans)
        # ViT's own PatchEmbed is built with the backbone stride as patch size, so that its grid (and hence the
        # position embedding) is the feature map's; it is then replaced by the hybrid embedding.
        super().__init__(cfg, patch_size=backbone.cfg.stride)
        self.patch_embed = HybridEmbed(backbone, self.cfg.img_size, self.cfg.dim)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)


def build_backbone(spec: dict[str, Any], img_size: Any, in_chans: int) -> ResNet | BiTResNet:
    """The CNN under the ViT: spec = {"kind": "bit" | "resnet", **that config's fields}."""
    spec = dict(spec)
    kind = spec.pop("kind", "resnet")        # configs saved before the BiT stem existed hold a batch-norm ResNet
    if kind == "bit":
        return BiTResNet(BiTConfig(**spec, img_size=img_size, in_chans=in_chans))
    if kind == "resnet":
        return ResNet(ResNetConfig(**spec, img_size=img_size, num_classes=0, in_chans=in_chans))
    raise VitlabError(f"hybrid backbone kind must be 'bit' or 'resnet', got {kind!r}")


def _hybrid(size: str, img_size: int, backbone: dict[str, Any], overrides: dict[str, Any]) -> HybridViT:
    return HybridViT(ViTConfig(**{**SIZES[size], "img_size": img_size, "extra": {"backbone": backbone}, **overrides}))


# BiT backbones as timm's hybrids build them (ResNetV2, no pre-activation, 'SAME' padding).
R26 = dict(kind="bit", layers=(2, 2, 2, 2), widths=(256, 512, 1024, 2048))   # 1 + 8*3 + 1 = 26 layers, stride 32
# The paper's R50: stage 4 removed, stage 3 deepened to 9 blocks (stride 16).
R50_S16 = dict(kind="bit", layers=(3, 4, 9), widths=(256, 512, 1024))
# timm's vit_large_r50_s32: the full four-stage R50 (stride 32).
R50_S32 = dict(kind="bit", layers=(3, 4, 6, 3), widths=(256, 512, 1024, 2048))
# CIFAR-style batch-norm ResNet stem (3x3/1, no pool), three basic stages of stride 1, 2, 2 -> 8x8 tokens at 32 px.
R8_S4 = dict(kind="resnet", block="basic", layers=(1, 1, 1), widths=(32, 64, 128), stem="small", stem_width=32)
# ImageNet stem (7x7/2 conv + 3x3/2 max-pool) and two basic stages of stride 1, 2 -> 8x8 tokens at 64 px: a conv
# stem of 13.5M MACs per 64-px image under a ViT-micro of 22M (35.9M in all, against 23.2M for ViT-micro/8), for
# DINO on 64-px scenes.
R6_S8 = dict(kind="resnet", block="basic", layers=(1, 1), widths=(32, 64), stem="imagenet", stem_width=32)


@register_model
def vit_small_r26_s32_224(**kw: Any) -> HybridViT:
    """ViT-S on ResNet-26 features (stride 32), 224x224."""
    return _hybrid("small", 224, R26, kw)


@register_model
def vit_base_r26_s32_224(**kw: Any) -> HybridViT:
    """ViT-B on ResNet-26 features (stride 32), 224x224."""
    return _hybrid("base", 224, R26, kw)


@register_model
def vit_small_r26_s32_384(**kw: Any) -> HybridViT:
    """ViT-S on ResNet-26 features (stride 32), 384x384."""
    return _hybrid("small", 384, R26, kw)


@register_model
def vit_base_r50_s16_224(**kw: Any) -> HybridViT:
    """ViT-B on ResNet-50 with stage 4 removed and stage 3 deepened to 9 blocks (the paper's R50+ViT-B/16)."""
    return _hybrid("base", 224, R50_S16, kw)


@register_model
def vit_base_r50_s16_384(**kw: Any) -> HybridViT:
    """The paper's R50+ViT-B/16 at its fine-tuning size 384x384 (timm's name; Google's R50+ViT-B_16.npz)."""
    return _hybrid("base", 384, R50_S16, kw)


@register_model
def vit_large_r50_s32_224(**kw: Any) -> HybridViT:
    """ViT-L on the full four-stage ResNet-50 (stride 32), 224x224."""
    return _hybrid("large", 224, R50_S32, kw)


@register_model
def vit_micro_r8_s4_32(**kw: Any) -> HybridViT:
    """ViT-micro on a 7-conv CIFAR ResNet (stride 4, 8x8 tokens at 32x32)."""
    return _hybrid("micro", 32, R8_S4, kw)


@register_model
def vit_micro_r6_s8_64(**kw: Any) -> HybridViT:
    """ViT-micro on a 5-conv ResNet (ImageNet stem, two basic stages; stride 8, 8x8 tokens at 64x64)."""
    return _hybrid("micro", 64, R6_S8, kw)
