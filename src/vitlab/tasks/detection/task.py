"""Object detection (DETR): a set of labelled boxes per image, the Hungarian set loss, COCO mAP.

Data: `scenes` (generated) or a COCO folder (vitlab.data.detection.build_detection_data); a target is one dict per
image: "boxes" (n, 4) normalised cxcywh, "labels" (n,), "iscrowd" (n,). Primary metric: `val_map` (COCO AP at
IoU 0.50:0.95, 0-1 as COCO prints it).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import VitlabError
from ...io import write_text
from ..base import Task, mean_std, refuse_classification_options

log = logging.getLogger(__name__)

MAP_KEYS = ("val_map", "val_map50", "val_map75", "val_map_small", "val_map_medium", "val_map_large")


class DetectionTask(Task):
    name = "detection"
    primary_metric = "val_map"
    epoch_metrics = MAP_KEYS

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "detection", "box-aware crop, flip and colour jitter")

    def build_data(self, cfg: Any, image_size: int) -> Any:
        from ...data.detection import build_detection_data

        return build_detection_data(cfg.data, image_size, seed=cfg.seed, val_fraction=cfg.val_fraction)

    def num_train_batches(self, data: Any, batch_size: int, world_size: int = 1) -> int:
        from ...data.detection import num_detection_batches

        return num_detection_batches(data.train, batch_size, drop_last=True, world_size=world_size)

    def train_batches(self, data: Any, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
        from ...data.detection import detection_batches

        return detection_batches(data.train, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True,
                                 rank=rank, world_size=world_size)

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        from ...data.box_augment import DetectionAugment

        hflip = cfg.hflip if cfg.hflip is not None else getattr(data, "mirror_safe", True)
        return DetectionAugment(*mean_std(model), image_size, crop_scale=(min(cfg.crop_scale, 1.0), 1.0),
                                hflip=hflip)

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        from .loss import DetectionObjective, SetCriterion
        from .matcher import HungarianMatcher

        return DetectionObjective(SetCriterion(model.num_classes, HungarianMatcher()))

    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 32, workers: int = 0) -> dict[str, Any]:
        from ...data.augment import Normalize
        from .evaluate import evaluate_detector

        normalize = Normalize(*mean_std(model)).to(device)
        return evaluate_detector(model, dataset, normalize, device, precision, batch_size=min(batch_size, 64))

    def epoch_line(self, result: dict[str, Any]) -> str:
        return f"val mAP {result['val_map']:.3f}  AP50 {result['val_map50']:.3f}  AP75 {result['val_map75']:.3f}"

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        stats = data.stats
        return {**{k: result[k] for k in MAP_KEYS}, "dropped_boxes": stats.get("dropped_boxes", 0),
                "clipped_boxes": stats.get("clipped_boxes", 0), "crowd_boxes": stats.get("crowd_boxes", 0)}

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        """coco_eval.txt (the evaluator's 12-number summary, also logged) and detections.png: predicted vs
        ground-truth boxes on validation images."""
        summary = result.get("summary", "")
        if summary:
            log.info("COCO evaluation of the final model on %d validation images:\n%s", len(data.val),
                     summary.rstrip())
            write_text(out / "coco_eval.txt", summary)
        return [plot_val_detections(data.val, result["detections"], out / "detections.png")]

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5) -> list[str]:
        """Detections scoring >= threshold: OUT/<image>.png with labelled boxes, OUT/detections.json (boxes in
        the original image's pixels, x0 y0 x1 y1)."""
        from ...io import unique_stems, write_json
        from .draw import draw_detections

        out = Path(out or "runs/predict")
        out.mkdir(parents=True, exist_ok=True)
        detections = detect_files(predictor, paths, threshold)
        lines, rows = [], []
        names = unique_stems([Path(path).stem for path in paths])
        for path, name, (image, det) in zip(paths, names, detections):
            png = out / f"{name}.png"
            draw_detections(image, det["boxes"], det["labels"], det["scores"], predictor.classes).save(png)
            found = [{"class": predictor.classes[int(c)], "score": round(float(s), 4),
                      "box_xyxy": [round(float(v), 2) for v in b]}
                     for c, s, b in zip(det["labels"], det["scores"], det["boxes"])]
            rows.append({"image": str(path), "width": image.shape[-1], "height": image.shape[-2],
                         "detections": found})
            lines.append(f"{path}: {len(found)} objects ({', '.join(f['class'] for f in found) or 'none'}) -> {png}")
        write_json(out / "detections.json", rows)
        lines.append(f"detections -> {out / 'detections.json'}")
        return lines

    def summary(self, metrics: dict[str, Any]) -> str:
        return (f"val mAP {metrics['val_map']:.3f}  AP50 {metrics['val_map50']:.3f}  "
                f"AP75 {metrics['val_map75']:.3f}  ({metrics.get('dropped_boxes', 0)} boxes dropped)")


def plot_val_detections(dataset: Any, detections: list[dict[str, Tensor]], path: Path, count: int = 8,
                        threshold: float = 0.5) -> Path:
    """A grid of validation images: ground truth (green) beside the detections scoring >= threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .boxes import box_cxcywh_to_xyxy
    from .draw import draw_detections

    count = min(count, len(dataset))
    fig, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.8), squeeze=False)
    for col in range(count):
        image = dataset.images[col]
        S = image.shape[-1]
        h, w = dataset.orig_sizes[col]
        gt = dataset.targets[col]
        gt_boxes = box_cxcywh_to_xyxy(gt["boxes"]) * S
        det = detections[col]
        keep = det["scores"] >= threshold
        scale = torch.tensor([S / w, S / h, S / w, S / h])            # original pixels -> the S x S image
        panels = [draw_detections(image, gt_boxes, gt["labels"], None, dataset.classes, color=(0, 200, 0)),
                  draw_detections(image, det["boxes"][keep] * scale, det["labels"][keep], det["scores"][keep],
                                  dataset.classes)]
        for row, panel in enumerate(panels):
            axes[row, col].imshow(panel)
            axes[row, col].axis("off")
        axes[0, col].set_title(f"truth ({len(gt['labels'])})", fontsize=8)
        axes[1, col].set_title(f"predicted ({int(keep.sum())})", fontsize=8)
    fig.suptitle(f"Validation images: ground truth (top) and detections with score >= {threshold} (bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


TASK = DetectionTask()


def detect_files(predictor: Any, paths: list[str], threshold: float = 0.5) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """Image files -> [(original image uint8 (3, H, W), detections scoring >= threshold in its pixels)]. Each image
    is squashed to the model's S x S, as in training."""
    import numpy as np
    from PIL import Image

    from ...data.decode import decode_image
    from ...runtime import autocast
    from .postprocess import postprocess

    if not 0.0 <= threshold <= 1.0:
        raise VitlabError(f"--threshold must be in [0, 1], got {threshold}")
    S = predictor.image_size
    results = []
    for path in paths:
        img = decode_image(path)
        original = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)      # (3, H, W)
        small = img.resize((S, S), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1)[None]   # (1, 3, S, S)
        with torch.no_grad(), autocast(predictor.device, predictor.precision):
            outputs = predictor.model(predictor.normalize(x.to(predictor.device)))
        det = postprocess({k: v.float() for k, v in outputs.items() if k in ("logits", "boxes")},
                          [(img.height, img.width)], threshold=threshold)[0]
        results.append((original, {k: v.cpu() for k, v in det.items()}))
    return results
