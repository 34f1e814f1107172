"""Semantic segmentation: a class index per pixel (2-D) or voxel (3-D), cross-entropy + soft Dice, mIoU and Dice.

Data: `scenes` (2-D), `volumes` (3-D) or a folder (vitlab.data.segmentation.build_segmentation_data); a target is
the int64 mask (B, *spatial), IGNORE_INDEX (255) = not scored. Primary metric: `val_miou` (0-1, background
included) for 2-D and 3-D alike; `val_dice` (foreground, per image, MONAI's convention) and, for volumes, `val_hd95`
(voxels) sit beside it. Inputs larger than the training size are predicted by sliding windows (MONAI, Gaussian
blend).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import VitlabError
from ...runtime import autocast
from ..base import Task, mean_std, refuse_classification_options

log = logging.getLogger(__name__)

EPOCH_METRICS = ("val_loss", "val_miou", "val_dice", "val_pixel_acc")


def model_spatial_dims(model_or_cfg: Any) -> int:
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    value = cfg.get("spatial_dims", 2) if isinstance(cfg, dict) else getattr(cfg, "spatial_dims", 2)
    return int(value)


class SegmentationTask(Task):
    name = "segmentation"
    primary_metric = "val_miou"
    epoch_metrics = EPOCH_METRICS

    def __init__(self, overlap: float = 0.5) -> None:
        self.overlap = overlap                                      # sliding-window overlap (predict)
        self.loss_weights = (1.0, 1.0)  # (ce, dice) of the run being trained (--ce-weight, --dice-weight); val_loss

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "segmentation", "mask-aware crop, flip and intensity jitter")
        if cfg.ce_weight == 0 and cfg.dice_weight == 0:
            raise VitlabError("--ce-weight and --dice-weight are both 0: the loss would be zero")

    def build_data(self, cfg: Any, image_size: int) -> Any:
        from ...data.segmentation import build_segmentation_data
        from ...registry import default_config

        dims = model_spatial_dims(default_config(cfg.model, **cfg.model_args))
        return build_segmentation_data(cfg.data, image_size, spatial_dims=dims, seed=cfg.seed,
                                       val_fraction=cfg.val_fraction)

    def num_train_batches(self, data: Any, batch_size: int, world_size: int = 1) -> int:
        from ...data.loader import num_batches

        return num_batches(len(data.train), batch_size, True, world_size)

    def train_batches(self, data: Any, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        from ...data.segmentation import segmentation_batches

        return segmentation_batches(data.train, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True,
                                    rank=rank, world_size=world_size)

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        from ...data.seg_augment import SegmentationAugment

        in_chans = getattr(model.cfg, "in_chans", data.in_chans)
        if in_chans != data.in_chans:
            raise VitlabError(f"{data.name} has {data.in_chans}-channel inputs but {cfg.model} takes {in_chans}")
        hflip = cfg.hflip if cfg.hflip is not None else data.mirror_safe
        dims = data.spatial_dims
        flips = (((0,) if hflip else ()) if dims == 2 else ((0, 1, 2) if hflip else ()))
        side = min(cfg.crop_scale, 1.0) ** (1 / dims)     # --crop-scale is an area (volume) fraction
        return SegmentationAugment(*mean_std(model), image_size, dims, crop_scale=side, flip_axes=flips)

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        from .loss import SegmentationLoss, SegmentationObjective

        self.loss_weights = (cfg.ce_weight, cfg.dice_weight)
        return SegmentationObjective(SegmentationLoss(*self.loss_weights))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 32, workers: int = 0) -> dict[str, Any]:
        """Metrics over dataset (vitlab.tasks.segmentation.metrics), val_loss (CE + Dice as trained, the mean of
        per-batch values) and `predictions`: the first 8 predicted masks (uint8), for the report."""
        from ...data.seg_augment import NormalizeND
        from .loss import SegmentationLoss, seg_logits
        from .metrics import confusion_matrix, dice_per_image, hd95_per_image, summarize

        C = len(dataset.classes)
        normalize = NormalizeND(*mean_std(model)).to(device)
        loss_fn = SegmentationLoss(*self.loss_weights)
        was_training = model.training
        model.eval()
        confusion = torch.zeros(C, C, dtype=torch.long)
        dice, hd95, previews, losses = [], [], [], []
        batch_size = min(batch_size, 16 if dataset.spatial_dims == 3 else 64)
        try:
            for start in range(0, len(dataset), batch_size):
                images = dataset.images[start:start + batch_size].to(device)
                masks = dataset.masks[start:start + batch_size].long().to(device)
                with autocast(device, precision):
                    logits = seg_logits(model(normalize(images))).float()
                losses.append(float(loss_fn(logits, masks)[0]) * len(images))
                pred = logits.argmax(1)
                confusion += confusion_matrix(pred, masks, C)
                dice.append(dice_per_image(pred, masks, C))
                if dataset.spatial_dims == 3:
                    hd95.append(hd95_per_image(pred, masks.clamp(max=C - 1) * (masks != 255), C))
                if sum(len(p) for p in previews) < 8:
                    previews.append(pred[:8].to(torch.uint8).cpu())
        finally:
            model.train(was_training)
        if not len(dataset):
            raise VitlabError("the validation set is empty")
        result = summarize(confusion, torch.cat(dice), dataset.classes, torch.cat(hd95) if hd95 else None)
        result.update(val_loss=sum(losses) / len(dataset), confusion=confusion,
                      predictions=torch.cat(previews)[:8])
        return result

    def epoch_line(self, result: dict[str, Any]) -> str:
        hd = f"  HD95 {result['val_hd95']:.2f}" if "val_hd95" in result else ""
        return (f"val mIoU {result['val_miou']:.3f}  Dice {result['val_dice']:.3f}  "
                f"pixel acc {result['val_pixel_acc']:.3f}{hd}")

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        keys = ("val_miou", "val_dice", "val_pixel_acc", "val_iou_per_class", "val_loss", "val_hd95")
        return {**{k: result[k] for k in keys if k in result}, "num_classes": len(data.classes),
                "spatial_dims": data.spatial_dims}

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        return [plot_val_masks(data.val, result["predictions"], out / "segmentation.png")]

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5) -> list[str]:
        """Per image: OUT/<name>_mask.png (palette PNG, pixel value = class) and OUT/<name>_overlay.png; per
        volume (.npy, .nii, .nii.gz): OUT/<name>_mask.npy (or .nii.gz with the input's affine) and
        OUT/<name>_montage.png (slices with the overlay)."""
        from .predict import predict_files

        return predict_files(predictor, paths, Path(out or "runs/predict"), overlap=self.overlap)

    def summary(self, metrics: dict[str, Any]) -> str:
        hd = f"  HD95 {metrics['val_hd95']:.2f} voxels" if "val_hd95" in metrics else ""
        return (f"val mIoU {metrics['val_miou']:.3f}  Dice {metrics['val_dice']:.3f}  "
                f"pixel acc {metrics['val_pixel_acc']:.3f}{hd}")


def plot_val_masks(dataset: Any, predictions: Tensor, path: Path, count: int = 8) -> Path:
    """Validation images (for volumes: their middle slice) over the true and the predicted masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io import atomic_path
    from .draw import overlay

    count = min(count, len(predictions))
    fig, axes = plt.subplots(3, count, figsize=(2.0 * count, 6.4), squeeze=False)
    for col in range(count):
        image, truth, pred = dataset.images[col], dataset.masks[col], predictions[col]
        if dataset.spatial_dims == 3:
            mid = image.shape[1] // 2
            image, truth, pred = image[0, mid], truth[mid], pred[mid]
        panels = [overlay(image, torch.zeros_like(truth)), overlay(image, truth), overlay(image, pred)]
        for row, panel in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].axis("off")
    for row, title in enumerate(("image", "truth", "predicted")):
        axes[row, 0].set_title(title, fontsize=9, loc="left")
    what = "middle slices of validation volumes" if dataset.spatial_dims == 3 else "validation images"
    fig.suptitle(f"Segmentation: {what}, true (middle) and predicted (bottom) masks")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


TASK = SegmentationTask()
