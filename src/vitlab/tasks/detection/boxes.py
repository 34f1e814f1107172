"""Box conversions and overlaps: (cx, cy, w, h) <-> (x0, y0, x1, y1), area, IoU and generalized IoU.

Every function takes boxes in the last dimension (..., 4); the pairwise ones take (N, 4) and (M, 4) xyxy boxes with
x1 >= x0 and y1 >= y0 and return (N, M). Half-precision inputs are computed in float32 (products of coordinates lose
too much in bf16).
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre x, centre y, width, height -> (..., 4) x0, y0, x1, y1."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) x0, y0, x1, y1 -> (..., 4) centre x, centre y, width, height."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes. Returns (iou (N, M), union (N, M))."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1, area2 = box_area(boxes1), box_area(boxes2)                  # (N,), (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])     # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)                         # (N, M, 2), 0 where disjoint
    inter = wh[..., 0] * wh[..., 1]                                     # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., CVPR 2019) of (N, 4) and (M, 4) xyxy boxes -> (N, M).

    GIoU = IoU - |C \\ (A u B)| / |C|, C the smallest box enclosing A and B. It lies in (-1, 1]; unlike IoU it
    keeps falling as disjoint boxes move apart, so it gives a gradient where IoU is flat at 0.
    """
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])     # (N, M, 2) of the enclosing box
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)                         # (N, M, 2)
    enclosing = wh[..., 0] * wh[..., 1]                                 # (N, M)
    return iou - (enclosing - union) / enclosing


def _upcast(boxes: Tensor) -> Tensor:
    return boxes.float() if boxes.is_floating_point() and boxes.dtype not in (torch.float32, torch.float64) \
        else boxes
