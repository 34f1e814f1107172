"""Efficient attention: drop-in replacements for full attention in a ViT (`--attention TYPE`).

Each variant is a thin subclass of `Attention`: the same `qkv` and `proj` projections (a full-attention ViT checkpoint
loads into local/strided/axial/kv_pool models), and the softmax itself always goes through `Attention.attend`, so the
per-module `fused` switch and the `weights` probe work unchanged. What the probe sees is the softmax that was really
computed: per block for local/strided, per row and per column for axial, (N, k) for Linformer, (N, N/r^2) for kv_pool.

Costs below are for n patch tokens and d channels per layer (the projections cost O(n d^2) for every type):

    full       softmax(Q K^T) V                                      O(n^2 d)       (Vaswani et al. 2017)
    local      tokens attend within blocks of l consecutive tokens   O(n l d)       (Child et al. 2019, "fixed")
    strided    half the heads local (block l), half strided (every   O(n (l + n/l) d) = O(n sqrt(n) d) at l = sqrt(n)
               l-th token)                                                          (Child et al. 2019, "strided")
    axial      attention along rows, then along columns of the grid  O(n (H + W) d) = O(n sqrt(n) d)  (Ho et al. 2019)
    linformer  keys/values projected along the sequence: E K, F V    O(n k d)       (Wang et al. 2020)
    kv_pool    keys/values from an r x r strided-conv reduced grid   O(n^2/r^2 d)   (PVT, Wang et al. 2021)

Prefix tokens ([CLS], distillation) stay global in every sparse pattern: they attend to all tokens, and every patch
token attends to them as extra keys (BigBird's global tokens), so the head still sees the whole image in one layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from .attention import Attention, split_fused_heads, split_heads

ATTENTION_TYPES = ("full", "local", "strided", "axial", "linformer", "kv_pool")


def make_attention(kind: str, dim: int, num_heads: int, *, grid_size: tuple[int, int], num_prefix_tokens: int = 0,
                   qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, window: int = 0,
                   linformer_k: int = 64, sr_ratio: int = 2) -> Attention:
    """The attention module of type `kind` for tokens (B, num_prefix_tokens + H*W, dim) on a (H, W) patch grid.

    window: local/strided block length l (0: ceil(sqrt(H*W)), the O(n sqrt(n)) choice); linformer_k: Linformer's k;
    sr_ratio: kv_pool's reduction r.
    """
    common = {"qkv_bias": qkv_bias, "attn_drop": attn_drop, "proj_drop": proj_drop}
    n = grid_size[0] * grid_size[1]
    if kind == "full":
        return Attention(dim, num_heads, **common)
    if kind in ("local", "strided"):
        window = window or math.isqrt(n - 1) + 1
        cls = LocalAttention if kind == "local" else StridedAttention
        return cls(dim, num_heads, window=window, num_prefix_tokens=num_prefix_tokens, **common)
    if kind == "axial":
        return AxialAttention(dim, num_heads, grid_size=grid_size, num_prefix_tokens=num_prefix_tokens, **common)
    if kind == "linformer":
        return LinformerAttention(dim, num_heads, num_tokens=num_prefix_tokens + n, k=linformer_k, **common)
    if kind == "kv_pool":
        return KVPoolAttention(dim, num_heads, grid_size=grid_size, num_prefix_tokens=num_prefix_tokens,
                               sr_ratio=sr_ratio, **common)
    raise VitlabError(f"unknown attention type {kind!r} (choose from {', '.join(ATTENTION_TYPES)})")


def _merge_heads(attn: Attention, out: Tensor) -> Tensor:
    B, h, N, d = out.shape
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B, N, h * d)))   # (B, N, dim)


class _BlockSparseAttention(Attention):
    """Shared machinery of the Child et al. patterns: patch tokens are cut into groups that attend only among
    themselves (plus the global prefix tokens), computed group-wise so the n x n matrix never exists."""

    def __init__(self, dim: int, num_heads: int = 8, *, window: int, num_prefix_tokens: int = 0,
                 **kwargs: float | bool) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if window < 1:
            raise VitlabError(f"attention window must be >= 1, got {window}")
        self.window = window
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError(f"{type(self).__name__} builds its own sparsity pattern; attn_mask is not supported")
        q, k, v = split_fused_heads(self.qkv(x), self.num_heads)  # each (B, h, N, d)
        return _merge_heads(self, self._attend_pattern(q, k, v))

    def _attend_pattern(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def _grouped(self, q: Tensor, k: Tensor, v: Tensor, strided: bool) -> Tensor:
        """q/k/v (B, h, p + n, d) -> (B, h, p + n, d): prefix queries global, patch queries within their group.

        With block length L = self.window (the paper's l):
        local groups:   tokens i, j share a group iff i // L == j // L   (blocks of L consecutive tokens)
        strided groups: tokens i, j share a group iff i % L == j % L     (every L-th token)
        """
        p, L = self.num_prefix_tokens, self.window
        B, h, N, d = q.shape
        n = N - p
        out_prefix = self.attend(q[:, :, :p], k, v) if p else q[:, :, :0]       # (B, h, p, d), global
        G = -(-n // L)                                                            # blocks of L (last one padded)
        pad = G * L - n

        def groups(t: Tensor) -> Tensor:
            t = F.pad(t[:, :, p:], (0, 0, 0, pad)).view(B, h, G, L, d)         # (B, h, G, L, d): row-major blocks
            return t.transpose(2, 3) if strided else t                          # strided: (B, h, L, G, d)

        qg, kg, vg = groups(q), groups(k), groups(v)                             # (B, h, groups, size, d)
        mask = None
        if pad:                                                                  # padded key slots never attend
            valid = torch.arange(G * L, device=q.device) < n                     # (G*L,)
            valid = valid.view(G, L).t() if strided else valid.view(G, L)        # (groups, size)
            mask = valid[:, None, :]                                             # (groups, 1, size)
        if p:                                                                    # prefix keys join every group
            num_groups = qg.shape[2]
            kg = torch.cat([kg, k[:, :, None, :p].expand(B, h, num_groups, p, d)], dim=3)
            vg = torch.cat([vg, v[:, :, None, :p].expand(B, h, num_groups, p, d)], dim=3)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(num_groups, 1, p)], dim=-1)
        og = self.attend(qg, kg, vg, mask)                                       # (B, h, groups, size, d)
        og = og.transpose(2, 3) if strided else og                               # (B, h, G, L, d)
        out = og.reshape(B, h, G * L, d)[:, :, :n]                               # (B, h, n, d)
        return torch.cat([out_prefix, out], dim=2)


class LocalAttention(_BlockSparseAttention):
    """Local (block) sparse attention: patch token i attends to the patch tokens of its block {j : j // l = i // l}
    of l consecutive tokens in raster order, plus the prefix tokens. Cost O(n l d); l = sqrt(n) gives O(n sqrt(n) d),
    and on a square grid a block is then one row of patches. l >= n is full attention."""

    def _attend_pattern(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self._grouped(q, k, v, strided=False)


class StridedAttention(_BlockSparseAttention):
    """Strided sparse attention (Child et al. 2019, the two-head factorisation): the first half of the heads attend
    locally (block of l consecutive tokens), the other half attend to every l-th token {j : j % l = i % l}. Two
    layers connect any two tokens. Cost O(n (l + n/l) d), O(n sqrt(n) d) at l = sqrt(n)."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: float | bool) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if num_heads < 2:
            raise VitlabError("strided attention needs at least 2 heads (local heads + strided heads)")

    def _attend_pattern(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        h = self.num_heads // 2                                                  # heads [0, h) local, [h, H) strided
        local = self._grouped(q[:, :h], k[:, :h], v[:, :h], strided=False)
        strided = self._grouped(q[:, h:], k[:, h:], v[:, h:], strided=True)
        return torch.cat([local, strided], dim=1)                                # (B, heads, N, d)


class AxialAttention(Attention):
    """Axial attention on the (H, W) patch grid (Ho et al. 2019): each patch token attends along its row, then the
    row outputs are attended along each column with the same queries and keys, so one layer reaches the whole grid
    through two sparse softmaxes: out = A_col (A_row V). Cost O(n (H + W) d) = O(n sqrt(n) d) on a square grid.
    Prefix tokens attend to everything and are extra keys of every row."""

    def __init__(self, dim: int, num_heads: int = 8, *, grid_size: tuple[int, int], num_prefix_tokens: int = 0,
                 **kwargs: float | bool) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("AxialAttention builds its own pattern; attn_mask is not supported")
        p, (H, W) = self.num_prefix_tokens, self.grid_size
        q, k, v = split_fused_heads(self.qkv(x), self.num_heads)  # each (B, h, p + H*W, d)
        B, h, N, d = q.shape
        if N != p + H * W:
            raise ValueError(f"AxialAttention built for {p} + {H}x{W} tokens, got {N}")
        out_prefix = self.attend(q[:, :, :p], k, v) if p else q[:, :, :0]       # (B, h, p, d), global
        qg, kg, vg = (t[:, :, p:].reshape(B, h, H, W, d) for t in (q, k, v))     # (B, h, H, W, d)
        k_row, v_row = kg, vg
        if p:                                                                    # prefix keys join every row
            k_row = torch.cat([kg, k[:, :, None, :p].expand(B, h, H, p, d)], dim=3)   # (B, h, H, W + p, d)
            v_row = torch.cat([vg, v[:, :, None, :p].expand(B, h, H, p, d)], dim=3)
        rows = self.attend(qg, k_row, v_row)                                     # (B, h, H, W, d)
        cols = self.attend(qg.transpose(2, 3), kg.transpose(2, 3), rows.transpose(2, 3))  # (B, h, W, H, d)
        out = cols.transpose(2, 3).reshape(B, h, H * W, d)                       # (B, h, n, d)
        return _merge_heads(self, torch.cat([out_prefix, out], dim=2))


class LinformerAttention(Attention):
    """Linformer (Wang et al. 2020): keys and values are projected along the sequence by learned E, F in R^{k x n},
    Y = softmax(Q (E K)^T / sqrt(d)) (F V). Cost O(n k d) time, O(n k) memory: linear in n for fixed k. E and F
    are shared by the heads of a layer (the paper's headwise sharing) and tie the module to n tokens."""

    def __init__(self, dim: int, num_heads: int = 8, *, num_tokens: int, k: int = 64, **kwargs: float | bool) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if k < 1:
            raise VitlabError(f"linformer k must be >= 1, got {k}")
        self.num_tokens = num_tokens
        # std 1/sqrt(n): a projected key is a sum of n keys, so this keeps its scale at that of one key.
        self.E = nn.Parameter(torch.randn(k, num_tokens) / math.sqrt(num_tokens))   # (k, n) for keys
        self.F = nn.Parameter(torch.randn(k, num_tokens) / math.sqrt(num_tokens))   # (k, n) for values

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("LinformerAttention does not support attn_mask")
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"LinformerAttention built for {self.num_tokens} tokens, got {x.shape[1]}")
        q, k, v = split_fused_heads(self.qkv(x), self.num_heads)  # each (B, h, n, d)
        k = self.E.to(k.dtype) @ k                                               # (B, h, k, d)
        v = self.F.to(v.dtype) @ v                                               # (B, h, k, d)
        return _merge_heads(self, self.attend(q, k, v))                          # weights (B, h, n, k)


class KVPoolAttention(Attention):
    """Spatial-reduction attention (PVT, Wang et al. 2021): queries from every token, keys and values from the patch
    grid reduced r x r by a strided convolution (+ LayerNorm), plus the prefix tokens. Cost O(n (n/r^2 + p) d).
    r = 1 is full attention (no reduction module, as in PVT)."""

    def __init__(self, dim: int, num_heads: int = 8, *, grid_size: tuple[int, int], num_prefix_tokens: int = 0,
                 sr_ratio: int = 2, norm_eps: float = 1e-6, **kwargs: float | bool) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if sr_ratio < 1 or sr_ratio > min(grid_size):
            raise VitlabError(f"kv_pool sr_ratio must be in 1..{min(grid_size)} for a {grid_size[0]}x{grid_size[1]} "
                              f"grid, got {sr_ratio}")
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=norm_eps)

    def reduce(self, x: Tensor) -> Tensor:
        """Tokens the keys/values come from: (B, p + H*W, C) -> (B, p + H/r * W/r, C)."""
        if self.sr_ratio == 1:
            return x
        p, (H, W) = self.num_prefix_tokens, self.grid_size
        B, _N, C = x.shape
        grid = x[:, p:].transpose(1, 2).reshape(B, C, H, W)                     # (B, C, H, W)
        reduced = self.sr_norm(self.sr(grid).flatten(2).transpose(1, 2))        # (B, H/r * W/r, C)
        return torch.cat([x[:, :p], reduced], dim=1)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("KVPoolAttention does not support attn_mask")
        C, h = x.shape[-1], self.num_heads
        w_q, w_kv = self.qkv.weight[:C], self.qkv.weight[C:]                     # the fused projection, split
        b_q, b_kv = (self.qkv.bias[:C], self.qkv.bias[C:]) if self.qkv.bias is not None else (None, None)
        q = split_heads(F.linear(x, w_q, b_q), h)                                # (B, h, N, d)
        k, v = split_fused_heads(F.linear(self.reduce(x), w_kv, b_kv), h, parts=2)  # each (B, h, M, d)
        return _merge_heads(self, self.attend(q, k, v))                          # weights (B, h, N, M)
