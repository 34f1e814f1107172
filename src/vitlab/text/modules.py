"""Text-side building blocks shared by translation, captioning and (later) CLIP: token + position embeddings,
a text encoder (bidirectional or causal) and a text decoder (masked self-attention, cross-attention to any memory:
an encoded sentence or image tokens), both from vitlab.layers.transformer's layers.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ..layers.transformer import TransformerDecoder, TransformerEncoder


def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Vaswani et al. 2017 §3.5: PE(pos, 2i) = sin(pos / T^(2i/d)), PE(pos, 2i+1) = cos(...). -> (length, dim)."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    omega = temperature ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)       # (dim/2,)
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = (pos * omega).sin(), (pos * omega).cos()
    return pe.float()


class TokenEmbedding(nn.Module):
    """ids (B, L) -> (B, L, dim): token embedding (times sqrt(dim), §3.4, when `scale`) + position embedding
    ("sinusoidal", fixed; or "learned") + dropout."""

    def __init__(self, vocab_size: int, dim: int, max_len: int, positions: str = "sinusoidal",
                 dropout: float = 0.1, scale: bool = True) -> None:
        super().__init__()
        if positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
        self.tok = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tok.weight, std=dim ** -0.5)
        self.scale = math.sqrt(dim) if scale else 1.0
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        else:
            self.register_buffer("pos", sincos_1d(max_len, dim), persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: Tensor) -> Tensor:
        L = ids.shape[1]
        if L > self.pos.shape[0]:
            raise ValueError(f"{L} tokens exceed the {self.pos.shape[0]} positions of this embedding")
        return self.drop(self.tok(ids) * self.scale + self.pos[:L])


class TextEncoder(nn.Module):
    """Embedding + encoder layers. ids (B, L), mask (B, L) bool True = token -> (B, L, dim). `causal`: each
    token sees the ones before it only (CLIP's text tower); otherwise bidirectional with padding masked."""

    def __init__(self, embed: TokenEmbedding, depth: int, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1,
                 norm_first: bool = False, causal: bool = False, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.embed, self.causal = embed, causal
        self.encoder = TransformerEncoder(depth, dim, heads, ffn_dim, dropout, norm_first=norm_first,
                                          act_layer=act_layer)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        # causal with right padding: a real token never sees a pad key, so the kernel's is_causal is enough
        return self.encoder(self.embed(ids), key_padding_mask=None if self.causal else mask, is_causal=self.causal)


class TextDecoder(nn.Module):
    """Embedding + decoder layers + output projection. ids (B, T) (bos first), memory (B, N, memory_dim),
    memory_mask (B, N) bool True = real -> logits (B, T, vocab). Causal self-attention; right padding needs no
    mask of its own (no real position sees a later one)."""

    def __init__(self, embed: TokenEmbedding, vocab_size: int, depth: int, dim: int, heads: int, ffn_dim: int,
                 dropout: float = 0.1, norm_first: bool = False, memory_dim: int | None = None,
                 tie_output: bool = True, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.embed = embed
        self.decoder = TransformerDecoder(depth, dim, heads, ffn_dim, dropout, norm_first=norm_first,
                                          act_layer=act_layer, memory_dim=memory_dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_output:            # §3.4: the pre-softmax projection shares the embedding matrix
            self.head.weight = embed.tok.weight

    def forward(self, ids: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        x = self.decoder(self.embed(ids), memory, memory_key_padding_mask=memory_mask, is_causal=True)
        return self.head(x)                                                   # (B, T, vocab)
