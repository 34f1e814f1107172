"""Labelled boxes on an image (predict's PNG, the training report's predicted-vs-ground-truth figure).

Scenes images are 64 px: a readable label does not fit on that, so an image whose shorter side is under
`min_size` is first upscaled by a whole factor (nearest neighbour, the pixels stay visible as they are) and the boxes
with it; the returned picture is the upscaled one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ...errors import VitlabError

# matplotlib's tab10, a palette chosen to tell classes apart; class i gets PALETTE[i % 10]
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def class_color(label: int) -> tuple[int, int, int]:
    """The colour of class index `label` in every detection picture."""
    return PALETTE[label % len(PALETTE)]


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor | Sequence[int], scores: Tensor | None,
                    classes: Sequence[str], color: tuple[int, int, int] | None = None, min_size: int = 256,
                    width: int = 2) -> Image.Image:
    """image: uint8 (3, H, W); boxes: (k, 4) xyxy in pixels of `image`; labels: (k,) class indices; scores: (k,)
    or None (ground truth: the label is the class name alone); classes: the class names.

    Each box is outlined `width` px wide in `color`, or in its class's colour when color is None, with a label
    "name score" on a filled strip of the same colour at its top-left corner. Returns an RGB image of
    (H * f, W * f), f = ceil(min_size / min(H, W)) when the image is smaller than min_size, else 1.
    """
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise VitlabError(f"draw_detections takes a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
    H, W = image.shape[1:]
    factor = max(1, -(-min_size // min(H, W)))                                   # ceil division
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())                  # (H, W, 3)
    if factor > 1:
        pil = pil.resize((W * factor, H * factor), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    font = _font(max(12, min(pil.size) // 40))             # ~ 1/40 of the picture, >= 12 px
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]
    score_list = scores.tolist() if scores is not None else [None] * len(labels)
    for (x0, y0, x1, y1), label, score in zip(torch.as_tensor(boxes).float().mul(factor).tolist(), labels,
                                              score_list):
        rgb = color if color is not None else class_color(label)
        draw.rectangle([x0, y0, x1, y1], outline=rgb, width=width)
        name = classes[label] if 0 <= label < len(classes) else str(label)
        text = name if score is None else f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 3 if y0 - th - 3 >= 0 else y0 + width          # above the box, or inside at the top
        draw.rectangle([x0, ty, x0 + tw + 3, ty + th + 3], fill=rgb)
        draw.text((x0 + 2 - left, ty + 1 - top), text, fill=_ink(rgb), font=font)
    return pil


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)          # Pillow >= 10.1: a scalable bundled font
    except TypeError:
        return ImageFont.load_default()


def _ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on the label strip."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)
