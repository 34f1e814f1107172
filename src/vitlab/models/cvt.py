"""CvT (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021).

Three stages, each:
    Convolutional Token Embedding: overlapping strided conv on the previous stage's map, then LayerNorm   (§3.1)
    Convolutional Transformer Blocks, whose q/k/v come from a depthwise conv + BatchNorm on the token map,
    with stride 2 for k and v ("squeezed" projection, 4x fewer keys), then the usual linear projection  (§3.2)
No position embedding: the convolutions carry position. A [CLS] token is added in the last stage only; it is
classified after a LayerNorm.

The attention scale is dim^-1/2 (the whole stage width, not the head width), as the official code and HF
transformers do; kept for checkpoint parity.
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
from ..layers import Attention, drop_path_rates, init_transformer_, split_heads
from ..variants import register_model
from .vit import Block


@dataclass
class CvTConfig:
    img_size: int | tuple[int, int] = 224   # input side the model is meant for (any size runs)
    in_chans: int = 3
    num_classes: int = 1000                 # 0 = no head
    dims: tuple[int, ...] = (64, 192, 384)  # token width per stage
    depths: tuple[int, ...] = (1, 2, 10)    # blocks per stage (CvT-13: 1 + 2 + 10)
    num_heads: tuple[int, ...] = (1, 3, 6)
    patch_sizes: tuple[int, ...] = (7, 3, 3)    # token-embedding conv kernel per stage
    patch_strides: tuple[int, ...] = (4, 2, 2)  # ... its stride (total stride 16)
    patch_paddings: tuple[int, ...] = (2, 1, 1)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    kernel_qkv: int = 3                     # depthwise kernel of the convolutional projection
    stride_kv: int = 2                      # k/v sub-sampling (the paper's squeezed projection)
    stride_q: int = 1                       # q sub-sampling: must be 1 (see ConvAttention); HF configs carry it
    cls_token: bool = True                  # [CLS] token in the last stage (else: average of the last map)
    norm_eps: float = 1e-5
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0             # stochastic depth in the LAST stage, rising linearly (paper: 0.1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)


class ConvProjection(nn.Module):
    """Depthwise conv + BN on the token map, flattened: (B, C, h, w) -> (B, h'*w', C), h' = h / stride."""

    def __init__(self, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim,
                              bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


class ConvAttention(Attention):
    """Attention with the convolutional projection (§3.2): q, k, v each from its own depthwise conv + BN of the
    token map, then the shared `qkv` linear (split in three). x (B, [1 +] h*w, dim) -> same shape.

    The [CLS] token skips the convolutions and joins q, k and v directly. Queries keep every token (stride_q 1,
    as in the paper and the official code): the block adds the attention output to its input, token for token,
    so a strided q projection (fewer output tokens) is refused rather than silently mis-shaped.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, kernel_size: int = 3, stride_q: int = 1, stride_kv: int = 2,
                 num_prefix_tokens: int = 0) -> None:
        if stride_q != 1:
            raise VitlabError(f"CvT stride_q must be 1, got {stride_q}: the block's residual adds the attention "
                              f"output to its input token for token (pooled queries are MViT's: the mvit_* models)")
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.scale = dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.conv_proj_q = ConvProjection(dim, kernel_size, stride_q)
        self.conv_proj_k = ConvProjection(dim, kernel_size, stride_kv)
        self.conv_proj_v = ConvProjection(dim, kernel_size, stride_kv)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, N, C = x.shape                                                       # batch, tokens, channels
        prefix, x = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        feat = x.transpose(1, 2).reshape(B, C, grid[0], grid[1])                # (B, C, h, w)
        w_q, w_k, w_v = self.qkv.weight.chunk(3)
        b_q, b_k, b_v = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
        heads = []
        for conv, w, b in ((self.conv_proj_q, w_q, b_q), (self.conv_proj_k, w_k, b_k), (self.conv_proj_v, w_v, b_v)):
            t = F.linear(torch.cat([prefix, conv(feat)], dim=1), w, b)         # (B, prefix + n, C), n = h*w / s^2
            heads.append(split_heads(t, self.num_heads))                        # (B, h, prefix + n, d)
        x = self.attend(*heads)                                                 # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class ConvBlock(Block):
    """Pre-LN transformer block around ConvAttention; forward also takes the token grid (h, w)."""

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), grid))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ConvEmbed(nn.Module):
    """Convolutional token embedding (§3.1): (B, cin, H, W) -> tokens (B, h*w, dim) after LayerNorm, and (h, w)."""

    def __init__(self, cin: int, dim: int, kernel_size: int, stride: int, padding: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)                                                        # (B, dim, h, w)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid                    # (B, h*w, dim)


class CvTStage(nn.Module):
    """Token embedding + blocks. (B, cin, H, W) -> map (B, dim, h, w) and the [CLS] token (B, 1, dim) or None."""

    def __init__(self, cfg: CvTConfig, index: int, cin: int, dpr: list[float]) -> None:
        super().__init__()
        dim = cfg.dims[index]
        last = index == len(cfg.dims) - 1
        self.patch_embed = ConvEmbed(cin, dim, cfg.patch_sizes[index], cfg.patch_strides[index],
                                     cfg.patch_paddings[index], cfg.norm_eps)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if last and cfg.cls_token else None
        n_prefix = int(self.cls_token is not None)
        self.blocks = nn.ModuleList([
            ConvBlock(dim, cfg.num_heads[index], cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate,
                      dpr[j], cfg.norm_eps,
                      attn=ConvAttention(dim, cfg.num_heads[index], cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate,
                                         cfg.kernel_qkv, cfg.stride_q, cfg.stride_kv, n_prefix))
            for j in range(cfg.depths[index])])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x, grid = self.patch_embed(x)                                           # (B, h*w, dim)
        B, N, C = x.shape
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)         # (B, 1 + h*w, dim)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, grid)
        cls, x = x[:, :x.shape[1] - N], x[:, x.shape[1] - N:]
        return x.transpose(1, 2).reshape(B, C, grid[0], grid[1]), (cls if cls.shape[1] else None)


class CvT(nn.Module):
    """CvT classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> last-stage tokens after LayerNorm: (B, 1 + h*w, dim) with [CLS] first, or (B, h*w, dim);
    forward_head(tokens, pre_logits=True) -> the [CLS] token (or the token mean) (B, dim).
    """

    def __init__(self, cfg: CvTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = CvTConfig(**{**asdict(cfg or CvTConfig()), **kwargs})
        fields = ("dims", "depths", "num_heads", "patch_sizes", "patch_strides", "patch_paddings")
        if len({len(getattr(cfg, f)) for f in fields}) != 1:
            raise VitlabError("CvT stage settings differ in length: " + ", ".join(
                f"{f}={tuple(getattr(cfg, f))}" for f in fields))
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = int(cfg.cls_token)
        # The official recipe puts stochastic depth in the last stage only.
        dprs = [[0.0] * d for d in cfg.depths[:-1]] + [drop_path_rates(cfg.drop_path_rate, cfg.depths[-1])]
        cins = (cfg.in_chans,) + tuple(cfg.dims[:-1])
        self.stages = nn.ModuleList([CvTStage(cfg, i, cins[i], dprs[i]) for i in range(len(cfg.dims))])
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal(0.02) linear weights (the official init), zero biases."""
        init_transformer_(self)
        for stage in self.stages:
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {f"stages.{len(self.stages) - 1}.cls_token"}

    def forward_features(self, x: Tensor) -> Tensor:
        cls = None
        for stage in self.stages:
            x, cls = stage(x)                                                   # (B, dim, h, w), (B, 1, dim)
        x = x.flatten(2).transpose(1, 2)                                        # (B, h*w, dim)
        if cls is not None:
            x = torch.cat([cls, x], dim=1)                                      # (B, 1 + h*w, dim)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0] if self.cfg.cls_token else x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cvt(overrides: dict[str, Any], **defaults: Any) -> CvT:
    return CvT(CvTConfig(**{**defaults, **overrides}))


@register_model
def cvt_13_224(**kw: Any) -> CvT:
    """CvT-13 (Table 2 of the paper: 1 + 2 + 10 blocks, widths 64/192/384), 224x224."""
    return _cvt(kw, depths=(1, 2, 10))


@register_model
def cvt_21_224(**kw: Any) -> CvT:
    """CvT-21 (1 + 4 + 16 blocks), 224x224."""
    return _cvt(kw, depths=(1, 4, 16))


@register_model
def cvt_w24_224(**kw: Any) -> CvT:
    """CvT-W24 (wide: widths 192/768/1024, 2 + 2 + 20 blocks), 224x224."""
    return _cvt(kw, dims=(192, 768, 1024), depths=(2, 2, 20), num_heads=(3, 12, 16))


# Small-image variant: a 3x3/2 first embedding instead of 7x7/4, so 32 px gives 16, 8, 4 token grids.
@register_model
def cvt_micro_32(**kw: Any) -> CvT:
    """A small CvT for 32x32 inputs: widths 32/64/128, 1 + 1 + 2 blocks, grids 16/8/4."""
    return _cvt(kw, dims=(32, 64, 128), depths=(1, 1, 2), num_heads=(1, 2, 4), patch_sizes=(3, 3, 3),
                patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1), img_size=32)
