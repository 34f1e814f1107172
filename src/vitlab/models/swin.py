"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021).

    patch partition (4x4) + linear embedding                 -> (H/4 x W/4) tokens of C channels
    stage 1..4: [patch merging 2x2 -> 2C] + blocks           -> H/8 .. H/32, channels C .. 8C
    block pair:  z' = W-MSA(LN(z)) + z,   z = MLP(LN(z')) + z'           (eq. 3, regular windows)
                 z' = SW-MSA(LN(z)) + z,  z = MLP(LN(z')) + z'           (windows shifted by M/2)
    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V, B from a ((2M-1)^2, heads) table  (eq. 4)

Shifted windows use the paper's cyclic shift: roll the map by -M/2, attend in regular windows with a mask that keeps
tokens from different source regions apart (-inf, so their weights are exactly 0), roll back. Costs: a window block
is O(n M^2 C) against O(n^2 C) for global attention.

Layout: timm's (each stage starts with its patch merging); `vitlab.convert` maps the original/HF layout, where the
merging ends stage i, onto it. The block is ViT's Block with the windowed attention swapped in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..layers import Attention, PatchEmbed, drop_path_rates, init_transformer_, split_fused_heads
from ..variants import register_model
from .vit import Block


@dataclass
class SwinConfig:
    img_size: int | tuple[int, int] = 224   # input side in pixels (or (height, width))
    patch_size: int = 4                     # patch partition: pixels per side of a patch
    in_chans: int = 3
    num_classes: int = 1000                 # 0 = no head
    embed_dim: int = 96                     # C, channels of stage 1 (doubled by each patch merging)
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage (even: W-MSA / SW-MSA pairs)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)   # heads per stage (head width 32 in the paper)
    window_size: int = 7                    # M: tokens per window side (clamped to a smaller stage grid)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5                  # LayerNorm epsilon (PyTorch default, as the reference code)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1             # stochastic depth over all blocks (paper: 0.2 T, 0.3 S, 0.5 B)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# --- windows ---------------------------------------------------------------------------------------------------------
