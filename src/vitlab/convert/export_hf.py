"""Writing checkpoints: a vitlab model as an HF transformers directory, and `vitlab convert` end to end.

    save_hf(model, dir)                       -> config.json + model.safetensors (+ preprocessor_config.json)
    convert_checkpoint(src, dst, to="vitlab") -> read any supported format, write vitlab or HF
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitlabError
from ..io import write_json

log = logging.getLogger(__name__)

TARGETS = ("vitlab", "hf")


def save_hf(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` as a directory `transformers.AutoModel*.from_pretrained` loads (safetensors, on-disk names)."""
    from ..checkpoint import save_weights
    from .hf import CONFIG, PREPROCESSOR, hf_architecture_for

    arch = hf_architecture_for(model)
    config, weights, preprocessor = arch.write(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(weights, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(directory / CONFIG, {**config, "torch_dtype": "float32"})
    if preprocessor:
        write_json(directory / PREPROCESSOR, preprocessor)
    return directory


def convert_checkpoint(src: str | Path, dst: str | Path, *, to: str = "vitlab", model: str | None = None,
                       num_classes: int | None = None, img_size: int | None = None,
                       trust_pickle: bool = False) -> nn.Module:
    """Read `src` (format detected), adapt it (num_classes / img_size), write `dst` as a vitlab or HF directory.

    Returns the converted model (eval mode). The written files are always safetensors, whatever `src` was.
    """
    from ..checkpoint import load_model, save_model

    if to not in TARGETS:
        raise VitlabError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if Path(dst).resolve() == Path(src).resolve():
        raise VitlabError(f"{dst}: the destination is the source")
    net = load_model(src, name=model, num_classes=num_classes, img_size=img_size, trust_pickle=trust_pickle)
    meta: dict[str, Any] = getattr(net, "vitlab_meta", {})
    if to == "hf":
        save_hf(net, dst)
    else:
        extra = {k: v for k, v in meta.items() if k in ("source_format",)}
        save_model(net, dst, classes=meta.get("classes"), **extra)
    log.debug("wrote %s (%s) from %s", dst, to, src)
    return net
