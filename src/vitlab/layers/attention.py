"""The one multi-head attention of vitlab.

Two numerically equal paths live in the same module, chosen per module by its `fused` attribute (no global flag):
- fused (training/inference): torch.nn.functional.scaled_dot_product_attention (on bf16 CPU tensors, the GEMM
  kernel of vitlab.layers.cpu_kernels);
- explicit (analysis): softmax(Q K^T / sqrt(d) + bias) V, whose weights pass through `self.weights`, an identity
  module, so a forward hook on it sees them (this is how vitlab.explain records attention).
Every attention variant (windowed, axial, low-rank, pooled, ...) subclasses Attention and reuses `attend`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels
from .cpu_kernels import masked_softmax
from .linear import Linear


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                       scale: float | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v, returning (out, weights).

    q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv) -> out (..., Nq, dv), weights (..., Nq, Nk).
    attn_mask follows scaled_dot_product_attention: bool (True = may attend) or an additive float bias.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)                      # (..., Nq, Nk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def split_heads(t: Tensor, num_heads: int) -> Tensor:
    """One projection's output (B, N, heads * head_dim) -> (B, heads, N, head_dim)."""
    B, N, _ = t.shape                                                          # batch, tokens, channels
    return t.reshape(B, N, num_heads, -1).transpose(1, 2)                      # (B, heads, N, head_dim)


def split_fused_heads(t: Tensor, num_heads: int, parts: int = 3) -> tuple[Tensor, ...]:
    """A fused projection's output (B, N, parts * heads * head_dim), its rows in q, k, v order (k, v for
    parts=2, as fuse_qkv in vitlab.convert writes them) -> `parts` tensors, each (B, heads, N, head_dim)."""
    B, N, _ = t.shape                                                          # batch, tokens, channels
    t = t.reshape(B, N, parts, num_heads, -1)                                  # (B, N, parts, heads, head_dim)
    return t.permute(2, 0, 3, 1, 4).unbind(0)                                  # each (B, heads, N, head_dim)


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) with a fused q/k/v projection.

    x (B, N, dim) -> (B, N, dim). `attn_mask` (broadcastable to (B, heads, N, N)): bool (True = attend) or
    additive float bias (e.g. Swin's relative position bias plus shift mask).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused = fused                     # False: explicit path, weights visible to hooks on self.weights
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.weights = nn.Identity()           # probe: receives softmax weights (B, heads, Nq, Nk) on the explicit path
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, N, C = x.shape                                                          # batch, tokens, channels
        q, k, v = split_fused_heads(self.qkv(x), self.num_heads)                   # each (B, heads, N, head_dim)
        x = self.attend(q, k, v, attn_mask)                                        # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(B, N, C)                                     # (B, N, heads * head_dim)
        return self.proj_drop(self.proj(x))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
               is_causal: bool = False) -> Tensor:
        """The attention core on split heads: q (B, h, Nq, d), k/v (B, h, Nk, d) -> (B, h, Nq, d).
        is_causal: query i sees keys 0..i only (a decoder; Nq == Nk); the fused path passes it to the kernel when
        there is no other mask, the other paths apply it as a lower-triangular bool mask."""
        if is_causal and (attn_mask is not None or not self.fused or cpu_kernels.bf16_on_cpu(q)):
            attn_mask = merge_masks(causal_mask(q.shape[-2], k.shape[-2], q.device), None) if attn_mask is None \
                else _and_mask(attn_mask, causal_mask(q.shape[-2], k.shape[-2], q.device))
            is_causal = False
        if self.fused:
            out = cpu_kernels.gemm_attention(q, k, v, self.scale, attn_mask, self.attn_drop)   # bf16 on a CPU
            if out is not None:
                return out
            p = self.attn_drop.p if self.training else 0.0
            if attn_mask is not None and attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(q.dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale,
                                                  is_causal=is_causal)
        scores = (q * self.scale) @ k.transpose(-2, -1)                            # (B, h, Nq, Nk)
        weights = self.weights(masked_softmax(scores, attn_mask))   # the probe: recording sees these
        return self.attn_drop(weights) @ v


