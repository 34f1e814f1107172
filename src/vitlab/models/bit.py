"""BiT ResNet (Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", ECCV 2020) in the
form the hybrid ViT of Dosovitskiy et al. (2021, §3.1 and App. D.4) uses it.

BiT replaces batch norm by GroupNorm (32 groups) and standardises every convolution's weight, per output
channel, before it is applied ("weight standardisation", Qiao et al. 2019):

    W_hat = (W - mean(W)) / sqrt(var(W) + eps)        mean/var over (in_chans, k, k) of each output channel

The ViT hybrids run it without pre-activation (conv -> GN -> ReLU, as ResNet v1.5: stride on the 3x3 conv) and with
TensorFlow's "SAME" padding (the extra pixel of an even-sized strided window goes to the bottom/right), which is
what the Google checkpoints were trained with. Parameter names follow timm's ResNetV2 (stem.conv, stem.norm,
stages.{s}.blocks.{i}.conv1..3 / norm1..3 / downsample.conv / downsample.norm), so timm state dicts load as is.
Only a backbone: no head (`forward_features` -> feature map).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError


@dataclass
class BiTConfig:
    img_size: int | tuple[int, int] = 224   # input side it is meant for (any size runs: it is all conv)
    in_chans: int = 3                       # input channels (RGB)
    layers: tuple[int, ...] = (3, 4, 9)     # bottlenecks per stage (the ViT paper's R50: stage 4 removed, 3 deeper)
    widths: tuple[int, ...] = (256, 512, 1024)   # output channels per stage (bottleneck inner width = 1/4)
    stem_width: int = 64                    # channels of the 7x7/2 stem conv
    num_groups: int = 32                    # GroupNorm groups (BiT)
    ws_eps: float = 1e-8                    # weight-standardisation eps (timm's hybrids; the Google code's 1e-10 is
    # below float32 resolution of the variance of any trained kernel, so the two agree)

    @property
    def stride(self) -> int:
        """Total down-sampling: stem 4 (conv /2 + max-pool /2), then /2 per stage after the first."""
        return 4 * 2 ** (len(self.layers) - 1)

    @property
    def num_features(self) -> int:
        return self.widths[-1]


def _same_pad(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    """TensorFlow 'SAME' padding for a window of `kernel` / `stride`: output ceil(H / stride), the odd pixel of
    the padding at the bottom/right."""
    H, W = x.shape[-2:]
    ph = max((math.ceil(H / stride) - 1) * stride + kernel - H, 0)
    pw = max((math.ceil(W / stride) - 1) * stride + kernel - W, 0)
    if ph or pw:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)
    return x


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv with 'SAME' padding, no bias. (B, cin, H, W) -> (B, cout, ceil(H/s), ceil(W/s))."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, eps: float = 1e-8) -> None:
        # stride 1: 'SAME' is symmetric and static; otherwise it depends on the input size (padded in forward)
        super().__init__(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2 if stride == 1 else 0,
                         bias=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            x = _same_pad(x, self.kernel_size[0], self.stride[0])
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, correction=0)
        weight = (self.weight - mean) / torch.sqrt(var + self.eps)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, then ReLU unless act=False (the last norm of a residual branch, before the addition)."""

    def __init__(self, num_groups: int, channels: int, act: bool = True) -> None:
        super().__init__(num_groups, channels, eps=1e-5)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class Downsample(nn.Module):
    """Projection shortcut: 1x1 standardised conv (with the block's stride) + GroupNorm, no activation."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: BiTConfig) -> None:
        super().__init__()
        self.conv = StdConv2d(cin, cout, 1, stride, cfg.ws_eps)
        self.norm = GroupNormAct(cfg.num_groups, cout, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1, each conv + GN, ReLU after the sum. (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: BiTConfig) -> None:
        super().__init__()
        mid = cout // 4
        self.downsample = Downsample(cin, cout, stride, cfg) if stride != 1 or cin != cout else None
        self.conv1 = StdConv2d(cin, mid, 1, eps=cfg.ws_eps)
        self.norm1 = GroupNormAct(cfg.num_groups, mid)
        self.conv2 = StdConv2d(mid, mid, 3, stride, cfg.ws_eps)
        self.norm2 = GroupNormAct(cfg.num_groups, mid)
        self.conv3 = StdConv2d(mid, cout, 1, eps=cfg.ws_eps)
        self.norm3 = GroupNormAct(cfg.num_groups, cout, act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, stride: int, cfg: BiTConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1, cfg)
                                      for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class Stem(nn.Module):
    """7x7/2 standardised conv + GN + ReLU, then a 3x3/2 max-pool with 'SAME' padding (padded with -inf)."""

    def __init__(self, cfg: BiTConfig) -> None:
        super().__init__()
        self.conv = StdConv2d(cfg.in_chans, cfg.stem_width, 7, 2, cfg.ws_eps)
        self.norm = GroupNormAct(cfg.num_groups, cfg.stem_width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))                                          # (B, stem_width, H/2, W/2)
        return F.max_pool2d(_same_pad(x, 3, 2, value=float("-inf")), 3, 2)   # (B, stem_width, H/4, W/4)


class BiTResNet(nn.Module):
    """The backbone: x (B, in_chans, H, W) -> forward_features (B, widths[-1], H/stride, W/stride)."""

    def __init__(self, cfg: BiTConfig) -> None:
        super().__init__()
        for w in (cfg.stem_width, *cfg.widths, *(w // 4 for w in cfg.widths)):
            if w % cfg.num_groups:
                raise VitlabError(f"BiT widths must be multiples of {cfg.num_groups} (GroupNorm groups), "
                                  f"got {w}")
        self.cfg = cfg
        self.num_features = cfg.num_features
        self.stem = Stem(cfg)
        cins = (cfg.stem_width, *cfg.widths[:-1])
        self.stages = nn.Sequential(*[Stage(cin, cout, depth, 1 if s == 0 else 2, cfg)
                                      for s, (cin, cout, depth) in enumerate(zip(cins, cfg.widths, cfg.layers))])

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)
