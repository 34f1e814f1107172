"""Read checkpoints of any supported format into a vitlab state dict.

`read_checkpoint(path) -> Checkpoint` detects the format from the file(s). Each format module registers a
detector + reader in FORMATS; later model issues add their key tables to the same machinery.

Layering: convert builds on vitlab.variants (model names, configs) and vitlab.checkpoint_files (the vitlab
directory's two files) and never imports vitlab.checkpoint or vitlab.registry, which build on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ..checkpoint_files import WEIGHTS_NAME, is_vitlab_dir, read_config, read_weights
from ..errors import VitlabError


@dataclass
class Checkpoint:
    """A checkpoint translated to vitlab: which registered model, its arguments, and its weights."""
    model: str                                   # registered vitlab model name
    model_args: dict[str, Any]                   # constructor arguments (num_classes, img_size, norm_eps, ...)
    state_dict: dict[str, Tensor]                # vitlab parameter names
    meta: dict[str, Any] = field(default_factory=dict)   # classes, mean/std, source format
    interpolation: str = "bicubic"               # how the source library resamples position embeddings
    antialias: bool = False


@dataclass
class Format:
    name: str                                    # e.g. "vitlab", "hf", "timm", "npz"
    detect: Callable[[Path], bool]
    read: Callable[..., Checkpoint]
    description: str


FORMATS: list[Format] = []


def register_format(fmt: Format) -> Format:
    FORMATS.append(fmt)
    return fmt


def _read_vitlab(path: Path, **_: Any) -> Checkpoint:
    cfg = read_config(path)
    if "model" not in cfg:
        raise VitlabError(f"{path}/config.json names no model")
    meta = {k: v for k, v in cfg.items() if k not in ("model", "model_args")}
    return Checkpoint(cfg["model"], dict(cfg.get("model_args", {})), read_weights(path / WEIGHTS_NAME), meta)


def _is_vitlab(path: Path) -> bool:
    return path.is_dir() and is_vitlab_dir(path)


register_format(Format("vitlab", _is_vitlab, _read_vitlab, "a vitlab directory (config.json + model.safetensors)"))


def _load_format_modules() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def read_checkpoint(path: str | Path, **options: Any) -> Checkpoint:
    """Detect the format of `path` and read it as a vitlab Checkpoint."""
    path = Path(path)
    if not path.exists():
        raise VitlabError(f"{path}: no such file or directory")
    _load_format_modules()
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt.read(path, **options)
    supported = "; ".join(f.description for f in FORMATS)
    raise VitlabError(f"{path}: unknown checkpoint format (supported: {supported})")
