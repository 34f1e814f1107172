"""Mask-aware batched augmentation on the training device, 2-D and 3-D: random resized crop (a zoom into a random
window) and flips, as one affine resampling per sample; the image is resampled bilinearly, its mask with the same
grid by nearest neighbour, so pixels and labels cannot disagree. Brightness/contrast jitter touches the image only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NormalizeND(nn.Module):
    """uint8 (B, C, *spatial) -> float, scaled to [0, 1] then standardised per channel by mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class SegmentationAugment(nn.Module):
    """(uint8 images (B, C, *spatial), masks int64 (B, *spatial)) -> (normalised float (B, C, *S), masks (B, *S)).

    Training: each sample is zoomed into a random window of crop_scale..1 of each side (with probability crop_prob)
    and flipped along each spatial axis in flip_axes with probability 0.5 (2-D default: horizontal only; 3-D: all
    three). In eval mode (module.eval()) samples are only resized to S and normalised.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image_size: int, spatial_dims: int = 2,
                 crop_scale: float = 0.7, crop_prob: float = 0.5, flip_axes: tuple[int, ...] | None = None,
                 jitter: float = 0.2) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.spatial_dims = spatial_dims
        self.crop_scale = float(crop_scale)        # smallest window side as a fraction of the input side
        self.crop_prob = float(crop_prob)          # chance a sample is zoomed at all
        # axes in affine_grid's (x, y[, z]) order: 0 = width (horizontal flip), 1 = height, 2 = depth
        self.flip_axes = tuple(flip_axes) if flip_axes is not None else ((0,) if spatial_dims == 2 else (0, 1, 2))
        self.jitter = float(jitter)                # brightness and contrast factors in 1 +- jitter
        self.normalize = NormalizeND(mean, std)

    def forward(self, images: Tensor, masks: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        B = images.shape[0]
        n = self.spatial_dims
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        out_shape = (self.image_size,) * n
        if not self.training:
            if tuple(x.shape[2:]) == out_shape:
                return self.normalize(x), masks
            theta = torch.eye(n, n + 1, dtype=torch.float64).repeat(B, 1, 1)
            return self.normalize(warp(x, theta, out_shape)), warp_mask(masks, theta, out_shape)
        theta = self.sample_affine(B, generator)
        x, masks = warp(x, theta, out_shape), warp_mask(masks, theta, out_shape)
        if self.jitter > 0:
            f = 1 + (torch.rand(B, 2, generator=generator) * 2 - 1) * self.jitter      # (B, 2) brightness, contrast
            view = (B,) + (1,) * (x.ndim - 1)
            b, c = f[:, 0].view(view).to(x.device), f[:, 1].view(view).to(x.device)
            mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
            x = (((x * b) - mean * b) * c + mean * b).clamp(0, 1)
        return self.normalize(x), masks

    def sample_affine(self, B: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, n, n + 1) float64 maps from output to input normalised coordinates: scale (window side), shift
        (window position inside the input) and sign (flip) per axis."""
        n = self.spatial_dims
        u = torch.rand(B, 2 * n + 1, generator=generator, dtype=torch.float64)
        zoom = u[:, -1:] < self.crop_prob
        scale = torch.where(zoom, self.crop_scale + (1 - self.crop_scale) * u[:, :1], torch.ones(B, 1,
                                                                                               dtype=torch.float64))
        scale = scale.expand(B, n)                                         # the same side fraction on every axis
        shift = (1 - scale) * (2 * u[:, n:2 * n] - 1)                      # window stays inside the input
        sign = torch.ones(B, n, dtype=torch.float64)
        for axis in self.flip_axes:
            sign[:, axis] = torch.where(u[:, axis] < 0.5, -1.0, 1.0)
        theta = torch.zeros(B, n, n + 1, dtype=torch.float64)
        theta[:, range(n), range(n)] = sign * scale
        theta[:, :, n] = shift
        return theta


def warp(x: Tensor, theta: Tensor, out_shape: tuple[int, ...], mode: str = "bilinear") -> Tensor:
    """Resample x (B, C, *spatial) float through the affine maps theta (B, n, n + 1) to (B, C, *out_shape)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), [x.shape[0], x.shape[1], *out_shape], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_mask(masks: Tensor, theta: Tensor, out_shape: tuple[int, ...]) -> Tensor:
    """The same resampling for integer masks (B, *spatial), by nearest neighbour: labels are never blended."""
    moved = warp(masks[:, None].float(), theta, out_shape, mode="nearest")[:, 0]
    return moved.round().to(masks.dtype)
