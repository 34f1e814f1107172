"""Model registry with timm-style names.

A variant is a small function that returns a model; `@register_model` files it under its function name (the table
itself is vitlab.variants). `create_model` builds it, optionally at another input size or class count, and loads a
checkpoint. Imports point one way: registry -> checkpoint -> convert -> variants.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from .checkpoint import load_model
from .variants import (DEFAULT_TASK, build_model, default_config, list_models, model_entrypoint, model_task,
                       register_model)

__all__ = ["DEFAULT_TASK", "create_model", "default_config", "list_models", "model_entrypoint", "model_task",
           "register_model"]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    num_classes / img_size default to the variant's (or, with a checkpoint, the checkpoint's). A checkpoint whose
    class count differs from num_classes gets a fresh head; one trained at another img_size has its position
    embeddings resampled. `overrides` are constructor arguments (e.g. drop_path_rate=0.1).
    """
    if checkpoint_path is not None:
        model = load_model(checkpoint_path, name=name, num_classes=num_classes, img_size=img_size, **overrides)
        warn_if_other_architecture(name, model, checkpoint_path, given=overrides)
        return model
    args = dict(overrides)
    if num_classes is not None:
        args["num_classes"] = num_classes
    if img_size is not None:
        args["img_size"] = img_size
    return build_model(name, **args)


# settings a checkpoint may change without being another architecture: the head, the input size, input
# normalisation; also dropout / drop path rates and norm epsilons (HF's ViT uses 1e-12, timm's 1e-6)
_ADAPTABLE = ("num_classes", "img_size", "mean", "std")


def warn_if_other_architecture(name: str, model: nn.Module, checkpoint_path: str | Path,
                               given: dict[str, Any] | None = None) -> list[str]:
    """Log a warning when the model built from a checkpoint is not the architecture `name` registers (the
    checkpoint's own settings win: depth, width, patch size, ...). Returns the differing settings."""
    import dataclasses
    import logging

    cfg = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        return []
    base = default_config(name)
    given = given or {}
    differ = [f"{k} {v} (not {base[k]})" for k, v in dataclasses.asdict(cfg).items()
              if k in base and base[k] != v and k not in _ADAPTABLE and "drop" not in k and "eps" not in k
              and k not in given]
    if differ:
        logging.getLogger(__name__).warning(
            "%s: %s is not that architecture: %s; built the checkpoint's (pass its own name, or leave the name "
            "out with vitlab.checkpoint.load_model)", name, checkpoint_path, ", ".join(differ))
    return differ
