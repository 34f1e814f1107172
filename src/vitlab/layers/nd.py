"""Layers that exist in a 2-D and a 3-D form (images and volumes): convolutions, norms, patch embedding and
position embeddings on a (d, h, w) grid. The segmentation models (U-Net, UNETR, SETR) pick the form by
`spatial_dims`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError


def to_ntuple(x: int | tuple[int, ...] | list[int], n: int) -> tuple[int, ...]:
    """An int side or a sequence of n sides -> an n-tuple of ints."""
    if isinstance(x, (tuple, list)):
        if len(x) != n:
            raise VitlabError(f"expected {n} sizes, got {tuple(x)}")
        return tuple(int(v) for v in x)
    return (int(x),) * n


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d or nn.Conv3d."""
    return _pick(spatial_dims, nn.Conv2d, nn.Conv3d)


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.ConvTranspose2d or nn.ConvTranspose3d."""
    return _pick(spatial_dims, nn.ConvTranspose2d, nn.ConvTranspose3d)


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    return _pick(spatial_dims, nn.MaxPool2d, nn.MaxPool3d)


def norm_nd(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation over (B, C, *spatial): "batch", "instance" (with a learned scale and shift),
    "instance_noaffine" (without: MONAI's "instance", UNETR's choice), "group" (32 groups or fewer) or "none"."""
    if kind == "batch":
        return _pick(spatial_dims, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if kind in ("instance", "instance_noaffine"):
        return _pick(spatial_dims, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=kind == "instance")
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise VitlabError(f"norm must be batch, instance, instance_noaffine, group or none, got {kind!r}")


def _pick(spatial_dims: int, two: type[nn.Module], three: type[nn.Module]) -> type[nn.Module]:
    if spatial_dims == 2:
        return two
    if spatial_dims == 3:
        return three
    raise VitlabError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class PatchEmbedNd(nn.Module):
    """Non-overlapping patches of an image or a volume, each projected linearly (a conv with stride = patch).

    x (B, C, *img_size) -> tokens (B, N, dim), N = prod(img_size / patch), in row-major grid order ((d, h, w) for a
    volume), or the map (B, dim, *grid_size) if flatten=False. The 2-D form equals layers.PatchEmbed.
    """

    def __init__(self, img_size: int | tuple[int, ...], patch_size: int | tuple[int, ...], in_chans: int, dim: int,
                 spatial_dims: int = 3, flatten: bool = True) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.img_size = to_ntuple(img_size, spatial_dims)
        self.patch_size = to_ntuple(patch_size, spatial_dims)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise VitlabError(f"input size {'x'.join(map(str, self.img_size))} is not divisible by the patch size "
                              f"{'x'.join(map(str, self.patch_size))}")
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = math.prod(self.grid_size)
        self.flatten = flatten
        self.proj = conv_nd(spatial_dims)(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[2:])
        if size != self.img_size:
            raise VitlabError(f"input is {'x'.join(map(str, size))} but the model was built for "
                              f"{'x'.join(map(str, self.img_size))}")
        x = self.proj(x)                                           # (B, dim, *grid)
        return x.flatten(2).transpose(1, 2) if self.flatten else x   # (B, N, dim)


def tokens_to_map(tokens: Tensor, grid_size: tuple[int, ...]) -> Tensor:
    """Patch tokens back to a feature map: (B, N, dim) -> (B, dim, *grid_size), N = prod(grid_size)."""
    B, N, C = tokens.shape                                         # batch, tokens, channels
    return tokens.transpose(1, 2).reshape(B, C, *grid_size)        # (B, dim, *grid)


def resample_pos_embed_nd(pos_embed: Tensor, new_grid: tuple[int, ...], old_grid: tuple[int, ...] | None = None,
                          num_prefix_tokens: int = 0) -> Tensor:
    """Resize the grid part of a learned position embedding to a 1-, 2- or 3-D grid, prefix tokens dropped or kept.

    pos_embed (1, num_prefix_tokens + prod(old_grid), dim) -> (1, num_prefix_tokens + prod(new_grid), dim).
    A 2-D source grid (a ViT/DeiT checkpoint, square unless old_grid says otherwise) resampled to a 3-D grid is
    first repeated along the depth axis (the "inflation" of I3D), then interpolated trilinearly; 2-D -> 2-D is
    bicubic, as vitlab.layers.resample_pos_embed.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise VitlabError(f"position embedding has {n} grid tokens: not square, give its grid")
        old_grid = (side, side)
    if math.prod(old_grid) != n:
        raise VitlabError(f"grid {tuple(old_grid)} does not match the {n} position-embedding tokens")
    new_grid = tuple(int(g) for g in new_grid)
    if tuple(old_grid) == new_grid:
        return pos_embed
    grid = grid.reshape(1, *old_grid, dim).movedim(-1, 1).float()     # (1, dim, *old_grid)
    if len(old_grid) == 2 and len(new_grid) == 3:
        grid = grid.unsqueeze(2).expand(-1, -1, new_grid[0], -1, -1)  # (1, dim, d, gh, gw): the same plane per slice
        old_grid = (new_grid[0], *old_grid)
    if len(old_grid) != len(new_grid):
        raise VitlabError(f"cannot resample a {len(old_grid)}-D position grid to {len(new_grid)}-D")
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(new_grid)]
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    grid = grid.to(pos_embed.dtype).movedim(1, -1).reshape(1, -1, dim)  # (1, prod(new_grid), dim)
    return torch.cat([prefix, grid], dim=1)
