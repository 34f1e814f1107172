"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

The residual connection carries a token's own value past each attention layer, so each layer's mixing matrix is
modelled as A' = normalize(fuse_heads(A) + I), rows summing to 1; the flow from the input tokens to the last
layer's tokens is the product A'_L ... A'_1. The [CLS] row of that product, over the patch columns, is the
heat map of what the classifier token has gathered.

The row normalisation divides each row by its own sum: `a / a.sum(-1, keepdim=True)`. Without keepdim the sums
(B, N) broadcast against the last axis and divide column j by the sum of row j, a known bug of the best-known
snippet; the rows then no longer sum to 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import VitlabError

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: Tensor, head_fusion: str = "mean") -> Tensor:
    """(B, heads, N, N) -> (B, N, N) by mean, max or min over heads."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise VitlabError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")


def discard_lowest(a: Tensor, ratio: float) -> Tensor:
    """Zero the lowest `ratio` fraction of each matrix's entries: (B, N, N) -> (B, N, N).

    Gildenblat's popular variant of rollout (not in the paper) sharpens the map this way; the identity added
    afterwards keeps every row non-zero.
    """
    if not 0.0 <= ratio < 1.0:
        raise VitlabError(f"discard ratio must be in [0, 1), got {ratio}")
    k = int(a[0].numel() * ratio)
    if k == 0:
        return a
    flat = a.flatten(1)                                                  # (B, N*N)
    lowest = flat.topk(k, dim=1, largest=False).indices
    return flat.scatter(1, lowest, 0.0).view_as(a)


def rollout_step(a: Tensor) -> Tensor:
    """One layer's mixing matrix: (B, N, N) fused attention -> A + I with rows normalised to sum 1."""
    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return a / a.sum(dim=-1, keepdim=True)


def attention_rollout(attentions: Sequence[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Rollout over layers. attentions: per layer (B, heads, N, N), first layer first -> (B, N, N) with
    rows summing to 1; entry (i, j) is how much of input token j flows into output token i."""
    if not attentions:
        raise VitlabError("attention rollout needs at least one attention map")
    shape = attentions[0].shape
    if any(a.shape != shape for a in attentions) or len(shape) != 4 or shape[-1] != shape[-2]:
        raise VitlabError("attention rollout needs one global (B, heads, N, N) map per layer with the same N "
                          f"(got {sorted({tuple(a.shape) for a in attentions})}); windowed models have none")
    rollout = None
    for attn in attentions:
        a = rollout_step(discard_lowest(fuse_heads(attn.double(), head_fusion), discard_ratio))
        rollout = a if rollout is None else a @ rollout                    # later layers mix earlier mixtures
    return rollout.to(attentions[0].dtype)


def token_map(rows: Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Rows over all tokens (B, prefix + gh*gw) -> (B, gh, gw) over the patch tokens."""
    gh, gw = grid_size
    if rows.shape[-1] != num_prefix_tokens + gh * gw:
        raise VitlabError(f"{rows.shape[-1]} tokens do not match a {gh}x{gw} grid + {num_prefix_tokens} prefix")
    return rows[:, num_prefix_tokens:].reshape(-1, gh, gw)


def query_rows(matrix: Tensor, num_prefix_tokens: int) -> Tensor:
    """The row a classifier reads: [CLS] (token 0) when there is one, else the mean of the patch queries
    (average-pooled models). (B, N, N) -> (B, N)."""
    return matrix[:, 0] if num_prefix_tokens > 0 else matrix.mean(dim=1)


def rollout_map(attentions: Sequence[Tensor], grid_size: tuple[int, int], num_prefix_tokens: int = 1,
                head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """[CLS] row of the rollout over the patch grid: (B, gh, gw), scaled so each map's maximum is 1."""
    rollout = attention_rollout(attentions, head_fusion, discard_ratio)
    heat = token_map(query_rows(rollout, num_prefix_tokens), grid_size, num_prefix_tokens)
    return heat / heat.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)


def classifier_attention(attn: Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """One layer's attention from the classifier query ([CLS], or the mean patch query without prefix tokens) to
    every patch, per head: (B, heads, N, N) -> (B, heads, gh, gw)."""
    B, heads, N, _ = attn.shape
    rows = query_rows(attn.reshape(B * heads, N, N), num_prefix_tokens)                # (B*heads, N)
    return token_map(rows, grid_size, num_prefix_tokens).reshape(B, heads, *grid_size)
