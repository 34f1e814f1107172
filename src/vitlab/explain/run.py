"""What `vitlab explain` does, callable from Python: load a model, gather images, write the report."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitlabError
from .report import ExplainOptions, explain

log = logging.getLogger(__name__)


def load_explain_model(checkpoint: str | Path) -> nn.Module:
    """A run directory or any checkpoint vitlab reads; a registered model name builds a fresh (untrained) model."""
    from ..checkpoint import load_model
    from ..registry import create_model, list_models

    if Path(checkpoint).exists():
        return load_model(checkpoint)
    if str(checkpoint) in list_models():
        log.warning("%s: a fresh model with random weights (pass a run directory to explain a trained one)",
                    checkpoint)
        model = create_model(str(checkpoint)).eval()
        model.vitlab_meta = {}
        return model
    raise VitlabError(f"{checkpoint}: no such checkpoint, run directory or model name")


def model_image_size(model: nn.Module) -> int:
    size = getattr(getattr(model, "cfg", None), "img_size", None)
    if size is None:
        raise VitlabError(f"{type(model).__name__} does not say its input size (cfg.img_size)")
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise VitlabError(f"explain reads square images; the model takes {size[0]}x{size[1]}")
        size = size[0]
    return int(size)


def gather_images(paths: Sequence[str | Path], size: int, data: str | None = None, samples: int = 4,
                  classes: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str], list[int | None]]:
    """Image files, then `samples` validation images of a data spec spread evenly over the set:
    (uint8 (B, 3, size, size), names, true labels: None for a file, whose class is not known)."""
    from ..data import build_data, load_image

    images, names = [load_image(p, size) for p in paths], [Path(p).name for p in paths]
    labels: list[int | None] = [None] * len(images)
    if data is not None:
        if samples < 1:
            raise VitlabError(f"--samples must be at least 1, got {samples}")
        val = build_data(data, size).val
        data_classes = list(getattr(val, "classes", None) or classes or [])
        for i in torch.linspace(0, len(val) - 1, min(samples, len(val))).round().long().tolist():
            image, label = val[i]
            images.append(image)
            labels.append(int(label))
            truth = data_classes[label] if label < len(data_classes) else str(label)
            names.append(f"{data} val #{i} (true {truth})")
    if not images:
        raise VitlabError("no images: give image files or --data SPEC")
    return torch.stack(images), names, labels


def class_index(name: str | None, classes: Sequence[str], num_classes: int) -> int | None:
    """--class NAME (or an index) -> class index; None stays None (each image's prediction)."""
    if name is None:
        return None
    if name in classes:
        return list(classes).index(name)
    if name.isdigit() and int(name) < num_classes:
        return int(name)
    shown = ", ".join(list(classes)[:10]) + (" ..." if len(classes) > 10 else "")
    raise VitlabError(f"unknown class {name!r}; the model's classes are: {shown}")


def explain_checkpoint(checkpoint: str | Path, images: Sequence[str | Path], out: str | Path, *,
                       data: str | None = None, samples: int = 4, class_name: str | None = None,
                       layers: Sequence[int] | None = None, head_fusion: str = "mean",
                       discard_ratio: float = 0.0, threshold: float = 0.5,
                       texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Load, gather, explain: writes out/index.html and the PNGs, returns the summary. With no image and no
    `data`, a run directory's own data (its config.json's "data") gives the validation images. A detector (DETR)
    takes detection data for `data` and `threshold`; class_name, layers (None: chosen from the depth,
    default_layers), head_fusion and discard_ratio are a classifier's; `texts` (prompts) a CLIP model's."""
    from .detr import gather_detection_images, is_detector

    from ..tasks import task_of

    model = load_explain_model(checkpoint)
    task = task_of(model)
    if texts and not task.explains_texts:
        raise VitlabError(f"--text: only for CLIP (contrastive) checkpoints; this one is {task.name}")
    prompts = {"texts": list(texts)} if texts else {}
    own = task.explain(model, [str(i) for i in images], Path(out), data=data, samples=samples, **prompts)
    if own is not None:                  # a task with figures of its own (translation: cross-attention alignment)
        return own
    meta = getattr(model, "vitlab_meta", None) or {}
    if not images and data is None:
        data = meta.get("data")
        if data is None:
            raise VitlabError(f"give image files or --data SPEC ({checkpoint} does not name the data it was "
                              "trained on)")
        log.info("explain: %d validation images of %s, the data %s was trained on", samples, data, checkpoint)
    own_classes = meta.get("classes")
    classes = own_classes or [str(i) for i in range(getattr(model, "num_classes", 0))]
    if is_detector(model):
        batch, names, data_classes = gather_detection_images(images, model_image_size(model), data, samples)
        if not own_classes and data_classes and len(data_classes) == len(classes):
            classes = data_classes              # a fresh model: name its classes after the data's
        options = ExplainOptions(threshold=threshold)
    else:
        batch, names, labels = gather_images(images, model_image_size(model), data, samples, classes)
        options = ExplainOptions(layers=tuple(layers) if layers else None, head_fusion=head_fusion,
                                 discard_ratio=discard_ratio,
                                 target_class=class_index(class_name, classes, len(classes)))
    title = f"vitlab explain: {getattr(model, 'vitlab_name', type(model).__name__)} ({checkpoint})"
    summary = explain(model, batch, out, classes=classes, names=names, options=options, title=title,
                      labels=None if is_detector(model) else labels)
    summary["report"] = str(Path(out) / "index.html")
    return summary
