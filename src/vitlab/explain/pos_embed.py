"""Position-embedding similarity (ViT Fig. 7 centre): the cosine similarity of each patch's position embedding
with every other patch's. A trained ViT shows a 2-D neighbourhood structure: near patches have similar
embeddings, and patches in the same row or column too."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError


def grid_position_embedding(model: nn.Module) -> tuple[Tensor, tuple[int, int]]:
    """The model's patch position embeddings (prefix tokens dropped): ((gh*gw, dim), (gh, gw))."""
    pe = getattr(model, "pos_embed", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if not isinstance(pe, Tensor) or grid is None:
        raise VitlabError(f"{type(model).__name__} has no absolute position embedding over a patch grid")
    pe = pe.detach().reshape(-1, pe.shape[-1])
    prefix = pe.shape[0] - grid[0] * grid[1]
    if prefix < 0:
        raise VitlabError(f"position embedding has {pe.shape[0]} tokens, fewer than the {grid[0]}x{grid[1]} grid")
    return pe[prefix:], tuple(grid)


def position_embedding_similarity(model: nn.Module) -> Tensor:
    """(gh, gw, gh, gw): entry [r, c] is the map of cosine similarities of patch (r, c) with every patch."""
    pe, (gh, gw) = grid_position_embedding(model)
    unit = F.normalize(pe.float(), dim=-1)
    return (unit @ unit.T).reshape(gh, gw, gh, gw)
