"""Per-patch class logits: the classifier head applied to every patch token after the final norm ("logits for
class gold fish" on the lecture's slide). Where a patch token already reads as the class, the image region has
been recognised there; with average pooling the image logit is exactly the mean of these maps."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import VitlabError


def patch_logits(model: nn.Module, x: Tensor) -> Tensor:
    """x (B, 3, H, W) normalised -> (B, num_classes, gh, gw) logits of each patch token."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    head = getattr(model, "head", None)
    if grid is None or not isinstance(head, nn.Linear):
        raise VitlabError(f"{type(model).__name__} has no patch tokens with a linear head")
    prefix = getattr(model, "num_prefix_tokens", 0)
    fc_norm = getattr(model, "fc_norm", nn.Identity())
    with torch.no_grad():
        tokens = model.forward_features(x)                                  # (B, prefix + N, dim), final norm applied
        if tokens.ndim != 3 or tokens.shape[1] != prefix + grid[0] * grid[1]:
            raise VitlabError(f"{type(model).__name__} features are not patch tokens over its grid")
        logits = head(fc_norm(tokens[:, prefix:]))                          # (B, N, classes)
    return logits.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])
