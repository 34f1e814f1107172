"""A generated dataset for attention pictures: one coloured shape, small and somewhere, on a textured background.

The object covers a minority of the image at a random position, so a model that attends to it shows up clearly in
rollout maps. Everything is drawn from a numpy Generator seeded by (seed, split): same seed, identical bytes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .imageset import DataBundle, ImageSet

SHAPE_CLASSES = ["circle", "square", "triangle", "cross", "ring", "star"]
# the object's radius as a fraction of the image side, drawn uniformly in the range. "small" (the default) spans
# 30-56% of the side, 2-4 patches of 4 px at 32 px; "large" spans 60-90% (5-7 patches), the size at which a micro
# ViT learns the shapes from scratch in a few thousand steps (benchmarks/results/vit_plateau/)
OBJECT_RADII = {"small": (0.15, 0.28), "large": (0.30, 0.45)}
_TRAIN_STREAM, _VAL_STREAM = 0, 1


def build_shapes(image_size: int, *, seed: int = 0, shapes_per_class: int = 500) -> DataBundle:
    """shapes_per_class train images per class; val has a quarter as many, drawn from a different stream."""
    train = generate_shapes(shapes_per_class, image_size, np.random.default_rng([seed % 2**64, _TRAIN_STREAM]))
    val = generate_shapes(max(1, shapes_per_class // 4), image_size,
                          np.random.default_rng([seed % 2**64, _VAL_STREAM]))
    return DataBundle(train=train, val=val, classes=list(SHAPE_CLASSES), name="shapes",
                      source_size=f"{image_size}x{image_size}")   # drawn at the size asked for


def generate_shapes(per_class: int, image_size: int, rng: np.random.Generator,
                    objects: str = "small") -> ImageSet:
    """per_class images of each shape, in a shuffled order, the object's radius in OBJECT_RADII[objects].
    Returns an in-memory ImageSet. The default draws the same bytes as before the option existed."""
    if objects not in OBJECT_RADII:
        raise ValueError(f"objects must be one of {', '.join(OBJECT_RADII)}, got {objects!r}")
    S = image_size
    labels = rng.permutation(np.repeat(np.arange(len(SHAPE_CLASSES)), per_class))
    n = len(labels)
    background, base = _backgrounds(n, S, rng)  # (n, S, S, 3) float, (n, 3) mean colour
    colours = _contrasting_colours(base, rng)  # (n, 3)
    radius = rng.uniform(*OBJECT_RADII[objects], n) * S  # small: 30-56% of the side, clearly localised
    cx = rng.uniform(radius, S - radius)
    cy = rng.uniform(radius, S - radius)
    angle = rng.uniform(0, 2 * math.pi, n)
    masks = np.stack([_shape_mask(SHAPE_CLASSES[k], S, cx[i], cy[i], radius[i], angle[i])
                      for i, k in enumerate(labels)])  # (n, S, S) coverage in 0..1
    alpha = masks[..., None]
    images = background * (1 - alpha) + colours[:, None, None, :].astype(np.float32) * alpha  # (n, S, S, 3)
    np.clip(np.round(images, out=images), 0, 255, out=images)
    images = torch.from_numpy(images.astype(np.uint8)).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S)
    return ImageSet(SHAPE_CLASSES, torch.from_numpy(labels.astype(np.int64)), S, images=images)


def _backgrounds(n: int, S: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random colour fields (a 4x4 grid upsampled) plus fine pixel noise: texture, not a flat fill."""
    base = rng.uniform(0, 255, (n, 3))
    coarse = (base[:, :, None, None] + rng.normal(0, 35, (n, 3, 4, 4))).astype(np.float32)
    smooth = F.interpolate(torch.from_numpy(coarse), size=(S, S), mode="bilinear", align_corners=False).numpy()
    smooth += rng.standard_normal((n, 3, S, S), dtype=np.float32) * 12  # fine grain
    return smooth.transpose(0, 2, 3, 1), base


def _contrasting_colours(base: np.ndarray, rng: np.random.Generator, min_distance: float = 110.0) -> np.ndarray:
    """A random colour per image, redrawn until it stands off the background's mean colour (Euclidean RGB)."""
    colours = rng.uniform(0, 255, base.shape)
    for _ in range(64):
        close = np.linalg.norm(colours - base, axis=1) < min_distance
        if not close.any():
            break
        colours[close] = rng.uniform(0, 255, (int(close.sum()), 3))
    still_close = np.linalg.norm(colours - base, axis=1) < min_distance
    colours[still_close] = 255.0 - base[still_close]  # the opposite corner of the RGB cube is far enough
    return colours


def _shape_mask(shape: str, S: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Coverage (S, S) float in 0..1, drawn at `ss` times the size and box-downsampled (antialiased edges)."""
    ss = 4 if S <= 64 else 2 if S <= 128 else 1
    canvas = Image.new("L", (S * ss, S * ss), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = cx * ss, cy * ss, r * ss

    def polygon(radii: list[float], start: float) -> list[tuple[float, float]]:
        k = len(radii)
        angles = [start + 2 * math.pi * j / k for j in range(len(radii))]
        return [(cx + radii[j] * math.cos(angles[j]), cy + radii[j] * math.sin(angles[j]))
                for j in range(k)]

    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    elif shape == "square":
        draw.polygon(polygon([r] * 4, angle), fill=255)
    elif shape == "triangle":
        draw.polygon(polygon([r] * 3, angle), fill=255)
    elif shape == "star":
        draw.polygon(polygon([r, 0.45 * r] * 5, angle), fill=255)
    elif shape == "cross":
        arm = 0.35 * r  # half width of each bar
        c, s = math.cos(angle), math.sin(angle)
        for dx, dy in ((r, arm), (arm, r)):  # two rotated bars
            corners = [(-dx, -dy), (dx, -dy), (dx, dy), (-dx, dy)]
            draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners], fill=255)
    else:
        raise ValueError(f"unknown shape {shape}")
    if ss > 1:
        canvas = canvas.reduce(ss)  # box filter: the mean over each ss x ss block
    return np.asarray(canvas, dtype=np.float32) / 255.0
