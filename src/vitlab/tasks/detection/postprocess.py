"""From DETR's outputs to detections in pixels, and to COCO results rows.

A query's score is its largest class probability after the softmax over classes + no-object, the no-object column
removed (detr's PostProcess): a query that is mostly "no object" gets a low score for every class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import VitlabError
from .boxes import box_cxcywh_to_xyxy


@torch.no_grad()
def postprocess(outputs: dict[str, Tensor], orig_sizes: Sequence[Sequence[int]] | Tensor, threshold: float = 0.0,
                top_k: int = 100) -> list[dict[str, Tensor]]:
    """outputs: `logits` (B, Q, C + 1), `boxes` (B, Q, 4) normalised cxcywh; orig_sizes: (height, width) of each
    image's source in pixels, (B, 2).

    Returns per image a dict on the CPU, best first: `scores` (k,) float32, `labels` (k,) int64 class index,
    `boxes` (k, 4) float32 xyxy in the source image's pixels; the `top_k` best queries whose score > threshold.
    """
    logits, boxes = outputs["logits"], outputs["boxes"]
    sizes = torch.as_tensor(orig_sizes, dtype=torch.float32).cpu()             # (B, 2) height, width
    if sizes.shape != (logits.shape[0], 2):
        raise VitlabError(f"orig_sizes must give (height, width) of each of the {logits.shape[0]} images, "
                          f"got shape {tuple(sizes.shape)}")
    prob = logits.float().softmax(-1)[..., :-1]                                  # (B, Q, C) no-object removed
    scores, labels = prob.max(-1)                                                # (B, Q) each
    height, width = sizes.unbind(-1)                                             # (B,) each
    scale = torch.stack([width, height, width, height], dim=-1)[:, None, :]      # (B, 1, 4)
    pixels = box_cxcywh_to_xyxy(boxes.float()).cpu() * scale                     # (B, Q, 4)
    scores, labels = scores.cpu(), labels.cpu()
    detections = []
    for s, lab, b in zip(scores, labels, pixels):
        order = s.argsort(descending=True, stable=True)[:top_k]
        order = order[s[order] > threshold]
        detections.append({"scores": s[order], "labels": lab[order], "boxes": b[order]})
    return detections


def to_coco_results(detections: list[dict[str, Tensor]], image_ids: Sequence[int],
                    category_ids: Sequence[int]) -> list[dict]:
    """Post-processed detections -> COCO results rows {"image_id", "category_id", "bbox": [x, y, w, h] pixels,
    "score"}; class index i becomes category_ids[i]."""
    if len(detections) != len(image_ids):
        raise VitlabError(f"{len(detections)} images of detections but {len(image_ids)} image ids")
    rows = []
    for det, image_id in zip(detections, image_ids):
        for score, label, (x0, y0, x1, y1) in zip(det["scores"].tolist(), det["labels"].tolist(),
                                                  det["boxes"].tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    return rows
