"""Model registry with timm-style names.

A variant is a small function that returns a model; `@register_model` files it under its function name.
`create_model` builds it, optionally at another input size or class count, and loads a checkpoint.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .errors import VitlabError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_loaded = False


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a variant function under its own name."""
    if fn.__name__ in _MODELS and _MODELS[fn.__name__] is not fn:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _load_model_modules() -> None:
    """Import every module of vitlab.models once, so each file's variants register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import models

    for info in pkgutil.iter_modules(models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{models.__name__}.{info.name}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _load_model_modules()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    _load_model_modules()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `vitlab models` lists them"
        raise VitlabError(f"unknown model {name!r}{hint}")
    return _MODELS[name]


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
        from .checkpoint import load_model

        return load_model(checkpoint_path, name=name, num_classes=num_classes, img_size=img_size, **overrides)
    args = dict(overrides)
    if num_classes is not None:
        args["num_classes"] = num_classes
    if img_size is not None:
        args["img_size"] = img_size
    model = model_entrypoint(name)(**args)
    # Remembered so a checkpoint can rebuild the model by itself (config.json: name + arguments).
    model.vitlab_name = name
    model.vitlab_args = args
    return model
