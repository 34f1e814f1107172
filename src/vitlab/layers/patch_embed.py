"""Image to patch tokens."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (tuple, list)) else (int(x), int(x))


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each linearly (a conv with stride = patch).

    x (B, C, H, W) -> tokens (B, H/p * W/p, dim) in row-major patch order, or (B, dim, H/p, W/p) if flatten=False.
    strict_img_size=False lets a convolutional model without a fixed-size position embedding (ConvMixer) take any
    input the convolution takes: a partial patch at the right/bottom edge is dropped (floor(H/p) x floor(W/p)), as
    nn.Conv2d and timm do; `grid_size`/`num_patches` then describe the built size only.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, dim: int = 768, bias: bool = True, flatten: bool = True,
                 strict_img_size: bool = True) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        for s, p in zip(self.img_size, self.patch_size):
            if s % p:
                raise VitlabError(f"image size {self.img_size[0]}x{self.img_size[1]} is not divisible by the "
                                  f"patch size {self.patch_size[0]}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if self.strict_img_size and (H, W) != self.img_size:
            raise VitlabError(f"input is {H}x{W} but the model was built for {self.img_size[0]}x{self.img_size[1]}")
        if not self.strict_img_size and (H < self.patch_size[0] or W < self.patch_size[1]):
            raise VitlabError(f"input is {H}x{W}: smaller than one patch ({self.patch_size[0]})")
        x = self.proj(x)                                   # (B, dim, floor(H/p), floor(W/p))
        return x.flatten(2).transpose(1, 2) if self.flatten else x   # (B, N, dim)
