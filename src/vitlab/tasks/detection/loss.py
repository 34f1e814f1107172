"""DETR's set loss (Carion et al. 2020, §3.1 and A.2) and the training objective built on it.

For each decoder layer the predictions are matched to the targets (HungarianMatcher), then

    loss_ce   = cross-entropy over classes + no-object, the no-object class weighted eos_coef (0.1): most of the
                Q queries are no-object, and down-weighting them keeps the classifier from collapsing onto it;
    loss_bbox = sum of L1 distances of matched boxes (normalised cxcywh) / num_boxes;
    loss_giou = sum of (1 - GIoU) of matched boxes / num_boxes;

num_boxes = the number of target boxes in the batch, averaged over ranks under torch.distributed (so every rank
divides by the same number), at least 1. The last layer's losses are `loss_ce`, `loss_bbox`, `loss_giou`; decoder
layer i's auxiliary ones `loss_ce_i`, ... (i = 0 .. L-2, detr's naming). The total is weighted in one place:
DetectionObjective.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher

DEFAULT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}   # the paper's lambda's (A.2)

Targets = list[dict[str, Tensor]]


class SetCriterion:
    """The named set losses of every decoder layer.

    outputs: `logits` (B, Q, num_classes + 1; the last = no object), `boxes` (B, Q, 4) normalised cxcywh, optional
    `aux`: a list of {"logits", "boxes"} of the earlier decoder layers. targets: per image `labels` (n,) int64 and
    `boxes` (n, 4) normalised cxcywh (crowd boxes already removed). The losses are computed in float32.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
                 weights: dict[str, float] | None = None) -> None:
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.eos_coef = eos_coef
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)

    def __call__(self, outputs: dict, targets: Targets) -> dict[str, Tensor]:
        device = outputs["logits"].device
        with torch.autocast(device.type, enabled=False):
            targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device).float()} for t in targets]
            num_boxes = self.num_boxes(targets, device)
            losses = self.layer_losses(outputs, targets, num_boxes)
            for i, aux in enumerate(outputs.get("aux") or []):
                losses.update({f"{k}_{i}": v for k, v in self.layer_losses(aux, targets, num_boxes).items()})
        return losses

    def weight(self, name: str) -> float:
        """The weight of a loss by name; `loss_bbox_3` weighs as `loss_bbox`."""
        base = name if name in self.weights else name.rsplit("_", 1)[0]
        return self.weights[base]

    def layer_losses(self, outputs: dict[str, Tensor], targets: Targets, num_boxes: Tensor) -> dict[str, Tensor]:
        """loss_ce, loss_bbox, loss_giou of one decoder layer's outputs."""
        logits, boxes = outputs["logits"].float(), outputs["boxes"].float()      # (B, Q, C+1), (B, Q, 4)
        matches = self.matcher({"logits": logits, "boxes": boxes}, targets)
        batch_idx = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(matches)]).to(logits.device)
        pred_idx = torch.cat([p for p, _ in matches]).to(logits.device)          # (K,) over the batch
        matched_labels = torch.cat([t["labels"][j.to(logits.device)] for t, (_, j) in zip(targets, matches)])
        matched_boxes = torch.cat([t["boxes"][j.to(logits.device)] for t, (_, j) in zip(targets, matches)])

        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)  # (B, Q)
        classes[batch_idx, pred_idx] = matched_labels                             # unmatched stay no-object
        class_weight = torch.ones(self.num_classes + 1, device=logits.device)
        class_weight[-1] = self.eos_coef
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=class_weight)   # (B, C+1, Q) vs (B, Q)

        pred = boxes[batch_idx, pred_idx]                                         # (K, 4)
        loss_bbox = F.l1_loss(pred, matched_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(matched_boxes)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @staticmethod
    def num_boxes(targets: Targets, device: torch.device) -> Tensor:
        """The batch's target count, averaged over ranks when torch.distributed is initialised, clamped >= 1."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1.0)


class DetectionObjective:
    """(model, x (B, 3, H, W) normalised, targets) -> (total loss, parts). total = sum over every layer's losses of
    weight * loss (ce 1, bbox 5, giou 2); parts = the last layer's loss_ce, loss_bbox, loss_giou, detached."""

    def __init__(self, criterion: SetCriterion) -> None:
        self.criterion = criterion

    def __call__(self, model: nn.Module, x: Tensor, targets: Targets) -> tuple[Tensor, dict[str, Tensor]]:
        losses = self.criterion(model(x), targets)
        total = sum(self.criterion.weight(name) * value for name, value in losses.items())
        parts = {name: losses[name].detach() for name in ("loss_ce", "loss_bbox", "loss_giou")}
        return total, parts
