"""Batched augmentation on the training device (kornia), from uint8 batches to normalised float inputs.

Random resized crop, horizontal flip, RandAugment, random erasing, Mixup/CutMix. Each can be turned off.
Mixup/CutMix turn integer labels into soft targets (B, num_classes); the loss handles both.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn
from torch import Tensor


@dataclass
class AugmentConfig:
    crop_scale: float = 0.35        # random resized crop, area scale in (crop_scale, 1); 1.0 or more = off
    hflip: bool = True              # random horizontal flip (off for digits: a mirrored 2 is not a 2)
    randaugment: int = 0            # RandAugment ops per image; 0 = off
    randaugment_magnitude: int = 9  # RandAugment magnitude (0-30 scale, as the paper)
    mixup: float = 0.0              # Mixup Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0             # CutMix Beta(alpha, alpha); 0 = off
    erase: float = 0.0              # random erasing probability; 0 = off


class Normalize(nn.Module):
    """uint8 (B, 3, H, W) -> float (B, 3, H, W), scaled to [0, 1] then standardised by mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return (x - self.mean) / self.std


class BatchAugment(nn.Module):
    """Training-time augmentation: (uint8 images (B,3,H,W), labels (B,)) -> (inputs (B,3,H,W), targets).

    targets are the labels (B,) int64, or soft targets (B, num_classes) when Mixup/CutMix is on.
    """

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...], image_size: int,
                 num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        ops: list[nn.Module] = []
        if cfg.crop_scale < 1.0:
            ops.append(K.RandomResizedCrop((image_size, image_size), scale=(cfg.crop_scale, 1.0)))
        if cfg.hflip:
            ops.append(K.RandomHorizontalFlip())
        if cfg.randaugment > 0:
            from kornia.augmentation.auto import RandAugment

            ops.append(RandAugment(n=cfg.randaugment, m=cfg.randaugment_magnitude))
        self.geometric = nn.Sequential(*ops)
        self.normalize = Normalize(mean, std)
        self.erase = K.RandomErasing(p=cfg.erase) if cfg.erase > 0 else nn.Identity()

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float() / 255.0
        if len(self.geometric):
            x = self.geometric(x).clamp_(0.0, 1.0)
        x = self.erase(self.normalize(x))
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            return mix_batch(x, labels, self.num_classes, self.cfg.mixup, self.cfg.cutmix)
        return x, labels


def mix_batch(x: Tensor, labels: Tensor, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019), one of them per batch, pairing each image with
    the batch reversed. Returns the mixed inputs and soft targets (B, num_classes) weighted by the mixed area."""
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(x.dtype)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()) < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    x2 = x.flip(0)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x2[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)     # the area actually pasted
    else:
        x = lam * x + (1 - lam) * x2
    return x, lam * one_hot + (1 - lam) * one_hot.flip(0)
