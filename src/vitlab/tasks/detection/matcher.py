"""Hungarian matching of predictions to targets (DETR, Carion et al. 2020, §3.1).

Each image's Q predictions are matched one-to-one to its n <= Q targets by the assignment of least total cost

    C[q, j] = cost_class * (-p_q(c_j)) + cost_bbox * ||b_q - b_j||_1 + cost_giou * (-GIoU(b_q, b_j))

(p_q the softmax over classes + no-object, L1 on normalised cxcywh, GIoU on the xyxy boxes), solved by
scipy.optimize.linear_sum_assignment. Unmatched predictions are "no object" for the loss.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher:
    """Matcher with DETR's cost weights (class 1, L1 5, GIoU 2 by default)."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """Per image the (Q, n_i) cost matrix, float32 on the CPU.

        outputs: `logits` (B, Q, C + 1), `boxes` (B, Q, 4) normalised cxcywh; targets: per image `labels` (n_i,)
        int64 and `boxes` (n_i, 4) normalised cxcywh.
        """
        B, Q = outputs["logits"].shape[:2]                                        # batch, queries
        prob = outputs["logits"].flatten(0, 1).float().softmax(-1)               # (B*Q, C+1)
        pred = outputs["boxes"].flatten(0, 1).float()                             # (B*Q, 4)
        device = prob.device
        labels = torch.cat([t["labels"] for t in targets]).to(device)            # (T,) all targets of the batch
        boxes = torch.cat([t["boxes"] for t in targets]).to(device).float()      # (T, 4)
        cost = (self.cost_class * -prob[:, labels]
                + self.cost_bbox * torch.cdist(pred, boxes, p=1)
                + self.cost_giou * -generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(boxes)))
        # A NaN/inf prediction must not crash scipy; it becomes the worst match, and the loss then reports it
        big = torch.finfo(cost.dtype).max / 4
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).view(B, Q, len(labels)).cpu()   # (B, Q, T)
        sizes = [len(t["labels"]) for t in targets]
        return [c[i] for i, c in enumerate(cost.split(sizes, dim=-1))]            # each (Q, n_i)

    def __call__(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per image (pred indices (k,), target indices (k,)) int64 on the CPU, k = min(Q, n_i), pred indices
        sorted; an image without targets gives two empty tensors."""
        matches = []
        for cost in self.cost_matrices(outputs, targets):
            rows, cols = linear_sum_assignment(cost.numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches
