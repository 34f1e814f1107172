"""Position embeddings: fixed 2-D sin-cos, and resampling learned ones to another grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_2d(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine embedding (MAE/MoCo-v3 style): (gh * gw, dim), row-major over the grid.

    A quarter of the channels each: sin(y), cos(y), sin(x), cos(x) at geometrically spaced frequencies.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    gh, gw = grid_size
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    y = y.reshape(-1, 1) * omega                                    # (gh*gw, dim/4)
    x = x.reshape(-1, 1) * omega
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).float()


def resample_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
                       num_prefix_tokens: int = 1, mode: str = "bicubic", antialias: bool = False) -> Tensor:
    """Resize the grid part of a position embedding, keeping prefix tokens ([CLS], distillation) as they are.

    pos_embed (1, num_prefix_tokens + gh*gw, dim) -> (1, num_prefix_tokens + nh*nw, dim). old_grid defaults to a
    square grid. A no-op (the same tensor) at equal size. This is the fine-tune-at-higher-resolution recipe of
    ViT §3.2 / DeiT / FixRes.
    """
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n_grid ** 0.5))
        if side * side != n_grid:
            raise ValueError(f"position embedding has {n_grid} grid tokens: not square, pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n_grid:
        raise ValueError(f"old_grid {old_grid} does not match {n_grid} grid tokens")
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if tuple(old_grid) == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)    # (1, dim, gh, gw)
    grid = F.interpolate(grid.float(), size=new_grid, mode=mode, antialias=antialias,
                         align_corners=False if mode in ("bilinear", "bicubic") else None)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)    # (1, nh*nw, dim)
    return torch.cat([prefix, grid], dim=1)
