"""Multiscale Vision Transformer (Fan et al., "Multiscale Vision Transformers", ICCV 2021), image version.

A channel-resolution pyramid inside one transformer: early stages have many tokens and few channels, later stages
few tokens and many channels. Two pieces make it:

    pooling attention   Q = P(X W_q; Theta_q), K = P(X W_k; Theta_k), V = P(X W_v; Theta_v)
                        Z = Softmax(Q K^T / sqrt(d)) V               (sec. 3.1; P = strided pooling on the grid)
    stage transition    pooling Q with stride 2 halves the grid (the residual is max-pooled to match);
                        the block before it doubles the channels in its MLP output (and the heads double)

Keys/values are pooled at every block with a stride that starts at `kv_stride` and is divided by 2 at each stage
start ("adaptive" K/V pooling), so attention costs O(N * N / s_kv^2) instead of O(N^2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..layers import (Attention, DropPath, Mlp, drop_path_rates, init_transformer_, resample_pos_embed,
                     split_fused_heads)
from ..variants import register_model


@dataclass
class MViTConfig:
    img_size: int = 224                     # square input side in pixels
    in_chans: int = 3
    num_classes: int = 1000                 # 0 = no head
    patch_kernel: int = 7                   # overlapping conv patch embedding (kernel 7, stride 4: "cube" 1x7x7)
    patch_stride: int = 4
    embed_dim: int = 96                     # channels of stage 1, doubled at each stage start
    depth: int = 16                         # number of blocks
    num_heads: int = 1                      # heads of stage 1, doubled at each stage start
    stage_starts: tuple[int, ...] = (1, 3, 14)   # blocks that pool Q by 2 (the block before doubles channels)
    pool_kernel: int = 3                    # pooling kernel for Q (at stage starts) and K/V (every block)
    kv_stride: int = 4                      # K/V pooling stride of stage 1, halved at each stage start (min 1)
    pool_mode: str = "conv"                 # "conv" (depthwise conv + LayerNorm, the paper's default), "max", "avg"
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _pooled_size(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class PoolingAttention(Attention):
    """Multi-head pooling attention (MHPA) on a fixed token grid with `num_prefix_tokens` unpooled prefix tokens.

    x (B, p + H*W, dim) -> (B, p + H'*W', dim) with (H', W') = `out_grid`, the grid after pooling Q by `q_stride`.
    Keys/values pooled by `kv_stride`: cost O(N_q N_kv d) with N_kv = N / kv_stride^2. The prefix token is left
    out of pooling and put back in front (then normalised with the pooled tokens, as the reference code).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], *, q_stride: int = 1,
                 kv_stride: int = 1, kernel: int = 3, mode: str = "conv", num_prefix_tokens: int = 1,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_eps: float = 1e-6) -> None:
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        if mode not in ("conv", "max", "avg"):
            raise VitlabError(f"MViT pool_mode must be 'conv', 'max' or 'avg', got {mode!r}")
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.q_grid = tuple(_pooled_size(s, kernel, q_stride) for s in grid_size) if q_stride > 1 else self.grid_size
        self.kv_grid = tuple(_pooled_size(s, kernel, kv_stride) for s in grid_size)
        self.out_grid = self.q_grid
        # A 1x1 stride-1 pooling is the identity: such a tensor is not pooled at all (q between stage starts).
        self.pool_q, self.norm_q = self._pool(q_stride, kernel, mode, norm_eps) if q_stride > 1 else (None, None)
        self.pool_k, self.norm_k = self._pool(kv_stride, kernel, mode, norm_eps)
        self.pool_v, self.norm_v = self._pool(kv_stride, kernel, mode, norm_eps)

    def _pool(self, stride: int, kernel: int, mode: str, eps: float) -> tuple[nn.Module, nn.Module]:
        pad = kernel // 2
        if mode == "conv":   # depthwise over head_dim channels, shared by the heads
            pool = nn.Conv2d(self.head_dim, self.head_dim, kernel, stride, pad, groups=self.head_dim, bias=False)
            return pool, nn.LayerNorm(self.head_dim, eps=eps)
        pool = nn.MaxPool2d(kernel, stride, pad) if mode == "max" else nn.AvgPool2d(kernel, stride, pad)
        return pool, nn.Identity()

    def pool(self, t: Tensor, pool: nn.Module | None, norm: nn.Module | None) -> Tensor:
        """(B, h, p + H*W, d) -> (B, h, p + H'*W', d)."""
        if pool is None:
            return t
        p, (H, W) = self.num_prefix_tokens, self.grid_size
        B, h, _, d = t.shape
        grid = t[:, :, p:].reshape(B * h, H, W, d).permute(0, 3, 1, 2)            # (B*h, d, H, W)
        pooled = pool(grid).flatten(2).transpose(1, 2).reshape(B, h, -1, d)       # (B, h, H'*W', d)
        return norm(torch.cat([t[:, :, :p], pooled], dim=2))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("PoolingAttention does not support attn_mask")
        B, N, C = x.shape                                                         # batch, p + H*W, channels
        q, k, v = split_fused_heads(self.qkv(x), self.num_heads)                  # each (B, h, N, d)
        q = self.pool(q, self.pool_q, self.norm_q)                                # (B, h, Nq, d)
        k = self.pool(k, self.pool_k, self.norm_k)                                # (B, h, Nkv, d)
        v = self.pool(v, self.pool_v, self.norm_v)
        out = self.attend(q, k, v)                                                # (B, h, Nq, d)
        out = out.transpose(1, 2).reshape(B, q.shape[2], C)                       # (B, Nq, C)
        return self.proj_drop(self.proj(out))


