"""Small image files for the data tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (12, 10), colour: tuple[int, int, int] = (200, 30, 60),
                fmt: str | None = None) -> Path:
    """A solid-colour RGB image with a little gradient (so resizing is visible), saved by extension or fmt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    a = np.empty((h, w, 3), np.uint8)
    a[:] = colour
    a[..., 0] = (a[..., 0].astype(int) + np.arange(w)[None, :] * 3).clip(0, 255)
    Image.fromarray(a).save(path, format=fmt)
    return path
