"""The encoder and decoder layers of the encoder-decoder transformer (Vaswani et al. 2017), as DETR uses them.

    encoder layer:  x = x + SelfAttn(x, pos);  x = x + FFN(x)                       (each followed by LayerNorm)
    decoder layer:  t = t + SelfAttn(t, query_pos);  t = t + CrossAttn(t, memory, query_pos, memory_pos);
                    t = t + FFN(t)

Post-norm (the LayerNorm after each residual sum: Vaswani, DETR) or pre-norm (`norm_first`: before each
sub-layer, as ViT; the encoder then ends in a LayerNorm of its own). Positions are added to queries and keys at
every attention layer, not to values (DETR §3.2 and its supplement, A.3): `pos` for the encoder's tokens,
`query_pos` for the decoder's queries, `memory_pos` for the keys of the cross-attention. Without positions the
layers are the plain transformer's, so a translation or captioning model builds on the same ones (with a causal
`self_attn_mask` for its decoder and key-padding masks for its sentences).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .attention import CrossAttention, PositionalAttention
from .mlp import Mlp


class TransformerEncoderLayer(nn.Module):
    """Self-attention and FFN, each with a residual. x (B, N, dim), pos (1 or B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attn_drop: float = 0.0,
                 norm_first: bool = False, norm_eps: float = 1e-5, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = PositionalAttention(dim, num_heads, attn_drop=attn_drop)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, ffn_dim, act_layer=act_layer, drop=dropout)   # dropout after the act and after fc2
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        def attn(t: Tensor) -> Tensor:
            return self.drop1(self.self_attn(t, attn_mask, pos=pos, key_padding_mask=key_padding_mask,
                                             is_causal=is_causal))

        if self.norm_first:
            x = x + attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + attn(x))
        return self.norm2(x + self.mlp(x))


class TransformerDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the memory, FFN; each with a residual.

    x (B, Nq, dim), memory (B, Nk, memory_dim) -> (B, Nq, dim). query_pos (1 or B, Nq, dim) goes to the queries
    (and the self-attention keys), memory_pos (1 or B, Nk, memory_dim) to the cross-attention keys.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attn_drop: float = 0.0,
                 norm_first: bool = False, norm_eps: float = 1e-5, act_layer: type[nn.Module] = nn.ReLU,
                 memory_dim: int | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = PositionalAttention(dim, num_heads, attn_drop=attn_drop)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads, attn_drop=attn_drop, context_dim=memory_dim)
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, ffn_dim, act_layer=act_layer, drop=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor, memory: Tensor, *, query_pos: Tensor | None = None,
                memory_pos: Tensor | None = None, self_attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        """is_causal: each query sees itself and the queries before it (a text decoder's masked self-attention)."""
        def self_attn(t: Tensor) -> Tensor:
            return self.drop1(self.self_attn(t, self_attn_mask, pos=query_pos, key_padding_mask=key_padding_mask,
                                             is_causal=is_causal))

        def cross_attn(t: Tensor) -> Tensor:
            return self.drop2(self.cross_attn(t, memory, key_padding_mask=memory_key_padding_mask, q_pos=query_pos,
                                              k_pos=memory_pos))

        if self.norm_first:
            x = x + self_attn(self.norm1(x))
            x = x + cross_attn(self.norm2(x))
            return x + self.mlp(self.norm3(x))
        x = self.norm1(x + self_attn(x))
        x = self.norm2(x + cross_attn(x))
        return self.norm3(x + self.mlp(x))


class TransformerEncoder(nn.Module):
    """`depth` encoder layers; pre-norm stacks end in a LayerNorm (post-norm ones are normalised already)."""

    def __init__(self, depth: int, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1,
                 attn_drop: float = 0.0, norm_first: bool = False, norm_eps: float = 1e-5,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(dim, num_heads, ffn_dim, dropout, attn_drop, norm_first,
                                                            norm_eps, act_layer) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm_first else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """x (B, N, dim) -> memory (B, N, dim)."""
        for layer in self.layers:
            x = layer(x, pos, attn_mask, key_padding_mask, is_causal)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """`depth` decoder layers and a final LayerNorm (DETR keeps it in post-norm too)."""

    def __init__(self, depth: int, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1,
                 attn_drop: float = 0.0, norm_first: bool = False, norm_eps: float = 1e-5,
                 act_layer: type[nn.Module] = nn.ReLU, memory_dim: int | None = None,
                 norm_between: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerDecoderLayer(dim, num_heads, ffn_dim, dropout, attn_drop, norm_first,
                                                            norm_eps, act_layer, memory_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        # transformers' DETR with auxiliary_loss=True passes each layer's normalised output on to the next layer
        # (and normalises the last one twice); detr passes the raw output on. True reproduces transformers'.
        self.norm_between = norm_between

    def forward(self, x: Tensor, memory: Tensor, *, query_pos: Tensor | None = None,
                memory_pos: Tensor | None = None, self_attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
                return_intermediate: bool = False, is_causal: bool = False) -> Tensor:
        """x (B, Nq, dim), memory (B, Nk, memory_dim) -> (B, Nq, dim) after the final norm; with
        return_intermediate every layer's output through that norm, stacked: (depth, B, Nq, dim) (DETR's
        auxiliary outputs; the last entry is the plain result)."""
        outputs = []
        for layer in self.layers:
            x = layer(x, memory, query_pos=query_pos, memory_pos=memory_pos, self_attn_mask=self_attn_mask,
                      key_padding_mask=key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                      is_causal=is_causal)
            if self.norm_between:
                x = self.norm(x)
            if return_intermediate:
                outputs.append(x if self.norm_between else self.norm(x))
        if self.norm_between:
            x = self.norm(x)                                   # the last output, normalised a second time
            if return_intermediate:
                outputs[-1] = x
        elif not return_intermediate:
            x = self.norm(x)
        return torch.stack(outputs) if return_intermediate else x
