"""Shape-texture cue-conflict images (Geirhos et al., ICLR 2019, at toy scale): a shape filled with a texture.

Class k pairs shape SHAPE_CLASSES[k] (drawn by data.shapes) with texture TEXTURES[k], so in the training images
("content": shape k filled with texture k) both cues give the label. The test sets pull them apart:
  conflict   shape i filled with texture j != i (every ordered pair equally often)
  texture    texture j filling the whole frame: no shape at all (Geirhos' "texture image")
  shape      shape i as a flat-coloured silhouette: no texture (the "content" without its texture)
Textures are binary patterns in two random colours that stand off the background, so neither colour nor a
missing edge gives the class away; every texture is mirror-symmetric (a horizontal flip keeps the class).
Everything is drawn from the numpy Generator passed in: same seed, identical bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .shapes import SHAPE_CLASSES, _backgrounds, _contrasting_colours, _shape_mask

TEXTURES = ["hstripes", "vstripes", "checker", "dots", "blobs", "grain"]   # TEXTURES[k] goes with SHAPE_CLASSES[k]
KINDS = ("content", "conflict", "texture", "shape")
MAX_CLASSES = len(TEXTURES)


@dataclass
class CueImages:
    """images uint8 (n, 3, S, S); shape and texture labels int64 (n,), -1 where that cue is absent."""
    images: Tensor
    shape: Tensor
    texture: Tensor

    def __len__(self) -> int:
        return len(self.images)


def class_names(num_classes: int) -> list[str]:
    """'circle-hstripes', ...: the training classes, shape and texture of the same index."""
    check_num_classes(num_classes)
    return [f"{s}-{t}" for s, t in zip(SHAPE_CLASSES[:num_classes], TEXTURES[:num_classes])]


def check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"cue-conflict data has 2 to {MAX_CLASSES} classes, got {num_classes}")


def generate(kind: str, per_class: int, num_classes: int, image_size: int, rng: np.random.Generator) -> CueImages:
    """per_class images per class (content, texture, shape) or per ordered pair i != j (conflict), shuffled."""
    check_num_classes(num_classes)
    k = np.arange(num_classes)
    if kind == "conflict":
        i, j = np.meshgrid(k, k, indexing="ij")
        pairs = np.stack([i[i != j], j[i != j]], 1)                         # (k(k-1), 2) shape, texture
    elif kind in ("content", "texture", "shape"):
        pairs = np.stack([k, k], 1)
    else:
        raise ValueError(f"unknown cue image kind {kind!r}; choose from {', '.join(KINDS)}")
    pairs = rng.permutation(np.repeat(pairs, per_class, axis=0))
    shapes = None if kind == "texture" else pairs[:, 0]
    textures = None if kind == "shape" else pairs[:, 1]
    images = draw(shapes, textures, image_size, rng)
    missing = torch.full((len(pairs),), -1, dtype=torch.int64)
    return CueImages(images, missing if shapes is None else torch.from_numpy(shapes.astype(np.int64)),
                     missing if textures is None else torch.from_numpy(textures.astype(np.int64)))


def draw(shapes: np.ndarray | None, textures: np.ndarray | None, image_size: int,
         rng: np.random.Generator) -> Tensor:
    """uint8 (n, 3, S, S): shape shapes[i] filled with texture textures[i] on a smooth background.

    shapes None: the texture fills the frame; textures None: a silhouette in one flat colour."""
    S = image_size
    n = len(shapes if shapes is not None else textures)
    background, base = _backgrounds(n, S, rng)                              # (n, S, S, 3), (n, 3)
    first = _contrasting_colours(base, rng)                                 # (n, 3) both stand off the background
    second = _second_colours(base, first, rng)
    if textures is None:
        fill = np.broadcast_to(first[:, None, None, :], (n, S, S, 3)).astype(np.float32)
    else:
        on = np.stack([texture_pattern(TEXTURES[t], S, rng) for t in textures])[..., None]   # (n, S, S, 1)
        fill = (first[:, None, None, :] * on + second[:, None, None, :] * (1 - on)).astype(np.float32)
    if shapes is None:
        images = fill
    else:
        radius = rng.uniform(0.28, 0.42, n) * S            # large enough to hold several periods of a texture
        cx, cy = rng.uniform(radius, S - radius), rng.uniform(radius, S - radius)
        angle = rng.uniform(0, 2 * math.pi, n)
        alpha = np.stack([_shape_mask(SHAPE_CLASSES[s], S, cx[i], cy[i], radius[i], angle[i])
                          for i, s in enumerate(shapes)])[..., None]          # (n, S, S, 1) coverage
        images = background * (1 - alpha) + fill * alpha
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()        # (n, 3, S, S)


def texture_pattern(name: str, S: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S) float in {0, 1}: one draw of a texture (random phase, period jittered); periods scale with S / 32."""
    u = S / 32
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    if name in ("hstripes", "vstripes"):
        period = max(2.0, rng.uniform(4.0, 6.0) * u)
        coord = y if name == "hstripes" else x
        on = ((coord + rng.uniform(0, period)) / period) % 1 < 0.5
    elif name == "checker":
        cell = max(1.0, rng.uniform(2.5, 3.5) * u)
        ox, oy = rng.uniform(0, 2 * cell, 2)
        on = (np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2 == 0
    elif name == "dots":
        period = max(3.0, rng.uniform(5.0, 7.0) * u)
        ox, oy = rng.uniform(0, period, 2)
        dx, dy = (x + ox) % period - period / 2, (y + oy) % period - period / 2
        on = dx * dx + dy * dy < (0.3 * period) ** 2
    elif name == "blobs":                                  # low-frequency noise: blobs about S/4 across
        coarse = torch.from_numpy(rng.standard_normal((1, 1, 5, 5)).astype(np.float32))
        on = F.interpolate(coarse, size=(S, S), mode="bicubic", align_corners=False)[0, 0].numpy() > 0
    elif name == "grain":                                  # white noise: every pixel on or off
        on = rng.random((S, S)) < 0.5
    else:
        raise ValueError(f"unknown texture {name}")
    return on.astype(np.float32)


def _second_colours(base: np.ndarray, first: np.ndarray, rng: np.random.Generator,
                    min_distance: float = 100.0) -> np.ndarray:
    """A second colour per image, off the background and off the first colour (redrawn; a few may stay close)."""
    second = _contrasting_colours(base, rng)
    for _ in range(32):
        close = np.linalg.norm(second - first, axis=1) < min_distance
        if not close.any():
            break
        second[close] = _contrasting_colours(base[close], rng)
    return second
