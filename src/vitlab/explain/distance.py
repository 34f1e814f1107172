"""Mean attention distance (ViT, Dosovitskiy et al. 2021, Fig. 7 right / Appendix D.7).

For a query patch i the attention distance is sum_j a_ij * ||p_i - p_j||, the distance in pixels between patch
centres weighted by the attention weights: the "receptive field size" of the head. Averaged over query patches
and images it gives one number per head and layer. Only patch-to-patch attention has a position: prefix tokens
([CLS], distillation) are dropped as queries and keys, and each query's remaining weights are renormalised to
sum 1 (so the measure is the mean distance over the patches attended to).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import VitlabError
from ..layers import to_2tuple


def patch_distances(grid_size: tuple[int, int], patch_size: int | tuple[int, int]) -> Tensor:
    """Pairwise Euclidean distances in pixels between patch centres, row-major: (gh*gw, gh*gw)."""
    gh, gw = grid_size
    ph, pw = to_2tuple(patch_size)
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64) * ph, torch.arange(gw, dtype=torch.float64) * pw,
                          indexing="ij")
    centres = torch.stack([y.flatten(), x.flatten()], dim=1)            # (N, 2); the half-patch offset cancels
    return torch.cdist(centres, centres)


def mean_attention_distance(attn: Tensor, grid_size: tuple[int, int], patch_size: int | tuple[int, int],
                            num_prefix_tokens: int = 1) -> Tensor:
    """attn (B, heads, prefix + N, prefix + N) softmax weights -> (heads,) mean distance in pixels."""
    gh, gw = grid_size
    n = gh * gw
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2] or attn.shape[-1] != num_prefix_tokens + n:
        raise VitlabError(f"attention of shape {tuple(attn.shape)} does not fit a {gh}x{gw} patch grid with "
                          f"{num_prefix_tokens} prefix tokens")
    a = attn[..., num_prefix_tokens:, num_prefix_tokens:].double()        # (B, h, N, N) patch to patch
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_query = (a * patch_distances(grid_size, patch_size).to(a.device)).sum(dim=-1)   # (B, h, N)
    return per_query.mean(dim=(0, 2)).float()


def attention_distances(attentions: Sequence[Tensor], grid_size: tuple[int, int], patch_size: int | tuple[int, int],
                        num_prefix_tokens: int = 1) -> Tensor:
    """One mean distance per layer and head: list of (B, heads, N, N) -> (layers, heads) in pixels."""
    return torch.stack([mean_attention_distance(a, grid_size, patch_size, num_prefix_tokens) for a in attentions])


def pixel_patch_size(model) -> tuple[int, int]:
    """Side of one token's cell in input pixels: the image size over the token grid (for a hybrid model whose
    patch embedding reads a CNN feature map, that is the backbone stride times the patch)."""
    grid = model.patch_embed.grid_size
    size = to_2tuple(getattr(model.cfg, "img_size", None) or model.patch_embed.img_size)
    return size[0] // grid[0], size[1] // grid[1]
