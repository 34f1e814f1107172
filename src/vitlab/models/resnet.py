"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016): the lectures' CNN baseline,
DeiT's teacher and the hybrid ViT's backbone.

    y = relu(F(x) + shortcut(x))        F: two 3x3 convs (basic) or 1x1-3x3-1x1 (bottleneck, 4x wider output)

Layout and parameter names follow torchvision (conv1/bn1/layer1..4/fc; `downsample` on the shortcut), with the
stride on the 3x3 convolution of a bottleneck ("ResNet v1.5", as torchvision, timm and HF transformers).
Small-image variants ("_32") replace the 7x7/2 stem and max-pool by one 3x3/1 conv, the usual CIFAR recipe.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..layers import DropPath, drop_path_rates
from ..variants import register_model


@dataclass
class ResNetConfig:
    img_size: int | tuple[int, int] = 224   # input side the model is meant for (any size runs: it is all conv)
    in_chans: int = 3                       # input channels (RGB)
    num_classes: int = 1000                 # classifier outputs; 0 = no head (pooled features)
    block: str = "basic"                    # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper)
    layers: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks per stage; fewer stages = a shallower backbone
    widths: tuple[int, ...] = (64, 128, 256, 512)   # 3x3-conv width per stage; a bottleneck outputs 4x this
    stem: str = "imagenet"                  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "small": one 3x3/1 conv
    stem_width: int = 64                    # channels after the stem
    drop_rate: float = 0.0                  # dropout before the classifier
    drop_path_rate: float = 0.0             # stochastic depth on the residual branches (0 in the paper)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def num_features(self) -> int:
        """Channels of the last feature map."""
        return self.widths[-1] * self.expansion

    @property
    def stride(self) -> int:
        """Total down-sampling of the feature map relative to the input."""
        return (4 if self.stem == "imagenet" else 1) * 2 ** (len(self.layers) - 1)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """1x1 projection shortcut (option B of the paper) used when the shape changes."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual: (B, cin, H, W) -> (B, width, H/stride, W/stride)."""
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(cin, width, stride) if stride != 1 or cin != width else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu(self.drop_path(x) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand: (B, cin, H, W) -> (B, 4 * width, H/stride, W/stride)."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(cin, cout, stride) if stride != 1 or cin != cout else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.relu(self.drop_path(x) + shortcut)


class ResNet(nn.Module):
    """ResNet classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> feature map (B, num_features, H/stride, W/stride);
    forward_head(map, pre_logits=True) -> globally average-pooled (B, num_features).
    """

    def __init__(self, cfg: ResNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = ResNetConfig(**{**asdict(cfg or ResNetConfig()), **kwargs})
        if cfg.block not in ("basic", "bottleneck"):
            raise VitlabError(f"block must be 'basic' or 'bottleneck', got {cfg.block!r}")
        if cfg.stem not in ("imagenet", "small"):
            raise VitlabError(f"stem must be 'imagenet' or 'small', got {cfg.stem!r}")
        if len(cfg.layers) != len(cfg.widths) or not cfg.layers:
            raise VitlabError(f"layers {tuple(cfg.layers)} and widths {tuple(cfg.widths)} must have the same length")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.num_features
        if cfg.stem == "imagenet":
            self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:   # small images: keep the resolution, a 7x7/2 + pool stem would leave 8x8 of a 32x32 input
            self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.ReLU(inplace=True)
        block = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        rates = iter(drop_path_rates(cfg.drop_path_rate, sum(cfg.layers)))
        cin = cfg.stem_width
        for i, (depth, width) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
            blocks = []
            for j in range(depth):   # the first block of every stage but the first halves the resolution
                blocks.append(block(cin, width, stride=2 if i > 0 and j == 0 else 1, drop_path=next(rates)))
                cin = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(cfg.layers)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """He-normal (fan-out) convolutions, unit BN scale (torchvision's defaults)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))       # (B, stem_width, H/4, W/4) ("small": H, W)
        for stage in self.stages():
            x = stage(x)
        return x                                                     # (B, num_features, H/stride, W/stride)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))                       # global average pool: (B, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ----------------------------------------------------------------------------------------------------
def _resnet(overrides: dict[str, Any], **defaults: Any) -> ResNet:
    return ResNet(ResNetConfig(**{**defaults, **overrides}))


@register_model
def resnet18(**kw: Any) -> ResNet:
    """ResNet-18 (Table 1 of the paper), 224x224."""
    return _resnet(kw, block="basic", layers=(2, 2, 2, 2))


@register_model
def resnet34(**kw: Any) -> ResNet:
    """ResNet-34, 224x224."""
    return _resnet(kw, block="basic", layers=(3, 4, 6, 3))


@register_model
def resnet50(**kw: Any) -> ResNet:
    """ResNet-50 (bottleneck blocks), 224x224."""
    return _resnet(kw, block="bottleneck", layers=(3, 4, 6, 3))


@register_model
def resnet101(**kw: Any) -> ResNet:
    """ResNet-101, 224x224."""
    return _resnet(kw, block="bottleneck", layers=(3, 4, 23, 3))


@register_model
def resnet152(**kw: Any) -> ResNet:
    """ResNet-152, 224x224."""
    return _resnet(kw, block="bottleneck", layers=(3, 8, 36, 3))


# Small-image variants (8-64 px: digits, MNIST, CIFAR, shapes): 3x3/1 stem, no max-pool; 32 px -> 4x4 last map.
@register_model
def resnet18_32(**kw: Any) -> ResNet:
    """ResNet-18 for 32x32 inputs (CIFAR stem)."""
    return _resnet(kw, block="basic", layers=(2, 2, 2, 2), stem="small", img_size=32)


@register_model
def resnet50_32(**kw: Any) -> ResNet:
    """ResNet-50 for 32x32 inputs (CIFAR stem)."""
    return _resnet(kw, block="bottleneck", layers=(3, 4, 6, 3), stem="small", img_size=32)


@register_model
def resnet_micro_32(**kw: Any) -> ResNet:
    """A 0.4M-parameter ResNet-10 (one basic block per stage, widths 16-128) for 32x32: a fast CPU teacher."""
    return _resnet(kw, block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem="small", stem_width=16,
                   img_size=32)
