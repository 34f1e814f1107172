"""Tasks: what a model is trained for, as one seam the trainer and the CLI call without knowing the task.

A task turns a data spec into train/val sets of (image, target), batches them, augments a batch on the device with
its targets kept consistent, supplies the objective (model, inputs, targets) -> (loss, named parts), evaluates a
model (a metrics dict with one named primary metric), draws the report's figures and says what `predict` writes.
Every registered model declares its task (`@register_model(task="detection")`), so `vitlab train --model NAME`
needs no --task flag:

    task = task_for_model("detr_micro_64")          # DetectionTask
    data = task.build_data(cfg, image_size=64)
    metrics = task.evaluate(model, data.val, device)
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import VitlabError
from ..variants import model_task
from .base import Task

_TASK_MODULES = {"classification": ".classification", "detection": ".detection",
                 "segmentation": ".segmentation", "translation": ".translation",
                 "captioning": ".captioning", "self_supervised": ".self_supervised",
                 "contrastive": ".contrastive", "video_text": ".video_text"}


def get_task(name: str) -> Task:
    """The task object registered under `name` ("classification", "detection", ...)."""
    if name not in _TASK_MODULES:
        raise VitlabError(f"unknown task {name!r} (known: {', '.join(sorted(_TASK_MODULES))})")
    module = importlib.import_module(_TASK_MODULES[name], __name__)
    return module.TASK


def task_for_model(model_name: str) -> Task:
    """The task a registered model is trained and evaluated for."""
    return get_task(model_task(model_name))


def task_of(model: Any) -> Task:
    """The task of a built model (by its registry name; classification for unnamed modules)."""
    name = getattr(model, "vitlab_name", None)
    return task_for_model(name) if name else get_task("classification")


def restore_task_extras(model: Any, extras: dict[str, Any] | None = None) -> None:
    """Give a loaded model what its task stored beside the weights (config.json "task_extras"; default: the
    model's vitlab_meta), e.g. a translation model's tokenizer. A no-op for tasks that store nothing."""
    if extras is None:
        extras = (getattr(model, "vitlab_meta", None) or {}).get("task_extras") or {}
    if extras:
        task_of(model).restore_extras(model, extras)


__all__ = ["Task", "get_task", "restore_task_extras", "task_for_model", "task_of"]
