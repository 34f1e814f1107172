"""Spatial Transformer Networks (Jaderberg et al., NeurIPS 2015).

A differentiable module that learns where to look:

    theta = f_loc(U)                          localisation net -> 6 affine parameters (2 x 3), per transformer
    (x_s, y_s) = theta (x_t, y_t, 1)^T        grid generator: output pixel -> sampling point in the input (eq. 1)
    V = bilinear sample of U at (x_s, y_s)    sampler (eq. 5)

The regression layer starts at zero weights and an identity bias, so training begins from "look at the whole
image" and the module learns to crop, rotate and zoom as the classifier needs. Several transformers in parallel
(the paper's 2x/4x ST-CNN on birds) each produce a crop for their own classifier branch; the branch features are
concatenated before the final layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from ..variants import register_model


@dataclass
class STNConfig:
    img_size: int = 48                      # input side in pixels (any size works: both nets pool globally)
    in_chans: int = 3
    num_classes: int = 10
    out_size: int = 32                      # side of each crop the sampler produces
    num_transformers: int = 1               # K parallel spatial transformers, each with its classifier branch
    use_stn: bool = True                    # False: identity sampling (the same classifier without the ST, baseline)
    loc_channels: tuple[int, ...] = (16, 32)   # localisation CNN widths (conv 5x5 + max-pool each)
    loc_hidden: int = 64                    # localisation hidden width before the 6K regression outputs
    cls_channels: tuple[int, ...] = (32, 64, 128)   # classifier CNN widths (conv 3x3 + max-pool each)
    drop_rate: float = 0.0                  # dropout before the final layer
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _conv_stack(in_chans: int, widths: tuple[int, ...], kernel: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_chans, w, kernel, padding=kernel // 2), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        in_chans = w
    return nn.Sequential(*layers)


class SpatialTransformer(nn.Module):
    """K affine spatial transformers sharing one localisation trunk.

    x (B, C, H, W) -> (crops (B, K, C, out, out), theta (B, K, 2, 3)); theta maps output coordinates in [-1, 1]
    to input coordinates (F.affine_grid's convention, align_corners=False).
    """

    def __init__(self, in_chans: int = 3, out_size: int = 32, num_transformers: int = 1,
                 channels: tuple[int, ...] = (16, 32), hidden: int = 64, learn: bool = True) -> None:
        super().__init__()
        if num_transformers < 1:
            raise VitlabError(f"num_transformers must be >= 1, got {num_transformers}")
        self.out_size = out_size
        self.num_transformers = num_transformers
        self.learn = learn
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).repeat(num_transformers)   # (6K,)
        if learn:
            self.localization = nn.Sequential(_conv_stack(in_chans, channels, 5), nn.AdaptiveAvgPool2d(4),
                                              nn.Flatten(), nn.Linear(channels[-1] * 16, hidden), nn.ReLU(inplace=True))
            self.fc_theta = nn.Linear(hidden, 6 * num_transformers)
            nn.init.zeros_(self.fc_theta.weight)          # start at the identity transform (the paper's init)
            with torch.no_grad():
                self.fc_theta.bias.copy_(identity)
        else:
            self.register_buffer("identity", identity, persistent=False)

    def theta(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> affine parameters (B, K, 2, 3)."""
        B = x.shape[0]
        params = self.fc_theta(self.localization(x)) if self.learn else self.identity.expand(B, -1)
        return params.view(B, self.num_transformers, 2, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, C = x.shape[:2]
        K, S = self.num_transformers, self.out_size
        theta = self.theta(x)                                                     # (B, K, 2, 3)
        grid = F.affine_grid(theta.reshape(B * K, 2, 3).to(x.dtype), [B * K, C, S, S], align_corners=False)
        source = x.repeat_interleave(K, dim=0)                                    # (B*K, C, H, W)
        # Outside the input the sampler repeats the border pixel: zero padding would paint the mean colour (0 after
        # normalisation) into crops that reach past the image, an edge the classifier could latch onto.
        crops = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return crops.view(B, K, C, S, S), theta


class STNClassifier(nn.Module):
    """Spatial transformer(s) in front of a CNN classifier. x (B, C, H, W) normalised -> logits (B, num_classes).

    forward_features -> concatenated branch features (B, K * cls_channels[-1]); `transform(x)` gives the crops.
    """

    num_prefix_tokens = 0

    def __init__(self, cfg: STNConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = STNConfig(**{**asdict(cfg or STNConfig()), **kwargs})
        cfg.loc_channels, cfg.cls_channels = tuple(cfg.loc_channels), tuple(cfg.cls_channels)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.stn = SpatialTransformer(cfg.in_chans, cfg.out_size, cfg.num_transformers, cfg.loc_channels,
                                      cfg.loc_hidden, learn=cfg.use_stn)
        self.branches = nn.ModuleList(
            nn.Sequential(_conv_stack(cfg.in_chans, cfg.cls_channels, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            for _ in range(cfg.num_transformers))
        self.num_features = cfg.num_transformers * cfg.cls_channels[-1]
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(crops (B, K, C, out, out), theta (B, K, 2, 3)) for `x` (B, C, H, W)."""
        return self.stn(x)

    def forward_features(self, x: Tensor) -> Tensor:
        crops, _ = self.stn(x)                                                    # (B, K, C, S, S)
        return torch.cat([branch(crops[:, i]) for i, branch in enumerate(self.branches)], dim=1)   # (B, K*F)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def stn_cnn_48(**kw: Any) -> STNClassifier:
    """ST-CNN for 48x48 inputs (distorted digits/shapes): one affine transformer -> 32x32 crop -> 3-layer CNN."""
    return STNClassifier(STNConfig(**kw))


@register_model
def stn2_cnn_48(**kw: Any) -> STNClassifier:
    """2x ST-CNN: two parallel transformers, each feeding its own CNN branch (the paper's multi-head variant)."""
    return STNClassifier(STNConfig(**{"num_transformers": 2, **kw}))
