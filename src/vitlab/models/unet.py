"""U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015) and
its 3-D form (Çiçek et al., "3D U-Net", MICCAI 2016): the CNN baseline TransUNet and UNETR compare with.

    encoder:  x -> [conv3-norm-ReLU x2] -> pool -> [conv3-norm-ReLU x2] -> pool -> ...   (widths double per level)
    decoder:  up-conv 2x2 (stride 2) -> concat with the encoder map of the same level -> [conv3-norm-ReLU x2] ...
    head:     1x1 conv -> per-pixel (voxel) class logits

Padded 3x3 convolutions (the output has the input's size, as every modern re-implementation; the paper's
unpadded ones crop the skips) and a norm after each convolution (batch norm, as 3D U-Net).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..layers.nd import conv_nd, conv_transpose_nd, max_pool_nd, norm_nd
from ..variants import register_model


@dataclass
class UNetConfig:
    spatial_dims: int = 2                   # 2: images (B, C, H, W); 3: volumes (B, C, D, H, W)
    img_size: int = 64                      # input side the model is trained at (any multiple of 2^(levels-1) runs)
    in_chans: int = 3                       # input channels
    num_classes: int = 7                    # output classes, background included
    widths: tuple[int, ...] = (32, 64, 128, 256)   # channels per level; the paper: 64, 128, 256, 512, 1024
    norm: str = "batch"                     # batch | instance | instance_noaffine | group | none (layers.nd.norm_nd)
    mean: tuple[float, ...] = ()            # input normalisation; () = 0.5 for each channel
    std: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.std = default_norm(self.mean, self.in_chans), default_norm(self.std, self.in_chans)


def default_norm(values: tuple[float, ...] | list[float], in_chans: int) -> tuple[float, ...]:
    """0.5 per channel when unset (or when an all-0.5 default has the wrong length after an in_chans override)."""
    values = tuple(float(v) for v in values)
    if not values or (len(values) != in_chans and set(values) == {0.5}):
        return (0.5,) * in_chans
    if len(values) != in_chans:
        raise VitlabError(f"mean/std have {len(values)} values but the model has {in_chans} input channels")
    return values


class ConvBlock(nn.Sequential):
    """[conv 3 - norm - ReLU] x 2: (B, cin, *S) -> (B, cout, *S)."""

    def __init__(self, cin: int, cout: int, spatial_dims: int, norm: str) -> None:
        conv = conv_nd(spatial_dims)
        super().__init__(conv(cin, cout, 3, padding=1, bias=norm == "none"), norm_nd(norm, spatial_dims, cout),
                         nn.ReLU(inplace=True),
                         conv(cout, cout, 3, padding=1, bias=norm == "none"), norm_nd(norm, spatial_dims, cout),
                         nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """Up-convolution (2x2, stride 2) halving the channels, concatenation with the skip, ConvBlock.

    x (B, cin, *S), skip (B, cout, *2S) -> (B, cout, *2S)."""

    def __init__(self, cin: int, cout: int, spatial_dims: int, norm: str) -> None:
        super().__init__()
        self.up = conv_transpose_nd(spatial_dims)(cin, cout, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * cout, cout, spatial_dims, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))        # (B, cout, *2S)


class UNet(nn.Module):
    """U-Net segmenter. x (B, in_chans, *S) normalised, S = (H, W) or (D, H, W), each side a multiple of
    2^(levels-1) -> logits (B, num_classes, *S)."""

    def __init__(self, cfg: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = UNetConfig(**{**asdict(cfg or UNetConfig()), **kwargs})
        if cfg.spatial_dims not in (2, 3):
            raise VitlabError(f"spatial_dims must be 2 or 3, got {cfg.spatial_dims}")
        if len(cfg.widths) < 2:
            raise VitlabError("a U-Net needs at least two levels (widths)")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        d, w = cfg.spatial_dims, cfg.widths
        self.stem = ConvBlock(cfg.in_chans, w[0], d, cfg.norm)
        self.pool = max_pool_nd(d)(2)
        self.down = nn.ModuleList(ConvBlock(a, b, d, cfg.norm) for a, b in zip(w[:-1], w[1:]))
        self.up = nn.ModuleList(UpBlock(b, a, d, cfg.norm) for a, b in reversed(list(zip(w[:-1], w[1:]))))
        self.head = conv_nd(d)(w[0], cfg.num_classes, kernel_size=1)

    @property
    def stride(self) -> int:
        """Down-sampling of the deepest level: input sides must be multiples of it."""
        return 2 ** (len(self.cfg.widths) - 1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The encoder's maps, shallow to deep: level i is (B, widths[i], *S / 2^i)."""
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(self.pool(feats[-1])))
        return feats

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[2:])                                      # (H, W) or (D, H, W)
        if len(size) != self.cfg.spatial_dims or x.shape[1] != self.cfg.in_chans:
            raise VitlabError(f"input is {tuple(x.shape)} but the model takes (B, {self.cfg.in_chans}, "
                              f"{', '.join('HW' if self.cfg.spatial_dims == 2 else 'DHW')})")
        if any(s % self.stride for s in size):
            raise VitlabError(f"input is {'x'.join(map(str, size))}: each side must be a multiple of {self.stride}")
        *skips, x = self.encode(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)                                         # up one level
        return self.head(x)                                            # (B, num_classes, *S)


# --- variants ----------------------------------------------------------------------------------------------------
@register_model(task="segmentation")
def unet_small_64(**kw: Any) -> UNet:
    """2-D U-Net for 64x64 `scenes` (background + 6 shapes): four levels, widths 32-256, batch norm; 1.9M params."""
    return UNet(UNetConfig(**{**dict(spatial_dims=2, img_size=64, in_chans=3, num_classes=7), **kw}))


@register_model(task="segmentation")
def unet3d_small_32(**kw: Any) -> UNet:
    """3-D U-Net for 32^3 one-channel volumes (background + 3 classes): four levels, widths 16-128, instance norm;
    1.4M params."""
    return UNet(UNetConfig(**{**dict(spatial_dims=3, img_size=32, in_chans=1, num_classes=4, widths=(16, 32, 64, 128),
                                     norm="instance"), **kw}))