# --- separate query and key/value inputs (encoder-decoder attention; DETR's position offsets) --------------------
class CrossAttention(Attention):
    """Multi-head attention whose queries come from `x` and keys/values from `context` (Vaswani et al. 2017's
    encoder-decoder attention; DETR's decoder attending to the encoder memory).

    x (B, Nq, dim), context (B, Nk, context_dim) -> (B, Nq, dim). DETR adds positions at every layer, to queries
    and keys but not to values: q = W_q (x + q_pos), k = W_k (context + k_pos), v = W_v context.
    `attn_mask` broadcastable to (B, heads, Nq, Nk): bool (True = attend) or an additive float bias;
    `key_padding_mask` (B, Nk) bool: True = a real key, False = padding (a row with no real key gives NaN).
    Projections `q` (dim -> dim) and `kv` (context_dim -> 2 dim) replace Attention's fused `qkv`; `fused`,
    `attend` and the `weights` probe, (B, heads, Nq, Nk), are Attention's.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused: bool = True, context_dim: int | None = None) -> None:
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, fused)
        del self.qkv
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(context_dim or dim, 2 * dim, bias=qkv_bias)

    def forward(self, x: Tensor, context: Tensor, attn_mask: Tensor | None = None, *,
                key_padding_mask: Tensor | None = None, q_pos: Tensor | None = None,
                k_pos: Tensor | None = None) -> Tensor:
        B, Nq, C = x.shape                                                         # batch, queries, channels
        h = self.num_heads
        q = split_heads(self.q(x if q_pos is None else x + q_pos), h)              # (B, h, Nq, d)
        kv = self.kv(context)                                                      # (B, Nk, 2C): k and v, one GEMM
        k, v = kv[..., :C], kv[..., C:]
        if k_pos is not None:
            # W_k (context + k_pos) = W_k context + W_k k_pos: the position product is computed once per position
            # when the batch shares it (k_pos (1, Nk, C_context)), instead of once per image
            k = k + F.linear(k_pos, self.kv.weight[:C])
        k, v = split_heads(k, h), split_heads(v, h)                                # each (B, h, Nk, d)
        x = self.attend(q, k, v, merge_masks(attn_mask, key_padding_mask))         # (B, h, Nq, d)
        x = x.transpose(1, 2).reshape(B, Nq, C)                                    # (B, Nq, heads * head_dim)
        return self.proj_drop(self.proj(x))


class PositionalAttention(Attention):
    """Self-attention with a position added to queries and keys but not values (DETR's encoder and decoder
    self-attention): q, k = W_{q,k} (x + pos), v = W_v x. x (B, N, dim), pos (1 or B, N, dim) -> (B, N, dim).

    Attention's fused `qkv` projection runs once on x; the position's share W_{q,k} pos is added to q and k (one
    small GEMM on (1, N, dim) when the batch shares the positions). Masks as CrossAttention's.
    """

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, *, pos: Tensor | None = None,
                key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, C = x.shape                                                          # batch, tokens, channels
        h = self.num_heads
        qkv = self.qkv(x)                                                          # (B, N, 3C)
        qk, v = qkv[..., :2 * C], qkv[..., 2 * C:]
        if pos is not None:
            qk = qk + F.linear(pos, self.qkv.weight[:2 * C])                       # (B, N, 2C)
        q, k = split_fused_heads(qk, h, parts=2)                                   # each (B, h, N, d)
        v = split_heads(v, h)                                                      # (B, h, N, d)
        x = self.attend(q, k, v, merge_masks(attn_mask, key_padding_mask), is_causal)  # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, C)                                     # (B, N, heads * head_dim)
        return self.proj_drop(self.proj(x))


def merge_masks(attn_mask: Tensor | None, key_padding_mask: Tensor | None) -> Tensor | None:
    """One mask for `attend`: attn_mask (broadcastable to (B, h, Nq, Nk), bool or additive float) combined with
    key_padding_mask (B, Nk) bool, True = attend. Returns None, a bool mask or a float bias."""
    if key_padding_mask is None:
        return attn_mask
    if key_padding_mask.dtype != torch.bool:
        raise ValueError(f"key_padding_mask must be bool (True = attend), got {key_padding_mask.dtype}")
    keys = key_padding_mask[:, None, None, :]                                      # (B, 1, 1, Nk)
    if attn_mask is None:
        return keys
    if attn_mask.dtype == torch.bool:
        return attn_mask & keys
    return attn_mask.masked_fill(~keys, float("-inf"))


def causal_mask(num_queries: int, num_keys: int, device: torch.device | None = None) -> Tensor:
    """(Nq, Nk) bool, True = attend: query i sees keys 0..i (the lower triangle, top-left aligned as the fused
    kernel's is_causal)."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril()


def _and_mask(attn_mask: Tensor, allowed: Tensor) -> Tensor:
    """attn_mask (bool or additive float) restricted to where `allowed` (bool) is True."""
    if attn_mask.dtype == torch.bool:
        return attn_mask & allowed
    return attn_mask.masked_fill(~allowed, float("-inf"))
