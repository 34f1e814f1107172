"""Segmentation metrics from predicted and true label maps, ignore_index left out everywhere.

- IoU per class = TP / (TP + FP + FN) over the whole split (a confusion matrix summed over images, as VOC/mmseg);
  a class absent from both prediction and truth has no IoU (NaN) and is left out of `miou`, which averages all
  classes, background included (VOC's convention).
- Dice per image and foreground class = 2 TP / (2 TP + FP + FN), NaN where the class is absent from that image's
  truth; `dice` is the mean of the non-NaN values: MONAI's DiceMetric(include_background=False, ignore_empty=True,
  reduction="mean"), the UNETR/BTCV convention.
- pixel accuracy = correct labelled pixels / labelled pixels.
- HD95 (volumes): MONAI's compute_hausdorff_distance(percentile=95) per volume and foreground class present in
  both truth and prediction, in voxels, averaged.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ...data.segmentation import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(num_classes, num_classes) int64, rows = true class, columns = predicted, ignored pixels left out."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """(C,) float64 IoU per class; NaN where the class is in neither truth nor prediction."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def dice_per_image(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, C - 1) float64 Dice of each foreground class per image; NaN where the class is absent from the truth."""
    valid = target != ignore_index
    dims = tuple(range(1, target.ndim))
    rows = []
    for k in range(1, num_classes):
        p, t = (pred == k) & valid, (target == k) & valid
        tp = (p & t).sum(dims).double()
        denom = p.sum(dims).double() + t.sum(dims).double()
        rows.append(torch.where(t.sum(dims) > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, math.nan)))
    return torch.stack(rows, 1).cpu() if rows else torch.zeros(len(target), 0, dtype=torch.float64)


def hd95_per_image(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, C - 1) float64 95th-percentile Hausdorff distance in voxels (MONAI); NaN where the class is missing from
    the truth or the prediction. Voxels labelled ignore_index belong to no class in either mask."""
    from monai.metrics import compute_hausdorff_distance

    valid = (target != ignore_index).unsqueeze(1)                                  # (B, 1, *S)
    p = F.one_hot(pred.long().clamp(0, num_classes - 1), num_classes).movedim(-1, 1) * valid
    t = F.one_hot(target.long().clamp(0, num_classes - 1), num_classes).movedim(-1, 1) * valid
    with warnings.catch_warnings():          # MONAI warns for every empty class; we report NaN for those instead
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, t, include_background=False, percentile=95).double().cpu()
    present = (t[:, 1:].flatten(2).any(-1) & p[:, 1:].flatten(2).any(-1)).cpu()
    return torch.where(present & torch.isfinite(hd), hd, torch.full_like(hd, math.nan))


def nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def summarize(confusion: Tensor, dice: Tensor, classes: list[str], hd95: Tensor | None = None) -> dict:
    """The metrics dict: val_miou, val_dice, val_pixel_acc, val_iou_per_class (class name -> IoU, None where
    undefined) and val_hd95 when hd95 is given."""
    iou = iou_from_confusion(confusion)
    total = int(confusion.sum())
    out = {"val_miou": nanmean(iou), "val_dice": nanmean(dice),
           "val_pixel_acc": float(confusion.diag().sum()) / total if total else math.nan,
           "val_iou_per_class": {name: (None if math.isnan(v) else round(float(v), 6))
                                 for name, v in zip(classes, iou.tolist())}}
    if hd95 is not None:
        out["val_hd95"] = nanmean(hd95)
    return out
