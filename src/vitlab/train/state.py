"""Training state beside the model checkpoint: optimizer, schedule, EMA, RNG states, step and epoch.

Both files of a run are written atomically (temporary name + rename); both carry the step, so a resume can tell
they belong together. train_state.pt holds only tensors and plain Python values and loads with weights_only=True.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..errors import VitlabError
from ..io import atomic_path

STATE_NAME = "train_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VitlabError(f"{Path(path).parent}: no {STATE_NAME}, cannot resume this run") from None
    except Exception as e:
        raise VitlabError(f"{path}: cannot read training state ({type(e).__name__}: {e})") from None