def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/M * W/M, M * M, C): windows in row-major order, tokens row-major inside."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)                  # (B, H/M, M, W/M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """Inverse of window_partition: (B * H/M * W/M, M * M, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)          # (B, H/M, W/M, M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window: int) -> Tensor:
    """(M*M, M*M) index into the ((2M-1)^2, heads) table: row-major (dy + M - 1) * (2M - 1) + (dx + M - 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)                # (2, M*M, M*M), each in 0..2M-2
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(grid: tuple[int, int], window: int, shift: int) -> Tensor:
    """Additive mask (windows, M*M, M*M) for attention in the cyclically shifted map: 0 between tokens of the same
    source region, -inf across regions (tokens rolled in from the opposite border are not neighbours)."""
    H, W = grid
    region_y = (torch.arange(H) >= H - window).long() + (torch.arange(H) >= H - shift).long()   # 0, 1, 2 per row
    region_x = (torch.arange(W) >= W - window).long() + (torch.arange(W) >= W - shift).long()
    region = (region_y[:, None] * 3 + region_x[None, :]).view(1, H, W, 1).float()               # (1, H, W, 1)
    ids = window_partition(region, window).squeeze(-1)                                            # (windows, M*M)
    same = ids[:, :, None] == ids[:, None, :]                                                     # (windows, M*M, M*M)
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


class WindowAttention(Attention):
    """(S)W-MSA on a fixed (H, W) token grid. x (B, H*W, dim) row-major -> (B, H*W, dim).

    Tokens are cut into M x M windows (after a cyclic shift by `shift` when shift > 0) and attend within their window,
    with a learned relative position bias (eq. 4). Cost O(H W M^2 dim). The `weights` probe sees per-window weights
    (B * windows, heads, M*M, M*M).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], window_size: int, shift_size: int = 0,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        H, W = grid_size
        if min(H, W) <= window_size:   # the window covers the map: one window, nothing to shift (as the paper's code)
            window_size, shift_size = min(H, W), 0
        if H % window_size or W % window_size:
            raise VitlabError(f"Swin stage grid {H}x{W} is not divisible by the window size {window_size}")
        self.grid_size = (H, W)
        self.window_size = window_size
        self.shift_size = shift_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        mask = shifted_window_mask((H, W), window_size, shift_size) if shift_size else None
        self.register_buffer("shift_mask", mask, persistent=False)

    def position_bias(self) -> Tensor:
        """(heads, M*M, M*M) relative position bias B."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]   # (M^4, heads)
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("WindowAttention builds its own mask")
        (H, W), M, s = self.grid_size, self.window_size, self.shift_size
        B, N, C = x.shape                                                        # batch, H*W tokens, channels
        if N != H * W:
            raise ValueError(f"WindowAttention built for a {H}x{W} grid, got {N} tokens")
        x = x.view(B, H, W, C)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))                       # cyclic shift towards top-left
        windows = window_partition(x, M)                                          # (B*nW, M*M, C)
        Bw, n, _ = windows.shape
        q, k, v = split_fused_heads(self.qkv(windows), self.num_heads)            # each (B*nW, heads, M*M, d)
        mask = self.position_bias().unsqueeze(0)                                  # (1, heads, M*M, M*M)
        if self.shift_mask is not None:
            mask = (mask.unsqueeze(0) + self.shift_mask[None, :, None])           # (1, nW, heads, M*M, M*M)
            mask = mask.expand(B, -1, -1, -1, -1).reshape(Bw, self.num_heads, n, n)
        out = self.attend(q, k, v, mask.to(q.dtype))                              # (B*nW, heads, M*M, d)
        out = self.proj(out.transpose(1, 2).reshape(Bw, n, C))                    # (B*nW, M*M, C)
        x = window_reverse(out, M, H, W)                                          # (B, H, W, C)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))                         # undo the shift
        return self.proj_drop(x.reshape(B, N, C))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (4C) and project to 2C: (B, H*W, C) -> (B, H/2 * W/2, 2C).

    Concatenation order as the reference code: (even row, even col), (odd, even), (even, odd), (odd, odd).
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], norm_eps: float = 1e-5) -> None:
        super().__init__()
        H, W = grid_size
        if H % 2 or W % 2:
            raise VitlabError(f"Swin patch merging needs an even grid, got {H}x{W}")
        self.grid_size = (H, W)
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        (H, W), (B, _, C) = self.grid_size, x.shape
        x = x.view(B, H // 2, 2, W // 2, 2, C)                                   # (B, H/2, row, W/2, col, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2 * (W // 2), 4 * C)    # 4C ordered (col, row)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """[PatchMerging] + `depth` blocks alternating W-MSA and SW-MSA: (B, N_in, C_in) -> (B, N, dim)."""

    def __init__(self, dim: int, depth: int, num_heads: int, grid_size: tuple[int, int], cfg: SwinConfig,
                 drop_path: list[float], downsample: bool) -> None:
        super().__init__()
        if downsample:
            self.downsample = PatchMerging(dim // 2, (grid_size[0] * 2, grid_size[1] * 2), cfg.norm_eps)
        else:
            self.downsample = nn.Identity()
        self.grid_size = grid_size
        blocks = []
        for i in range(depth):
            attn = WindowAttention(dim, num_heads, grid_size, cfg.window_size, 0 if i % 2 == 0 else
                                   cfg.window_size // 2, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
            blocks.append(Block(dim, num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate,
                                drop_path[i], cfg.norm_eps, attn=attn))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class SwinTransformer(nn.Module):
    """Swin classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> tokens (B, H/(p 2^(S-1)) * W/(p 2^(S-1)), C 2^(S-1)) after the final LayerNorm;
    forward_head averages them (the paper's global average pooling).
    """

    num_prefix_tokens = 0

    def __init__(self, cfg: SwinConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = SwinConfig(**{**asdict(cfg or SwinConfig()), **kwargs})
        cfg.depths, cfg.num_heads = tuple(cfg.depths), tuple(cfg.num_heads)
        if len(cfg.depths) != len(cfg.num_heads):
            raise VitlabError(f"Swin depths {cfg.depths} and num_heads {cfg.num_heads} differ in length")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.patch_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        H, W = self.patch_embed.grid_size
        stages = []
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            if i:
                if H % 2 or W % 2:
                    raise VitlabError(f"Swin: stage {i + 1} needs an even grid to merge patches, got {H}x{W} "
                                      f"(use an input side divisible by {cfg.patch_size * 2 ** (len(cfg.depths) - 1)})")
                H, W = H // 2, W // 2
            first = sum(cfg.depths[:i])
            stages.append(SwinStage(cfg.embed_dim * 2 ** i, depth, heads, (H, W), cfg, dpr[first:first + depth],
                                    downsample=i > 0))
        self.layers = nn.Sequential(*stages)
        self.num_features = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        init_transformer_(self)

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(H, W) of the tokens forward_features returns."""
        return self.layers[-1].grid_size

    def no_weight_decay(self) -> set[str]:
        """Relative position tables are excluded from weight decay (as the reference training recipe)."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "bicubic",
                         antialias: bool = False) -> dict[str, Tensor]:
        """Make a checkpoint trained with another window size fit: resample each relative position table
        ((2M'-1)^2, heads) -> ((2M-1)^2, heads) as a 2-D map; drop the index/mask buffers older formats store."""
        own = dict(self.named_parameters())
        out = {}
        for key, value in state_dict.items():
            if key.endswith(("relative_position_index", "attn_mask")):
                continue
            if key.endswith("relative_position_bias_table") and key in own and value.shape != own[key].shape:
                value = resize_relative_position_table(value, own[key].shape[0], mode=mode, antialias=antialias)
            out[key] = value
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_norm(self.patch_embed(x)))                # (B, H/p * W/p, C)
        return self.norm(self.layers(x))                                        # (B, N_last, C_last)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=1))                                       # (B, C_last)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))



def resize_relative_position_table(table: Tensor, new_len: int, mode: str = "bicubic",
                                   antialias: bool = False) -> Tensor:
    """((2M'-1)^2, heads) -> (new_len = (2M-1)^2, heads), interpolating the (2M'-1) x (2M'-1) offset map per head."""
    old, new = round(table.shape[0] ** 0.5), round(new_len ** 0.5)
    if old * old != table.shape[0] or new * new != new_len:
        raise VitlabError(f"relative position table of {table.shape[0]} rows is not a square map")
    grid = table.t().reshape(1, -1, old, old).float()                            # (1, heads, 2M'-1, 2M'-1)
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    grid = F.interpolate(grid, size=(new, new), mode=mode, **kwargs)
    return grid.reshape(-1, new * new).t().to(table.dtype).contiguous()         # (new_len, heads)


# --- variants ---------------------------------------------------------------------------------------------------------
def _swin(overrides: dict[str, Any], **defaults: Any) -> SwinTransformer:
    return SwinTransformer(SwinConfig(**{**defaults, **overrides}))


@register_model
def swin_tiny_patch4_window7_224(**kw: Any) -> SwinTransformer:
    """Swin-T (C=96, depths 2-2-6-2): 28.3M parameters, 4.5 GFLOPs at 224."""
    return _swin(kw, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)


@register_model
def swin_small_patch4_window7_224(**kw: Any) -> SwinTransformer:
    """Swin-S (C=96, depths 2-2-18-2): 49.6M parameters, 8.7 GFLOPs at 224."""
    return _swin(kw, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)


@register_model
def swin_base_patch4_window7_224(**kw: Any) -> SwinTransformer:
    """Swin-B (C=128, depths 2-2-18-2): 87.8M parameters, 15.4 GFLOPs at 224."""
    return _swin(kw, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)


@register_model
def swin_micro_patch2_window4_32(**kw: Any) -> SwinTransformer:
    """Small-image Swin for 32x32 inputs (CIFAR, digits, shapes): 2x2 patches -> 16x16, 8x8, 4x4 grids, 4x4 windows."""
    return _swin(kw, img_size=32, patch_size=2, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
