"""Training objectives: what the trainer minimises, given the model and an augmented batch.

An objective is a callable (model, inputs (B,3,H,W), targets (B,) or (B,C)) -> (loss, parts) where parts is a
dict of named scalar tensors for logging. The trainer knows nothing else about the task.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError


def classification_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against integer labels (B,) or soft targets (B, C) (Mixup/CutMix), with label smoothing."""
    if targets.ndim == 2:
        if label_smoothing > 0:
            targets = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


class ClassificationObjective:
    """Cross-entropy on the model's logits. A distilled model trained without a teacher (it returns
    (cls_logits, dist_logits) in training mode) has both heads trained on the labels."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(x)
        if isinstance(out, dict):       # a distilled DeiT without a teacher: both heads learn the labels
            losses = [classification_loss(out[k], targets, self.label_smoothing)
                      for k in ("cls_logits", "distillation_logits")]
            loss = sum(losses) / len(losses)
            return loss, {"ce": loss.detach()}
        loss = classification_loss(out, targets, self.label_smoothing)
        return loss, {"ce": loss.detach()}


class DistillationObjective:
    """DeiT distillation (Touvron et al. 2021, §4): the class head learns the labels, the distillation head
    the teacher.

        hard: L = (1 - alpha) CE(Z_cls, y) + alpha CE(Z_dist, argmax Z_t)          (the paper: alpha = 1/2)
        soft: L = (1 - alpha) CE(Z_cls, y) + alpha tau^2 KL(softmax(Z_t/tau) || softmax(Z_dist/tau))

    The teacher runs in eval mode, without gradients, on the same augmented batch (renormalised to its own
    mean/std when they differ from the student's).
    """

    def __init__(self, teacher: nn.Module, mode: str = "hard", tau: float = 1.0, alpha: float = 0.5,
                 label_smoothing: float = 0.0, student_norm: tuple | None = None,
                 teacher_norm: tuple | None = None) -> None:
        if mode not in ("hard", "soft"):
            raise VitlabError(f"--distill must be 'hard' or 'soft', got {mode!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.mode, self.tau, self.alpha, self.label_smoothing = mode, tau, alpha, label_smoothing
        self.renorm = None
        if student_norm and teacher_norm and tuple(map(tuple, student_norm)) != tuple(map(tuple, teacher_norm)):
            (ms, ss), (mt, st) = student_norm, teacher_norm
            view = (1, -1, 1, 1)
            self.renorm = [torch.tensor(v).view(view) for v in (ms, ss, mt, st)]

    def teacher_logits(self, x: Tensor) -> Tensor:
        if self.renorm is not None:
            ms, ss, mt, st = (t.to(x.device, x.dtype) for t in self.renorm)
            x = (x * ss + ms - mt) / st
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(x).float()

    def __call__(self, model: nn.Module, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(x)
        if not isinstance(out, dict) or "distillation_logits" not in out:
            raise VitlabError("--teacher needs a distilled student with a distillation head "
                              "(e.g. deit_tiny_distilled_patch16_224)")
        cls_logits, dist_logits = out["cls_logits"], out["distillation_logits"]
        t = self.teacher_logits(x)
        base = classification_loss(cls_logits, targets, self.label_smoothing)
        if self.mode == "hard":
            distill = F.cross_entropy(dist_logits.float(), t.argmax(dim=-1))
        else:
            distill = F.kl_div(F.log_softmax(dist_logits.float() / self.tau, dim=-1),
                               F.log_softmax(t / self.tau, dim=-1), reduction="batchmean",
                               log_target=True) * self.tau ** 2
        loss = (1 - self.alpha) * base + self.alpha * distill
        return loss, {"ce": base.detach(), "distill": distill.detach()}
