"""TransUNet (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation", 2021).

    encoder: CNN stages keeping their maps (1/2, 1/4, 1/8) -> 1/16 feature map -> 1x1 patches -> ViT -> z_L
    CUP (cascaded upsampler): z_L as a map -> conv3 (512) -> 4 x [bilinear x2, concat skip, conv3, conv3]
             decoder widths 256, 128, 64, 16; skips 512 @1/8, 256 @1/4, 64 @1/2 (n_skip = 3), none at full size
    head: conv3 -> num_classes logits

The paper's R50-ViT-B/16 (Beckschen/TransUNet, get_r50_b16_config): the backbone is BiT's ResNet (weight-
standardised convs + GroupNorm; vitlab.models.bit) with stages of (3, 4, 9) bottlenecks, ViT-B (12 layers, 768, 12
heads, MLP 3072) on the 14x14 map of a 224 input. Conv-BN-ReLU decoder blocks, bilinear up-sampling with
align_corners=True (nn.UpsamplingBilinear2d, as the official code). Differences from the official code, none of
which changes a parameter count: BiT's max-pool pads 'SAME' (56x56 at 224; the official pads the 55x55 map with
zeros), GroupNorm eps 1e-5 and 32 groups in the projection shortcut (official: eps 1e-6, one group per channel).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..layers.nd import tokens_to_map
from ..variants import register_model
from .bit import BiTConfig, BiTResNet, _same_pad
from .unet import default_norm
from .vit_encoder import ViTEncoder


@dataclass
class TransUNetConfig:
    img_size: int = 224                     # input side (the paper: 224)
    in_chans: int = 3
    num_classes: int = 9                    # Synapse: 8 organs + background
    layers: tuple[int, ...] = (3, 4, 9)     # bottlenecks per backbone stage (R50 with stage 4 removed, 3 deeper)
    stem_width: int = 64                    # backbone stem channels (the 1/2 skip)
    widths: tuple[int, ...] = (256, 512, 1024)   # backbone stage outputs (1/4, 1/8, 1/16)
    num_groups: int = 32                    # backbone GroupNorm groups
    dim: int = 768                          # ViT width (ViT-B)
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    head_channels: int = 512                # CUP's first conv (the official code's conv_more)
    decoder_channels: tuple[int, ...] = (256, 128, 64, 16)   # CUP blocks, 1/8 .. 1/1
    n_skip: int = 3                         # skips joined (1/8, 1/4, 1/2); the paper's ablation: 0, 1, 3
    norm_eps: float = 1e-6                  # ViT LayerNorm epsilon (the official code's)
    drop_rate: float = 0.1                  # ViT dropout (the official config's 0.1)
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    mean: tuple[float, ...] = ()            # () = 0.5 per channel
    std: tuple[float, ...] = ()
    spatial_dims: int = 2                   # images only
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.std = default_norm(self.mean, self.in_chans), default_norm(self.std, self.in_chans)


class ConvBNReLU(nn.Sequential):
    """conv3 (no bias) - BatchNorm - ReLU. (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """CUP step: bilinear x2, concat the skip (if any), two ConvBNReLU. (B, cin, H, W) -> (B, cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int, skip: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin + skip, cout)
        self.conv2 = ConvBNReLU(cout, cout)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNet(nn.Module):
    """x (B, in_chans, H, W) normalised, H = W = img_size -> logits (B, num_classes, H, W).

    `forward_skips(x)` returns the CNN skips and the ViT output map (see its docstring)."""

    def __init__(self, cfg: TransUNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = TransUNetConfig(**{**asdict(cfg or TransUNetConfig()), **kwargs, "spatial_dims": 2})
        if len(cfg.layers) != 3 or len(cfg.widths) != 3 or len(cfg.decoder_channels) != 4:
            raise VitlabError("TransUNet needs 3 backbone stages (1/4, 1/8, 1/16) and 4 decoder channels")
        if not 0 <= cfg.n_skip <= 3:
            raise VitlabError(f"n_skip must be 0..3, got {cfg.n_skip}")
        if cfg.img_size % 16:
            raise VitlabError(f"image size {cfg.img_size} is not divisible by 16 (the backbone stride)")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.backbone = BiTResNet(BiTConfig(img_size=cfg.img_size, in_chans=cfg.in_chans, layers=tuple(cfg.layers),
                                            widths=tuple(cfg.widths), stem_width=cfg.stem_width,
                                            num_groups=cfg.num_groups))
        # the ViT on the 1/16 map: 1x1 "patches" (the official patch_size = img / 16 / grid = 1)
        self.vit = ViTEncoder(2, cfg.img_size // 16, 1, cfg.widths[-1], cfg.dim, cfg.depth, cfg.num_heads,
                              cfg.mlp_dim, True, cfg.norm_eps, cfg.drop_rate, cfg.attn_drop_rate, cfg.drop_path_rate)
        self.conv_more = ConvBNReLU(cfg.dim, cfg.head_channels)
        skip_channels = [cfg.widths[1], cfg.widths[0], cfg.stem_width, 0]    # 1/8, 1/4, 1/2, none at 1/1
        skip_channels = [c if i < cfg.n_skip else 0 for i, c in enumerate(skip_channels)]
        cins = [cfg.head_channels, *cfg.decoder_channels[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(a, b, s) for a, b, s in zip(cins, cfg.decoder_channels,
                                                                               skip_channels))
        self.head = nn.Conv2d(cfg.decoder_channels[-1], cfg.num_classes, 3, padding=1)

    def forward_skips(self, x: Tensor) -> list[Tensor]:
        """[skip 1/8 (B, widths[1]), skip 1/4 (B, widths[0]), skip 1/2 (B, stem_width), ViT output map
        (B, dim, H/16, W/16)] — the official `features` (deep to shallow) and the transformer's map."""
        stem = self.backbone.stem
        half = stem.norm(stem.conv(x))                                        # (B, stem_width, H/2, W/2)
        y = F.max_pool2d(_same_pad(half, 3, 2, value=float("-inf")), 3, 2)  # (B, stem_width, H/4, W/4)
        quarter = self.backbone.stages[0](y)                                  # (B, widths[0], H/4, W/4)
        eighth = self.backbone.stages[1](quarter)                             # (B, widths[1], H/8, W/8)
        y = self.backbone.stages[2](eighth)                                   # (B, widths[2], H/16, W/16)
        tokens, _ = self.vit(y)                                               # (B, h*w, dim)
        return [eighth, quarter, half, tokens_to_map(tokens, self.vit.grid_size)]

    def forward(self, x: Tensor) -> Tensor:
        *skips, x = self.forward_skips(x)
        x = self.conv_more(x)                                                 # (B, head_channels, H/16, W/16)
        for i, block in enumerate(self.decoder):
            x = block(x, skips[i] if i < self.cfg.n_skip else None)
        return self.head(x)                                                   # (B, num_classes, H, W)


@register_model(task="segmentation")
def transunet_r50_vit_b16_224(**kw: Any) -> TransUNet:
    """The paper's R50-ViT-B/16 at 224x224, 9 classes (Synapse); 105.3M params (the official code's 105.28M)."""
    return TransUNet(TransUNetConfig(**kw))


@register_model(task="segmentation")
def transunet_small_64(**kw: Any) -> TransUNet:
    """TransUNet for 64x64 `scenes` (7 classes): BiT stages (1, 1, 1) widths 64/128/256 (stem 32, GroupNorm 16),
    ViT d 192 / 4 layers / 3 heads on the 4x4 map, CUP 128/64/32/16."""
    return TransUNet(TransUNetConfig(**{**dict(img_size=64, num_classes=7, layers=(1, 1, 1), stem_width=32,
                                               widths=(64, 128, 256), num_groups=16, dim=192, depth=4, num_heads=3,
                                               mlp_dim=768, head_channels=256, decoder_channels=(128, 64, 32, 16),
                                               drop_rate=0.0), **kw}))
