"""Masks as pictures: a palette PNG (VOC's colour map, 255 = ignore in white), an overlay on the image, and a
montage of a volume's slices with its overlay."""
from __future__ import annotations

import numpy as np
from PIL import Image
from torch import Tensor


def voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: PASCAL VOC's colour map (the bits of the index spread over R, G, B); 0 is black."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    palette[255] = (255, 255, 255)
    return palette


PALETTE = voc_palette()


def mask_png(mask: Tensor | np.ndarray) -> Image.Image:
    """(H, W) class indices -> a palette ("P") PNG image whose pixel values are the classes."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(PALETTE.flatten().tolist())
    return img


def overlay(image: Tensor | np.ndarray, mask: Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image (3, H, W) or (H, W) uint8, mask (H, W) -> (H, W, 3) uint8 with each non-background pixel blended with
    its class colour."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2 or img.shape[-1] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=-1)
    m = np.asarray(mask, dtype=np.int64)
    colour = PALETTE[m.clip(0, 255)].astype(np.float32)
    fg = (m > 0)[..., None]
    out = np.where(fg, (1 - alpha) * img.astype(np.float32) + alpha * colour, img.astype(np.float32))
    return out.round().astype(np.uint8)


def montage(volume: Tensor | np.ndarray, mask: Tensor | np.ndarray, slices: int = 8, alpha: float = 0.5,
            scale: int = 4) -> Image.Image:
    """volume (D, H, W) uint8 and mask (D, H, W): `slices` evenly spaced axial slices with the overlay, in a row
    (nearest-upscaled `scale` times)."""
    v, m = np.asarray(volume), np.asarray(mask)
    idx = np.linspace(0, v.shape[0] - 1, min(slices, v.shape[0])).round().astype(int)
    tiles = [overlay(v[i], m[i], alpha) for i in idx]
    row = np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], axis=1)
    img = Image.fromarray(row)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)
