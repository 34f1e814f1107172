"""Patch-embedding filters (ViT Fig. 7 left): the principal components of the linear patch projection.

The patch embedding is a linear map E from flattened patches (C*p*p) to dim. Its dim rows are filters in patch
space; their principal components (SVD of the centred rows) show the basis the model projects patches onto —
for a trained ViT, plausible low-frequency functions much like a CNN's first layer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import VitlabError


def patch_embedding_weight(model: nn.Module) -> Tensor:
    """The patch projection weight as filters: (dim, C, p, p)."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.stride != proj.kernel_size:
        raise VitlabError(f"{type(model).__name__} has no linear patch embedding (patch_embed.proj)")
    if proj.in_channels not in (1, 3):     # hybrid models embed a CNN's feature map, not pixels
        raise VitlabError(f"its patch embedding reads {proj.in_channels} feature channels, not image pixels")
    return proj.weight.detach()


def patch_embedding_components(model: nn.Module, k: int = 28, gray: bool = False) -> tuple[Tensor, Tensor]:
    """The first k principal components of the patch-embedding filters.

    gray: the filters as a gray-scale input sees them, summed over the colour channels (R = G = B = v gives
    w_R v + w_G v + w_B v); components then have one channel. Returns (components (k, C, p, p) unit-norm,
    explained variance ratio (k,)); k is capped at the rank bound.
    """
    w = patch_embedding_weight(model).double()
    if gray:
        w = w.sum(dim=1, keepdim=True)                                   # (dim, 1, p, p)
    dim, filter_shape = w.shape[0], w.shape[1:]
    flat = w.reshape(dim, -1)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vt = torch.linalg.svd(flat, full_matrices=False)             # vt (min(dim, Cpp), Cpp)
    k = min(k, vt.shape[0])
    variance = s ** 2
    ratio = variance / variance.sum().clamp_min(1e-300)
    return vt[:k].reshape(k, *filter_shape).float(), ratio[:k].float()
