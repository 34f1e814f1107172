"""Cross-entropy + soft Dice (TransUNet and UNETR both train with this sum), weights named in one place.

Dice is MONAI's DiceLoss(softmax=True, to_onehot_y=True, batch=True): per class, intersection and sums over the
whole batch and all pixels, 1 - (2 I + eps) / (P + G + eps), averaged over classes (background included). Pixels
labelled ignore_index count in neither term (MONAI has no ignore_index: ours masks them out; tested equal to
monai.losses.DiceCELoss where no pixel is ignored).
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn

from ...data.segmentation import IGNORE_INDEX


class SegmentationLoss(nn.Module):
    """logits (B, C, *spatial), target int64 (B, *spatial) -> (ce_weight * ce + dice_weight * dice, parts)."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 smooth: float = 1e-5) -> None:
        super().__init__()
        self.weights = {"ce": float(ce_weight), "dice": float(dice_weight)}
        self.ignore_index = ignore_index
        self.smooth = smooth                  # MONAI's smooth_nr = smooth_dr default

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = logits.float()
        parts = {"ce": F.cross_entropy(logits, target, ignore_index=self.ignore_index),
                 "dice": soft_dice_loss(logits, target, self.ignore_index, self.smooth)}
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1e-5) -> Tensor:
    """Batch soft Dice loss of softmax(logits) (B, C, *S) against target (B, *S); ignored pixels left out."""
    C = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)                  # (B, 1, *S)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(0, C - 1) * (target != ignore_index), C).movedim(-1, 1).to(logits.dtype) * valid
    dims = [0] + list(range(2, logits.ndim))                                         # batch and space
    intersection = (probs * onehot).sum(dims)                                        # (C,)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return (1 - (2 * intersection + smooth) / (denominator + smooth)).mean()


class SegmentationObjective:
    """The trainer's objective: (model, inputs, masks) -> (loss, {"ce", "dice"})."""

    def __init__(self, loss: SegmentationLoss) -> None:
        self.loss = loss

    def __call__(self, model: nn.Module, x: Tensor, masks: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(x)
        logits = out["logits"] if isinstance(out, dict) else out
        return self.loss(logits, masks)


def seg_logits(out: Tensor | dict[str, Tensor]) -> Tensor:
    return out["logits"] if isinstance(out, dict) else out


__all__ = ["SegmentationLoss", "SegmentationObjective", "seg_logits", "soft_dice_loss"]
