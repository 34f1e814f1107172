"""The two files of a vitlab checkpoint directory: config.json (model name + arguments) and model.safetensors.

Reading and writing them needs nothing of vitlab but errors and io, so the format readers (vitlab.convert) and
checkpoint loading (vitlab.checkpoint, which re-exports these names) both build on this module.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import VitlabError
from .io import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def save_weights(state_dict: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous, de-aliased copies, so tied tensors save too)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A safetensors file as a state dict; a missing or corrupt file raises VitlabError naming it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise VitlabError(f"{path}: no such file") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise VitlabError(f"{path}: cannot read safetensors ({e})") from None


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory; a missing or unparsable file raises VitlabError naming it."""
    path = Path(directory) / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise VitlabError(f"{directory}: not a checkpoint directory (no {CONFIG_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitlabError(f"{path}: not valid JSON ({e})") from None
    return cfg


def is_vitlab_dir(path: str | Path) -> bool:
    """True for a directory holding both files, whose config.json says "format": "vitlab"."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        return False
    try:
        return json.loads((path / CONFIG_NAME).read_text()).get("format") == "vitlab"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
