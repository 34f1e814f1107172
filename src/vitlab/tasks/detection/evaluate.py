"""COCO mAP through pycocotools' COCOeval (the field's evaluator, not our own AP code), and a detector's
evaluation on a DetectionSet.

The metric names (AP values 0-1, as COCOeval prints them; -1 where COCOeval says -1, e.g. no ground-truth box in
that area range): val_map (AP @ IoU 0.50:0.95), val_map50, val_map75, val_map_small / medium / large (area < 32^2,
32^2..96^2, > 96^2 pixels of the original image). `summary` holds COCOeval's 12 printed summary lines; the rest of
its printing is kept out of stdout.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import torch
import torch.nn as nn
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ...errors import VitlabError
from ...runtime import autocast
from .postprocess import postprocess, to_coco_results

METRIC_NAMES = ("val_map", "val_map50", "val_map75", "val_map_small", "val_map_medium", "val_map_large")


def coco_map(gt: dict, results: list[dict]) -> dict[str, Any]:
    """gt: a COCO ground-truth dict (images, annotations with bbox xywh pixels, area, iscrowd, categories);
    results: COCO results rows (image_id, category_id, bbox xywh pixels, score). An empty results list scores 0.0
    (not a crash). Returns the six metrics (floats) and `summary` (str). Neither argument is modified."""
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise VitlabError(f"COCO ground truth has no {key!r} list")
    known_images = {img["id"] for img in gt["images"]}
    unknown = {r["image_id"] for r in results} - known_images
    if unknown:
        raise VitlabError(f"detections name image ids not in the ground truth: {sorted(unknown)[:5]}")
    gt = copy.deepcopy(gt)                           # COCOeval writes "ignore" into the annotations
    for ann in gt["annotations"]:                    # box-only data sets may leave these out
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = _load_results(coco_gt, results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    lines = [line for line in printed.getvalue().splitlines() if line.lstrip().startswith("Average")]
    metrics: dict[str, Any] = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats[:6])}
    metrics["summary"] = "\n".join(lines)
    return metrics


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """The results as a COCO object. pycocotools' loadRes indexes results[0], so an empty list is built here: no
    detections, every ground-truth box missed."""
    if results:
        return coco_gt.loadRes([dict(r) for r in results])      # loadRes adds keys to each row: copies
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    empty.createIndex()
    return empty


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset: Any, normalize: nn.Module, device: torch.device,
                      precision: str = "fp32", batch_size: int = 32) -> dict[str, Any]:
    """COCO mAP of `model` on a DetectionSet: the model in eval mode on its images (uint8 (N, 3, S, S), normalised
    by `normalize` on `device`), detections post-processed to the original pixels (dataset.orig_sizes), mapped to
    dataset.image_ids and dataset.category_ids and scored against dataset.coco_ground_truth().

    Returns the six metrics, `summary` (COCOeval's 12 lines) and `detections` (per image the postprocess dicts).
    The model is left in the mode it came in.
    """
    was_training = model.training
    model.eval()
    detections: list[dict] = []
    try:
        for start in range(0, len(dataset), batch_size):
            images = dataset.images[start:start + batch_size].to(device)       # (b, 3, S, S) uint8
            with autocast(device, precision):
                outputs = model(normalize(images))
            detections += postprocess(outputs, dataset.orig_sizes[start:start + batch_size])
    finally:
        model.train(was_training)
    results = to_coco_results(detections, dataset.image_ids, dataset.category_ids)
    metrics = coco_map(dataset.coco_ground_truth(), results)
    metrics["detections"] = detections
    return metrics
