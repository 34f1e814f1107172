"""Segmentation prediction on files: sliding-window inference (MONAI) for inputs larger than the training size,
a plain forward (after resizing to the training size) otherwise, and the PNG / array outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import VitlabError
from .loss import seg_logits


@torch.no_grad()
def sliding_window_logits(model: nn.Module, x: Tensor, roi: int, overlap: float = 0.5,
                          batch_size: int = 4) -> Tensor:
    """logits (B, num_classes, *spatial) of normalised inputs x (B, C, *spatial) whose every side is >= roi:
    MONAI's sliding_window_inference over roi-sided windows overlapping by `overlap`, blended with Gaussian
    weights (UNETR's evaluation). Equal to one forward where the model is translation-equivariant."""
    from monai.inferers import sliding_window_inference

    n = x.ndim - 2
    return sliding_window_inference(x, (roi,) * n, batch_size, lambda w: seg_logits(model(w)).float(),
                                    overlap=overlap, mode="gaussian")


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, roi: int, overlap: float = 0.5) -> Tensor:
    """x (1, C, *spatial) normalised -> logits (1, K, *spatial) at x's size: sliding windows when every side is
    at least roi and one is larger; else x resized to roi, one forward, logits resized back."""
    spatial = tuple(x.shape[2:])
    if min(spatial) >= roi and max(spatial) > roi:
        return sliding_window_logits(model, x, roi, overlap)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    small = x if spatial == (roi,) * len(spatial) else F.interpolate(x, size=(roi,) * len(spatial), mode=mode,
                                                                      align_corners=False)
    logits = seg_logits(model(small)).float()
    return logits if spatial == (roi,) * len(spatial) else F.interpolate(logits, size=spatial, mode=mode,
                                                                         align_corners=False)


def is_volume_file(path: str | Path) -> bool:
    from ...data.segmentation import VOLUME_EXTENSIONS

    return str(path).lower().endswith(VOLUME_EXTENSIONS)


def predict_files(predictor: Any, paths: list[str], out: Path, overlap: float = 0.5) -> list[str]:
    """Write each input's predicted mask and picture under out; one line per input."""
    from ...data.seg_augment import NormalizeND
    from ...data.segmentation import _stem
    from ...io import atomic_path, unique_stems
    from ...runtime import autocast
    from .draw import mask_png, montage, overlay

    model = predictor.model
    dims = int(getattr(model.cfg, "spatial_dims", 2))
    normalize = NormalizeND(tuple(model.cfg.mean), tuple(model.cfg.std)).to(predictor.device)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for path, name in zip(paths, unique_stems([_stem(Path(p)) for p in paths])):
        volume = is_volume_file(path)
        if volume != (dims == 3):
            raise VitlabError(f"{path}: a {'volume' if volume else 'image'} file, but the model segments "
                              f"{'volumes' if dims == 3 else 'images'} (.npy/.nii/.nii.gz for 3-D, image files "
                              "for 2-D)")
        image, affine = _read_volume(path) if volume else (_read_image(path), None)   # uint8 (C, *spatial)
        with torch.no_grad(), autocast(predictor.device, predictor.precision):
            logits = predict_logits(model, normalize(image[None].to(predictor.device)), predictor.image_size,
                                    overlap)
        pred = logits.argmax(1)[0].to(torch.uint8).cpu()                               # (*spatial)
        written = []
        if volume:
            written.append(_write_volume_mask(out, name, pred, affine))
            pic = out / f"{name}_montage.png"
            with atomic_path(pic) as tmp:
                montage(image[0], pred).save(tmp, format="PNG")
            written.append(pic)
        else:
            for pic, img in ((out / f"{name}_mask.png", mask_png(pred)),
                             (out / f"{name}_overlay.png", _image(overlay(image, pred)))):
                with atomic_path(pic) as tmp:
                    img.save(tmp, format="PNG")
                written.append(pic)
        counts = torch.bincount(pred.flatten().long(), minlength=len(predictor.classes))
        found = [f"{predictor.classes[k]} {100 * float(c) / pred.numel():.1f}%" for k, c in enumerate(counts)
                 if c > 0 and k > 0 and k < len(predictor.classes)]
        lines.append(f"{path}: {', '.join(found) or 'background only'} -> {', '.join(map(str, written))}")
    return lines


def _image(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)


def _read_image(path: str) -> Tensor:
    from ...data.decode import decode_image

    img = decode_image(path)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()   # (3, H, W)


def _read_volume(path: str) -> tuple[Tensor, Any]:
    from ...data.segmentation import read_volume, to_uint8_volume

    array, affine = read_volume(Path(path))
    if array.ndim == 4 and affine is not None:
        array = np.moveaxis(array, -1, 0)
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise VitlabError(f"{path} is not a 3-D volume (shape {'x'.join(map(str, array.shape))})")
    return to_uint8_volume(array), affine


def _write_volume_mask(out: Path, name: str, pred: Tensor, affine: Any) -> Path:
    from ...io import atomic_path

    if affine is None:
        path = out / f"{name}_mask.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, pred.numpy())
        return path
    import nibabel as nib

    path = out / f"{name}_mask.nii.gz"
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(pred.numpy(), affine), str(tmp.with_suffix(".nii.gz")))
        tmp.with_suffix(".nii.gz").replace(tmp)
    return path