class MultiScaleBlock(nn.Module):
    """x (B, p + H*W, dim) -> (B, p + H'*W', dim_out): pooling attention, then an MLP whose output (and the
    residual, through a Linear) may widen the channels to dim_out."""

    def __init__(self, dim: int, dim_out: int, attn: PoolingAttention, mlp_ratio: float, drop: float,
                 drop_path: float, norm_eps: float, q_stride: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path)
        # The residual must follow the pooled queries: max-pool it the same way (kernel s+1, as the reference code).
        k = q_stride + 1
        self.pool_skip = nn.MaxPool2d(k, q_stride, k // 2) if q_stride > 1 else None
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), out_dim=dim_out, drop=drop)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.drop_path2 = DropPath(drop_path)

    def skip(self, x: Tensor) -> Tensor:
        if self.pool_skip is None:
            return x
        p, (H, W) = self.attn.num_prefix_tokens, self.attn.grid_size
        B, _, C = x.shape
        grid = x[:, p:].transpose(1, 2).reshape(B, C, H, W)                       # (B, C, H, W)
        return torch.cat([x[:, :p], self.pool_skip(grid).flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.skip(x) + self.drop_path1(self.attn(self.norm1(x)))
        x_norm = self.norm2(x)
        shortcut = self.proj(x_norm) if self.proj is not None else x
        return shortcut + self.drop_path2(self.mlp(x_norm))


class MViT(nn.Module):
    """MViT classifier. x (B, 3, S, S) normalised -> logits (B, num_classes).

    forward_features -> tokens (B, 1 + H_last*W_last, C_last) after the final LayerNorm; the head reads [CLS].
    """

    num_prefix_tokens = 1

    def __init__(self, cfg: MViTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = MViTConfig(**{**asdict(cfg or MViTConfig()), **kwargs})
        cfg.stage_starts = tuple(cfg.stage_starts)
        if any(not 0 < s < cfg.depth for s in cfg.stage_starts):
            raise VitlabError(f"MViT stage_starts {cfg.stage_starts} must lie in 1..{cfg.depth - 1}")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_kernel, cfg.patch_stride,
                                     cfg.patch_kernel // 2)
        side = _pooled_size(cfg.img_size, cfg.patch_kernel, cfg.patch_stride)
        self.grid_size = (side, side)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + side * side, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        blocks, grid, dim, heads, kv_stride = [], self.grid_size, cfg.embed_dim, cfg.num_heads, cfg.kv_stride
        for i, dpr in enumerate(drop_path_rates(cfg.drop_path_rate, cfg.depth)):
            q_stride = 2 if i in cfg.stage_starts else 1
            if q_stride > 1:
                heads, kv_stride = heads * 2, max(kv_stride // 2, 1)
            dim_out = dim * 2 if i + 1 in cfg.stage_starts else dim
            attn = PoolingAttention(dim, heads, grid, q_stride=q_stride, kv_stride=kv_stride, kernel=cfg.pool_kernel,
                                    mode=cfg.pool_mode, qkv_bias=cfg.qkv_bias, attn_drop=cfg.attn_drop_rate,
                                    proj_drop=cfg.drop_rate, norm_eps=cfg.norm_eps)
            blocks.append(MultiScaleBlock(dim, dim_out, attn, cfg.mlp_ratio, cfg.drop_rate, dpr, cfg.norm_eps,
                                          q_stride))
            grid, dim = attn.out_grid, dim_out
        self.blocks = nn.Sequential(*blocks)
        self.feature_grid = grid
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_transformer_(self)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "bicubic",
                         antialias: bool = False) -> dict[str, Tensor]:
        """A checkpoint of another input size: resample its position embedding to our grid."""
        pe = state_dict.get("pos_embed")
        if pe is not None and pe.shape != self.pos_embed.shape:
            state_dict = dict(state_dict)
            state_dict["pos_embed"] = resample_pos_embed(pe, self.grid_size, None, 1, mode=mode, antialias=antialias)
        return state_dict

    def forward_features(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise VitlabError(f"input is {x.shape[-2]}x{x.shape[-1]} but the model was built for "
                              f"{self.cfg.img_size}x{self.cfg.img_size}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)                        # (B, H*W, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)      # (B, 1 + H*W, C)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        return self.norm(self.blocks(x))                                          # (B, 1 + H'*W', C_last)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ---------------------------------------------------------------------------------------------------------
def _mvit(overrides: dict[str, Any], **defaults: Any) -> MViT:
    return MViT(MViTConfig(**{**defaults, **overrides}))


@register_model
def mvit_base_16_224(**kw: Any) -> MViT:
    """MViT-B-16 (paper's ImageNet model: 16 blocks, stages start at blocks 1, 3, 14; published 37M, 7.8 GFLOPs)."""
    return _mvit(kw, embed_dim=96, depth=16, num_heads=1, stage_starts=(1, 3, 14), drop_path_rate=0.2)


@register_model
def mvit_tiny_224(**kw: Any) -> MViT:
    """A tiny MViT: 10 blocks in stages of 1-2-5-2 (the MViTv2-T layout) with the paper's v1 blocks."""
    return _mvit(kw, embed_dim=96, depth=10, num_heads=1, stage_starts=(1, 3, 8), drop_path_rate=0.1)


@register_model
def mvit_micro_32(**kw: Any) -> MViT:
    """Small-image MViT for 32x32 inputs: 3x3 stride-2 patches -> 16x16, 8x8, 4x4 grids over 6 blocks."""
    return _mvit(kw, img_size=32, patch_kernel=3, patch_stride=2, embed_dim=64, depth=6, num_heads=2,
                 stage_starts=(2, 4), kv_stride=2, drop_path_rate=0.05, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
