"""Box-aware batched augmentation on the training device: random resized crop, horizontal flip, colour jitter.

The crop and the flip are one affine resampling per image (grid_sample), and the same affine map moves the boxes,
so pixels and boxes cannot disagree. Boxes are clipped to the crop; a box that keeps less than min_visibility of its
area, or ends narrower than min_size pixels, is dropped with its label, iscrowd flag, mask and any other per-box
entry. Hue is not jittered: the scenes captions name each object's colour.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import Normalize


class DetectionAugment(nn.Module):
    """(uint8 images (B, 3, H, W), targets) -> (normalised float (B, 3, S, S), targets), boxes moved with pixels.

    targets[i]: "boxes" (n, 4) normalised cxcywh and per-box entries ("labels", "iscrowd", "masks" (n, H, W), ...).
    In eval mode (module.eval()) the images are only resized to S and normalised.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image_size: int,
                 crop_scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True, color_jitter: float = 0.2, *,
                 crop_prob: float = 0.5, crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 min_visibility: float = 0.1, min_size: float = 1.0) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))  # crop area as a fraction of the image
        self.crop_prob = float(crop_prob)          # chance an image is cropped at all (else the whole image)
        self.crop_ratio = crop_ratio               # crop width / height, log-uniform in this range
        self.hflip = hflip                         # mirror half the images
        self.color_jitter = float(color_jitter)    # brightness, contrast, saturation factors in 1 +- color_jitter
        self.min_visibility = min_visibility       # keep a box only if this fraction of its area stays in view
        self.min_size = min_size                   # ... and it stays at least this many output pixels wide and high
        self.normalize = Normalize(mean, std)

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]],
                generator: torch.Generator | None = None) -> tuple[Tensor, list[dict[str, Tensor]]]:
        B, _, H, W = images.shape                  # batch, channels, height, width
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if not self.training:
            if H == W == self.image_size:
                return self.normalize(x), targets
            full = torch.tensor([[0.0, 0.0, W, H]]).repeat(B, 1)
            x, targets = crop_and_flip(x, targets, full, torch.zeros(B, dtype=torch.bool), self.image_size)
            return self.normalize(x), targets
        crops = self.sample_crops(B, H, W, generator)
        flips = (torch.rand(B, generator=generator) < 0.5) if self.hflip else torch.zeros(B, dtype=torch.bool)
        x, targets = crop_and_flip(x, targets, crops, flips, self.image_size, min_visibility=self.min_visibility,
                                   min_size=self.min_size)
        if self.color_jitter > 0:
            j = self.color_jitter
            factors = 1 + (torch.rand(B, 3, generator=generator) * 2 - 1) * j  # (B, 3) brightness, contrast, sat.
            x = colour_jitter(x, factors.to(x.device))
        return self.normalize(x), targets

    def sample_crops(self, B: int, H: int, W: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, 4) crop windows x0, y0, w, h in input pixels (the whole image for those not cropped)."""
        u = torch.rand(B, 5, generator=generator, dtype=torch.float64)  # on the CPU: the same draws on any device
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * u[:, 0]
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        w = (W * torch.sqrt(area * ratio)).clamp(max=W)
        h = (H * torch.sqrt(area / ratio)).clamp(max=H)
        x0, y0 = (W - w) * u[:, 2], (H - h) * u[:, 3]
        crops = torch.stack([x0, y0, w, h], dim=1)
        uncropped = (u[:, 4] >= self.crop_prob) | (lo >= 1.0)
        crops[uncropped] = torch.tensor([0.0, 0.0, W, H], dtype=torch.float64)
        return crops.float()


def crop_and_flip(x: Tensor, targets: list[dict[str, Tensor]], crops: Tensor, flips: Tensor, out_size: int, *,
                  min_visibility: float = 0.1, min_size: float = 1.0) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Resample each image's crop window to out_size x out_size (mirrored where flips), moving its boxes.

    x (B, C, H, W) float; crops (B, 4) x0, y0, w, h in input pixels; flips (B,) bool. Returns x (B, C, S, S) and
    the targets with boxes (normalised cxcywh of the output) clipped and filtered, per-box entries filtered alike.
    """
    B, C, H, W = x.shape
    crops = crops.to(torch.float64).cpu()
    sign = 1.0 - 2.0 * flips.to(torch.float64).cpu()  # -1 mirrors
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    # output normalised coordinate u in [-1, 1] -> input v = a u + b, with the crop's edges at u = -1 and 1
    theta[:, 0, 0] = sign * crops[:, 2] / W
    theta[:, 0, 2] = (2 * crops[:, 0] + crops[:, 2]) / W - 1
    theta[:, 1, 1] = crops[:, 3] / H
    theta[:, 1, 2] = (2 * crops[:, 1] + crops[:, 3]) / H - 1
    grid = F.affine_grid(theta.to(x.device, x.dtype), [B, C, out_size, out_size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, S, S)
    new_targets = []
    for i, target in enumerate(targets):
        keep, boxes = _move_boxes(target["boxes"], crops[i], bool(flips[i]), W, H, out_size, min_visibility,
                                  min_size)
        n = len(target["boxes"])
        moved = {}
        for key, value in target.items():
            if key == "boxes":
                moved[key] = boxes[keep]
            elif key == "masks":
                masks = F.grid_sample(value[:, None].to(grid.device, grid.dtype),
                                      grid[i:i + 1].expand(len(value), -1, -1, -1), mode="nearest",
                                      align_corners=False)[:, 0] > 0.5  # (n, S, S)
                moved[key] = masks[keep.to(masks.device)].to(value.device)
            elif isinstance(value, Tensor) and value.ndim and len(value) == n:
                moved[key] = value[keep.to(value.device)]
            else:
                moved[key] = value
        new_targets.append(moved)
    return out, new_targets


def _move_boxes(boxes: Tensor, crop: Tensor, flip: bool, W: int, H: int, out_size: int, min_visibility: float,
                min_size: float) -> tuple[Tensor, Tensor]:
    """boxes (n, 4) normalised cxcywh of the input -> (keep (n,) bool, boxes (n, 4) normalised cxcywh of the output)."""
    b = boxes.to(torch.float64).cpu()
    x0, x1 = (b[:, 0] - b[:, 2] / 2) * W, (b[:, 0] + b[:, 2] / 2) * W  # input pixels
    y0, y1 = (b[:, 1] - b[:, 3] / 2) * H, (b[:, 1] + b[:, 3] / 2) * H
    cx0, cy0, cw, ch = crop.tolist()
    x0, x1 = (x0 - cx0) / cw, (x1 - cx0) / cw  # fractions of the crop window
    y0, y1 = (y0 - cy0) / ch, (y1 - cy0) / ch
    if flip:
        x0, x1 = 1 - x1, 1 - x0
    area = (x1 - x0) * (y1 - y0)
    x0, x1, y0, y1 = x0.clamp(0, 1), x1.clamp(0, 1), y0.clamp(0, 1), y1.clamp(0, 1)
    w, h = x1 - x0, y1 - y0
    keep = (w * h >= min_visibility * area) & (area > 0) & (w * out_size >= min_size) & (h * out_size >= min_size)
    moved = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, w, h], dim=-1).to(boxes.dtype)
    return keep.to(boxes.device), moved.to(boxes.device)


def colour_jitter(x: Tensor, factors: Tensor) -> Tensor:
    """x (B, 3, H, W) in [0, 1]; factors (B, 3): brightness, contrast, saturation multipliers (1 = unchanged)."""
    b, c, s = (f.view(-1, 1, 1, 1) for f in factors.unbind(1))
    x = (x * b).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = ((x - mean) * c + mean).clamp(0, 1)
    grey = _grey(x)  # (B, 1, H, W)
    return ((x - grey) * s + grey).clamp(0, 1)


def _grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma (B, 1, H, W) of RGB x (B, 3, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
