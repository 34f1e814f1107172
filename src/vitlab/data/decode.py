"""Robust image decoding: any file PIL can read, any mode -> RGB uint8; unreadable files raise one clear VitlabError.

Truncated files are errors, not grey bottoms: we never set ImageFile.LOAD_TRUNCATED_IMAGES, and we call .load() so a
JPEG that opens (header fine) but ends early fails here, where it can be named and skipped.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import VitlabError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def decode_image(path_or_bytes: PathOrBytes, *, min_size: int | None = None) -> Image.Image:
    """Decode one image to an RGB PIL image, whatever its mode. Raises VitlabError("cannot decode <name>: <reason>").

    min_size lets a large JPEG decode at a reduced DCT scale that still keeps both sides >= min_size (much faster).
    Transparent pixels are composited over white; 16-bit and float images are scaled to 0..255, not clipped.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        name, source = "<bytes>", io.BytesIO(bytes(path_or_bytes))
    else:
        name, source = str(path_or_bytes), path_or_bytes
    try:
        if not isinstance(source, io.BytesIO) and os.path.getsize(source) == 0:
            raise OSError("empty file")
        with Image.open(source) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft(None, (min_size, min_size))
            img.load()
            img = _exif_upright(img)
            return to_rgb(img)
    except VitlabError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ... on bad data
        reason = " ".join(str(e).split()) or type(e).__name__
        raise VitlabError(f"cannot decode {name}: {reason}") from e


def load_image(path: PathOrBytes, image_size: int) -> Tensor:
    """One image file -> (3, S, S) uint8: robust decode, shorter side resized to S (bilinear, antialiased),
    centre crop."""
    img = decode_image(path, min_size=image_size)
    w, h = img.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)  # PIL's bilinear widens its support: antialiased
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()  # (3, S, S)


def resize_uint8(images: Tensor, image_size: int, chunk: int = 1024) -> Tensor:
    """uint8 (N, C, H, W) -> (N, C, S, S): shorter side to S (bilinear, antialiased), centre crop. No-op at S."""
    N, C, H, W = images.shape
    if H == W == image_size:
        return images
    scale = image_size / min(H, W)
    new_h, new_w = max(image_size, round(H * scale)), max(image_size, round(W * scale))
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    out = torch.empty(N, C, image_size, image_size, dtype=torch.uint8)
    for start in range(0, N, chunk):  # chunks bound the float copy's memory
        x = images[start:start + chunk].float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        x = x[:, :, top:top + image_size, left:left + image_size]
        out[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB with the values a viewer would show."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F: high bit depth, one channel
        return Image.fromarray(_gray_to_uint8(np.asarray(img))).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")  # also applies a palette's or a single colour's transparency key
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, LAB, RGBX, ...


def _gray_to_uint8(a: np.ndarray) -> np.ndarray:
    """One-channel integer or float array -> uint8, scaling by the range its type implies rather than clipping."""
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # I;16 / I;16B / I;16L
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, 257 -> 1
    is_float = a.dtype.kind == "f"
    a = a.astype(np.float64)
    a = np.where(np.isfinite(a), a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if is_float and lo >= 0 and hi <= 1:
        a = a * 255.0  # float image in 0..1
    elif lo >= 0 and hi <= 255:
        pass  # already in 8-bit range
    elif not is_float and lo >= 0 and hi <= 65535:
        a = a / 257.0  # 16-bit data held in 32-bit "I" mode (older PIL, some TIFFs)
    else:
        a = (a - lo) * (255.0 / (hi - lo))  # anything else: min-max
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos); a broken tag is ignored rather than failing the image."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - malformed EXIF raises many kinds of error; the pixels are still good
        return img


def list_image_files(folder: Path) -> list[Path]:
    """Image files under folder (recursive, symlinks followed), in a sorted, deterministic order."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith(".") and is_image_file(f))
    return found
