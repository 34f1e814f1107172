"""Image classification: labels per image, cross-entropy (or DeiT distillation), top-1/top-5 and a confusion matrix.

Data: `digits`, `shapes`, ImageFolder, CIFAR, MNIST idx (vitlab.data.build_data); targets are int64 labels (B,),
or soft targets (B, C) after Mixup/CutMix. Primary metric: `val_top1` (percent).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import batches, build_data, num_batches
from ..data.augment import AugmentConfig, BatchAugment, Normalize
from ..errors import VitlabError
from ..runtime import autocast
from .base import Task, mean_std


def classification_logits(out: Tensor | dict[str, Tensor]) -> Tensor:
    """The logits (B, C) of a classifier's output: the tensor itself, or the `logits` entry of a model with
    named outputs (a distilled DeiT also returns `logits_cls` and `logits_dist`)."""
    return out["logits"] if isinstance(out, dict) else out


class LabelledImageBatches:
    """The training batches of an image set of (uint8 image, label): shuffled per epoch, the last partial batch
    dropped, split across ranks. Classification and DINO (whose labels only the k-NN monitor reads) share them."""

    def num_train_batches(self, data: Any, batch_size: int, world_size: int = 1) -> int:
        return num_batches(data.train, batch_size, drop_last=True, world_size=world_size)

    def train_batches(self, data: Any, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        return batches(data.train, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True,
                       num_workers=workers, rank=rank, world_size=world_size)


class ClassificationTask(LabelledImageBatches, Task):
    name = "classification"
    primary_metric = "val_top1"
    epoch_metrics = ("val_loss", "val_top1", "val_top5")

    def build_data(self, cfg: Any, image_size: int) -> Any:
        data = build_data(cfg.data, image_size, val_fraction=cfg.val_fraction, seed=cfg.seed)
        if len(data.classes) < 2:
            raise VitlabError(f"{cfg.data}: a classification data set needs at least 2 classes, found "
                              f"{len(data.classes)} ({', '.join(data.classes) or 'none'})")
        return data

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        hflip = cfg.hflip if cfg.hflip is not None else data.mirror_safe
        aug = AugmentConfig(crop_scale=cfg.crop_scale, hflip=hflip, randaugment=cfg.randaugment,
                            mixup=cfg.mixup, cutmix=cfg.cutmix, erase=cfg.erase)
        mean, std = mean_std(model)
        return BatchAugment(aug, mean, std, image_size, len(data.classes))

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        from ..train.objectives import ClassificationObjective, DistillationObjective

        if not cfg.teacher:
            return ClassificationObjective(cfg.label_smoothing)
        from ..checkpoint import load_model

        teacher = load_model(cfg.teacher).to(device)
        if teacher.num_classes != model.num_classes:
            raise VitlabError(f"teacher {cfg.teacher} has {teacher.num_classes} classes, the student "
                              f"{model.num_classes}")
        tau = cfg.distill_tau if cfg.distill_tau is not None else (3.0 if cfg.distill == "soft" else 1.0)
        alpha = cfg.distill_alpha if cfg.distill_alpha is not None else (0.1 if cfg.distill == "soft" else 0.5)
        return DistillationObjective(teacher, cfg.distill, tau, alpha, cfg.label_smoothing, mean_std(model),
                                     mean_std(teacher))

    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 256, workers: int = 0) -> dict[str, Any]:
        normalize = Normalize(*mean_std(model)).to(device)
        return evaluate_classifier(model, batches(dataset, batch_size, shuffle=False, num_workers=workers),
                                   normalize, len(dataset.classes), device, precision)

    def epoch_line(self, result: dict[str, Any]) -> str:
        top_k = f"  top-{result['val_topk']} {result['val_top5']:.2f}%" if result["val_topk"] < len(
            result["confusion"]) else ""         # top-k of k classes is 100%: not worth a column
        return f"val top-1 {result['val_top1']:.2f}%{top_k}"

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        """top-1/top-5/loss, the class count, the chance level and whether top-1 is near it (`near_chance`)."""
        metrics = {k: result[k] for k in ("val_top1", "val_top5", "val_loss")}
        chance, margin = chance_level(result["confusion"])
        metrics.update(num_classes=len(data.classes), chance_top1=round(chance, 2),
                       near_chance=bool(result["val_top1"] <= chance + margin))
        if data.references is not None:
            metrics.update(data.references())
        return metrics

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        from ..train.report import plot_confusion, plot_rollout

        paths = [plot_confusion(result["confusion"], data.classes, out / "confusion.png")]
        rollout = plot_rollout(model, data.val, data.classes, out / "rollout.png")
        return paths + ([rollout] if rollout else [])

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5) -> list[str]:
        """Top-k classes with probabilities; nothing is written."""
        return [f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top)
                for path, top in zip(paths, predictor.predict(paths, top_k))]

    def loss_note(self, cfg: Any, model: nn.Module, data: Any) -> str | None:
        """Label smoothing, augmentation and drop path raise the training loss only (validation: plain
        cross-entropy on unaugmented images with the whole network), so train above val is expected."""
        on = []
        if cfg.label_smoothing > 0:
            on.append(f"label smoothing {cfg.label_smoothing:g}")
        hflip = cfg.hflip if cfg.hflip is not None else data.mirror_safe
        augment = [name for name, active in (("crop", cfg.crop_scale < 1), ("flip", hflip),
                                             ("RandAugment", cfg.randaugment > 0), ("Mixup", cfg.mixup > 0),
                                             ("CutMix", cfg.cutmix > 0), ("erasing", cfg.erase > 0)) if active]
        if augment:
            on.append(f"augmentation ({', '.join(augment)})")
        drop_path = getattr(getattr(model, "cfg", None), "drop_path_rate", 0) or 0
        if drop_path > 0:
            on.append(f"drop path {drop_path:g}")
        if cfg.teacher:
            on.append("the distillation term")
        if not on:
            return None
        return ("Train loss is above val loss by design: " + ", ".join(on) + " act in training only "
                "(val loss: plain cross-entropy on unaugmented images, the whole network).")

    def summary(self, metrics: dict[str, Any]) -> str:
        ref = f"  (reference: scikit-learn SVC(gamma=0.001) {metrics['reference_svc_top1']:.2f}%)" \
            if "reference_svc_top1" in metrics else ""
        classes = metrics.get("num_classes")
        top5 = f"  top-5 {metrics['val_top5']:.2f}%" if classes is None or classes > 5 else ""
        line = f"val top-1 {metrics['val_top1']:.2f}%{top5}{ref}"
        if metrics.get("near_chance"):
            epochs = metrics.get("epochs", 0)
            line += (f"; val top-1 {metrics['val_top1']:.0f}% is chance level for {classes} classes; train longer: "
                     f"--epochs {max(30, 3 * epochs)}")
        return line


def chance_level(confusion: Tensor) -> tuple[float, float]:
    """(chance top-1, margin) in percent for a confusion matrix (true x predicted): chance is what always
    answering the most frequent true class scores (1/classes on a balanced set); the margin is three binomial
    standard deviations of an accuracy at chance over this many images, at least 5 points."""
    counts = confusion.sum(dim=1).double()                  # (classes,) true images per class
    n = float(counts.sum())
    p = float(counts.max()) / max(n, 1.0)
    return 100.0 * p, max(5.0, 300.0 * (p * (1 - p) / max(n, 1.0)) ** 0.5)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, batches: Any, normalize: nn.Module, num_classes: int,
                        device: torch.device, precision: str = "fp32") -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent), mean loss and the confusion matrix (true x predicted) of a classifier
    over (uint8 images (B, 3, S, S), labels (B,)) batches."""
    model.eval()
    k = min(5, num_classes)
    correct1 = correct5 = n = 0
    loss_sum = 0.0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        with autocast(device, precision):
            logits = classification_logits(model(normalize(images))).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(k, dim=-1).indices                          # (B, k)
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=-1).sum().item()
        confusion += torch.bincount(labels.cpu() * num_classes + top[:, 0].cpu(),
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
        n += labels.numel()
    if n == 0:
        raise VitlabError("the validation set is empty")
    return {"val_top1": 100.0 * correct1 / n, "val_top5": 100.0 * correct5 / n, "val_loss": loss_sum / n,
            "confusion": confusion, "val_images": n, "val_topk": k}


TASK = ClassificationTask()
