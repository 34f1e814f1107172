"""The table of registered model variants: name -> builder function, and the task each declares.

The lowest layer of model naming: it imports nothing of vitlab but errors, so the checkpoint readers (vitlab.convert),
checkpoint loading (vitlab.checkpoint) and the model files themselves build on it. The public face is
vitlab.registry, whose `create_model` adds loading a checkpoint on top:

    variants (table, build_model) <- convert (read any format) <- checkpoint (load_model) <- registry (create_model)
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import pkgutil
from typing import Any, Callable

import torch
import torch.nn as nn

from .errors import VitlabError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}          # model name -> the task it is trained and evaluated for (vitlab.tasks)
_loaded = False
DEFAULT_TASK = "classification"


def register_model(fn: Callable[..., nn.Module] | None = None, *, task: str = DEFAULT_TASK) -> Any:
    """Decorator: register a variant function under its own name, for `task` (vitlab.tasks; the CLI needs no
    --task flag). `@register_model` registers a classifier; `@register_model(task="detection")` a detector."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS and _MODELS[fn.__name__] is not fn:
            raise RuntimeError(f"model {fn.__name__!r} registered twice")
        _MODELS[fn.__name__] = fn
        _TASKS[fn.__name__] = task
        return fn

    return register(fn) if fn is not None else register


def model_task(name: str) -> str:
    """The task a registered model declares ("classification", "detection", ...)."""
    model_entrypoint(name)             # unknown names raise the usual one-line error
    return _TASKS[name]


def _load_model_modules() -> None:
    """Import every module of vitlab.models once, so each file's variants register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    models = importlib.import_module(f"{__package__}.models")
    for info in pkgutil.iter_modules(models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{models.__name__}.{info.name}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _load_model_modules()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The variant function registered as `name`; an unknown name raises VitlabError with close matches."""
    _load_model_modules()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `vitlab models` lists them"
        raise VitlabError(f"unknown model {name!r}{hint}")
    return _MODELS[name]


def build_model(name: str, **args: Any) -> nn.Module:
    """A registered variant with fresh weights, built with constructor `args`, remembering both (a checkpoint
    rebuilds the model by itself from them: config.json holds the name and arguments)."""
    model = model_entrypoint(name)(**args)
    model.vitlab_name = name
    model.vitlab_args = dict(args)
    return model


def default_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The configuration a variant builds with (its `cfg` dataclass as a dict: img_size, drop_path_rate, ...),
    read off a model built on the meta device (no memory, no initialisation); {} for a model without a cfg."""
    with torch.device("meta"):
        try:
            model = model_entrypoint(name)(**overrides)
        except TypeError as e:               # an override the variant does not take
            raise VitlabError(f"{name}: {e}") from None
    cfg = getattr(model, "cfg", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
