"""Segmentation data: SegmentationSet (one split in memory), SegmentationBundle (train + val), batches, spec builder.

    bundle = build_segmentation_data("scenes", 64)                     # 2-D; or "volumes" (3-D), or a folder
    for images, masks in segmentation_batches(bundle.train, 32, shuffle=True, epoch=epoch):
        ...   # images uint8 (B, C, *spatial); masks int64 (B, *spatial): class index, IGNORE_INDEX = not scored

Specs:
  scenes    generated 2-D images (vitlab.data.scenes): 0 background, 1..6 the SHAPE_CLASSES, as rendered (a later
            object covers an earlier one).
  volumes   generated 3-D volumes (vitlab.data.volumes): 1 channel, 0 background, 1 ellipsoid, 2 box, 3 tube.
  a folder  2-D: images/ + masks/ (or train/{images,masks} + val/{images,masks}); a mask is the PNG of the same
            stem, an index PNG (mode L/I) or a palette PNG (VOC: the palette index is the class, 255 = ignore).
            3-D: imagesTr/ + labelsTr/ (the Medical Segmentation Decathlon layout) or images/ + labels/, files
            .npy, .nii or .nii.gz (nibabel), the label file of the same name. A volume array is (D, H, W) or,
            with channels, (C, D, H, W) for .npy and (X, Y, Z, C) for NIfTI.
            Class names: classes.txt (one per line, background first) or a Decathlon dataset.json "labels";
            without either, class_0..class_K up to the largest label found.
Every image is resized to the model's side S (2-D: S x S, bilinear; 3-D: S^3, trilinear) and its mask with it
(nearest). A 3-D volume's intensities are scaled to 0..255 between its 0.5th and 99.5th percentiles (uint8, as
images), so the model's mean/std normalise it like any image. A mask whose size differs from its image, a label
above the class count (other than IGNORE_INDEX), an image without a mask or an unreadable file is skipped with a
warning naming it and counted (`skipped`); a folder with no pairs is one VitlabError line.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from .loader import epoch_batches

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".npy")
IMAGE_DIRS_3D = (("imagesTr", "labelsTr"), ("images", "labels"))


@dataclass
class SegmentationSet:
    """One split in memory. images (N, C, *spatial) uint8; masks (N, *spatial) uint8 class indices (IGNORE_INDEX
    = unlabelled). spatial is (S, S) for images, (S, S, S) for volumes."""
    images: Tensor
    masks: Tensor
    classes: list[str]
    file_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim not in (4, 5):
            raise ValueError(f"SegmentationSet images must be uint8 (N, C, *spatial), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.masks.shape != (self.images.shape[0], *self.images.shape[2:]):
            raise ValueError(f"masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


@dataclass
class SegmentationBundle:
    train: SegmentationSet
    val: SegmentationSet
    classes: list[str]
    name: str
    source_size: str | None = None
    mirror_safe: bool = True

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.val.skipped

    @property
    def spatial_dims(self) -> int:
        return self.train.spatial_dims

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])


def segmentation_batches(dataset: SegmentationSet, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                         drop_last: bool = False, rank: int = 0,
                         world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images uint8 (B, C, *spatial), masks int64 (B, *spatial)) for this rank's share of one epoch, in
    vitlab.data.loader.epoch_indices' order."""
    for idx in epoch_batches(len(dataset), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last,
                             rank=rank, world_size=world_size):
        yield dataset.images[idx], dataset.masks[idx].long()


_EXPECTED = ("expected 'scenes', 'volumes', a folder of images/ + masks/ (PNG masks), or of imagesTr/ + labelsTr/ "
             "or images/ + labels/ (.npy / .nii / .nii.gz volumes)")

SCENES_TRAIN, VOLUMES_TRAIN = 2000, 500     # training images / volumes of the generated specs


def build_segmentation_data(spec: str, image_size: int, *, spatial_dims: int = 2, seed: int = 0,
                            val_fraction: float = 0.2, scenes_train: int = SCENES_TRAIN, scenes_val: int = 500,
                            volumes_train: int = VOLUMES_TRAIN, volumes_val: int = 100) -> SegmentationBundle:
    """A segmentation data spec -> SegmentationBundle at side image_size. Raises VitlabError on a bad spec.
    spatial_dims is the model's (2 or 3): a 2-D model given volumes (or the reverse) is refused in one line."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise VitlabError(f"image size must be a positive integer, got {image_size!r}")
    if spec == "scenes":
        bundle = _scenes(image_size, seed, scenes_train, scenes_val)
    elif spec == "volumes":
        bundle = _volumes(image_size, seed, volumes_train, volumes_val)
    else:
        bundle = _folder(spec, image_size, seed, val_fraction)
    if bundle.spatial_dims != spatial_dims:
        kinds = {2: "2-D images", 3: "3-D volumes"}
        raise VitlabError(f"{spec} holds {kinds[bundle.spatial_dims]} but the model segments "
                          f"{kinds.get(spatial_dims, f'{spatial_dims}-D inputs')}")
    return bundle


def _scenes(size: int, seed: int, n_train: int, n_val: int) -> SegmentationBundle:
    from .scenes import build_scenes
    from .shapes import SHAPE_CLASSES

    classes = ["background", *SHAPE_CLASSES]
    train, val = build_scenes(size, seed=seed, n_train=n_train, n_val=n_val)
    sets = [SegmentationSet(s.images, s.semantic_masks, classes, s.file_names) for s in (train, val)]
    return SegmentationBundle(*sets, classes=classes, name="scenes", source_size=f"{size}x{size}")


def _volumes(size: int, seed: int, n_train: int, n_val: int) -> SegmentationBundle:
    from .volumes import VOLUME_CLASSES, build_volumes

    classes = list(VOLUME_CLASSES)
    train, val = build_volumes(size, seed=seed, n_train=n_train, n_val=n_val)
    sets = [SegmentationSet(s.images, s.masks, classes, [f"{i + 1:06d}.npy" for i in range(len(s))])
            for s in (train, val)]
    return SegmentationBundle(*sets, classes=classes, name="volumes", source_size=f"{size}x{size}x{size}")


# --- folders -------------------------------------------------------------------------------------------------------


def _folder(spec: str, size: int, seed: int, val_fraction: float) -> SegmentationBundle:
    root = Path(spec).expanduser()
    if not root.exists():
        raise VitlabError(f"data path {spec} does not exist; {_EXPECTED}")
    if not root.is_dir():
        raise VitlabError(f"data path {spec} is a file, not a directory; {_EXPECTED}")
    layout = find_segmentation_layout(root)
    if layout is None:
        raise VitlabError(f"{spec} is not a segmentation folder; {_EXPECTED}")
    dims, splits = layout
    pairs = {name: _pairs(img_dir, mask_dir, dims) for name, (img_dir, mask_dir) in splits.items()}
    unpaired = [p for _, missing in pairs.values() for p in missing]
    for path in unpaired:
        log.warning("%s has no mask of the same name; skipped", path)
    if not any(found for found, _ in pairs.values()):
        where = " and ".join(f"{i.name}/ + {m.name}/" for i, m in splits.values())
        raise VitlabError(f"{spec}: no image/mask pairs of the same name in {where}")
    classes = _class_names(root)
    read = _read_pair_2d if dims == 2 else _read_pair_3d
    decoded = {name: [read(i, m, size) for i, m in found] for name, (found, _) in pairs.items()}
    if classes is None:
        largest = max((int(r[1][r[1] != IGNORE_INDEX].max(initial=0)) for rs in decoded.values() for r in rs
                       if not isinstance(r, str)), default=0)
        classes = [f"class_{k}" for k in range(max(largest + 1, 2))]
    if "val" not in decoded:
        decoded, pairs = _split(decoded["all"], pairs["all"], val_fraction, seed, spec)
    sets = {}
    for name in ("train", "val"):
        sets[name] = _make_set(decoded[name], pairs[name][0], classes, unpaired if name == "train" else [], spec)
    return SegmentationBundle(sets["train"], sets["val"], classes=classes, name=str(spec))


def find_segmentation_layout(root: Path) -> tuple[int, dict[str, tuple[Path, Path]]] | None:
    """(spatial dims, {split: (image dir, mask dir)}) of a segmentation folder, or None. Splits are "train" and
    "val" when root/train and root/val each hold the pair of folders, else "all"."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        inner = [find_segmentation_layout(root / s) for s in ("train", "val")]
        if all(inner) and inner[0][0] == inner[1][0]:
            return inner[0][0], {"train": inner[0][1]["all"], "val": inner[1][1]["all"]}
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return 2, {"all": (root / "images", root / "masks")}
    for images, labels in IMAGE_DIRS_3D:
        if (root / images).is_dir() and (root / labels).is_dir():
            return 3, {"all": (root / images, root / labels)}
    return None


def _stem(path: Path) -> str:
    name = path.name
    for ext in VOLUME_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _pairs(image_dir: Path, mask_dir: Path, dims: int) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """([(image, mask)] of the same stem, [images without a mask]), sorted by name. Decathlon's macOS "._" files
    are left out."""
    from .decode import is_image_file

    wanted = (lambda p: is_image_file(p)) if dims == 2 else (lambda p: p.name.lower().endswith(VOLUME_EXTENSIONS))
    masks = {_stem(p): p for p in sorted(mask_dir.iterdir()) if p.is_file() and wanted(p)
             and not p.name.startswith("._")}
    found, missing = [], []
    for image in sorted(image_dir.iterdir()):
        if not image.is_file() or not wanted(image) or image.name.startswith("._"):
            continue
        stem = _stem(image)
        if dims == 3 and stem.endswith("_0000"):       # nnU-Net's channel suffix: case_0000.nii.gz <-> case.nii.gz
            stem = stem[:-5] if stem[:-5] in masks else stem
        (found.append((image, masks[stem])) if stem in masks else missing.append(image))
    return found, missing


def _class_names(root: Path) -> list[str] | None:
    text = root / "classes.txt"
    if text.is_file():
        names = [line.strip() for line in text.read_text().splitlines() if line.strip()]
        if len(names) < 2:
            raise VitlabError(f"{text} names {len(names)} class; need background and at least one more")
        return names
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            labels = json.loads(meta.read_text()).get("labels")
        except (json.JSONDecodeError, AttributeError) as e:
            raise VitlabError(f"{meta} is not a readable dataset.json: {e}") from None
        if isinstance(labels, dict) and labels:
            try:   # Decathlon: {"0": "background", "1": "edema"}; nnU-Net v2: {"background": 0, "edema": 1}
                by_index = {int(k): str(v) for k, v in labels.items()}
            except (TypeError, ValueError):
                by_index = {int(v): str(k) for k, v in labels.items()}
            return [by_index.get(k, f"class_{k}") for k in range(max(by_index) + 1)]
    return None


def read_mask_png(path: Path) -> np.ndarray:
    """An index or palette PNG -> (H, W) int64 class indices (a palette PNG's indices are its classes, as VOC's).
    An RGB(A) mask is refused: colours would need a colour -> class table."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                raise VitlabError(f"mask {path} is {img.mode}; expected an index (L) or palette (P) PNG")
            return np.asarray(img, dtype=np.int64)
    except VitlabError:
        raise
    except Exception as e:
        raise VitlabError(f"cannot decode mask {path}: {' '.join(str(e).split()) or type(e).__name__}") from e


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npy or NIfTI file -> (array as stored, the NIfTI affine or None). Raises VitlabError when unreadable."""
    try:
        if path.name.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False), None
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    except Exception as e:
        raise VitlabError(f"cannot read {path}: {' '.join(str(e).split()) or type(e).__name__}") from e


def _read_pair_2d(image_path: Path, mask_path: Path, size: int) -> tuple[Tensor, np.ndarray] | str:
    """(image uint8 (3, S, S), mask (S, S) int64) or the reason it is skipped."""
    from PIL import Image

    from .decode import decode_image

    try:
        img = decode_image(image_path)
        mask = read_mask_png(mask_path)
    except VitlabError as e:
        return str(e)
    if mask.shape != (img.height, img.width):
        return (f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{img.width}x{img.height}")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return image, _resize_mask(mask, (size, size))


def _read_pair_3d(image_path: Path, mask_path: Path, size: int) -> tuple[Tensor, np.ndarray] | str:
    """(image uint8 (C, S, S, S), mask (S, S, S) int64) or the reason it is skipped."""
    try:
        image, _ = read_volume(image_path)
        label, _ = read_volume(mask_path)
    except VitlabError as e:
        return str(e)
    nifti = not image_path.name.lower().endswith(".npy")
    if image.ndim == 4:
        image = np.moveaxis(image, -1, 0) if nifti else image        # (C, D, H, W)
    elif image.ndim == 3:
        image = image[None]
    else:
        return f"{image_path} is a {image.ndim}-D array; expected a 3-D volume (with or without channels)"
    if label.ndim != 3 or label.shape != image.shape[1:]:
        return (f"label {mask_path} is {'x'.join(map(str, label.shape))} but its volume {image_path} is "
                f"{'x'.join(map(str, image.shape[1:]))}")
    if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)) or label.min() < 0:
        return f"label {mask_path} holds values that are not class indices"
    return to_uint8_volume(image, size), _resize_mask(label.astype(np.int64), (size,) * 3)


def to_uint8_volume(image: np.ndarray, size: int | None = None) -> Tensor:
    """(C, D, H, W) any dtype -> uint8 (C, S, S, S): each channel scaled 0..255 between its 0.5th and 99.5th
    percentiles (clipped), then resized trilinearly to S^3 (not when size is None)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    flat = x.flatten(1)
    lo = torch.quantile(flat, 0.005, dim=1).view(-1, 1, 1, 1) if flat.shape[1] <= 2**24 else flat.amin(1)
    hi = torch.quantile(flat, 0.995, dim=1).view(-1, 1, 1, 1) if flat.shape[1] <= 2**24 else flat.amax(1)
    x = ((x - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    if size is not None and tuple(x.shape[1:]) != (size,) * 3:
        x = F.interpolate(x[None], size=(size,) * 3, mode="trilinear", align_corners=False)[0]
    return (x * 255).round().to(torch.uint8)


def _resize_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of an integer mask to shape (exact when it already has it)."""
    if mask.shape == shape:
        return mask
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="nearest")[0, 0].numpy().astype(np.int64)


def _split(decoded: list, pairs: tuple[list, list], val_fraction: float, seed: int, spec: str) -> tuple[dict, dict]:
    found = pairs[0]
    if len(found) < 2:
        raise VitlabError(f"{spec} has only {len(found)} image/mask pair; need at least 2 to split into train "
                          "and val")
    n_val = min(len(found) - 1, max(1, round(len(found) * val_fraction)))
    val_idx = set(np.random.default_rng(seed).permutation(len(found))[:n_val].tolist())
    pick = {"train": [i for i in range(len(found)) if i not in val_idx], "val": sorted(val_idx)}
    return ({k: [decoded[i] for i in v] for k, v in pick.items()},
            {k: ([found[i] for i in v], []) for k, v in pick.items()})


def _make_set(decoded: Sequence, pairs: Sequence[tuple[Path, Path]], classes: list[str], unpaired: list[Path],
              spec: str) -> SegmentationSet:
    images, masks, names, skipped = [], [], [], [str(p) for p in unpaired]
    for (image_path, mask_path), result in zip(pairs, decoded):
        if isinstance(result, str):
            log.warning("%s; skipped", result)
            skipped.append(str(image_path))
            continue
        image, mask = result
        bad = (mask >= len(classes)) & (mask != IGNORE_INDEX)
        if bad.any():
            log.warning("mask %s has label %d but there are %d classes (%s); skipped", mask_path,
                        int(mask[bad].max()), len(classes), ", ".join(classes))
            skipped.append(str(image_path))
            continue
        images.append(image)
        masks.append(torch.from_numpy(mask.astype(np.uint8)))
        names.append(image_path.name)
    if not images:
        raise VitlabError(f"{spec}: none of the {len(pairs)} image/mask pairs could be used (see the warnings)")
    channels = {int(im.shape[0]) for im in images}
    if len(channels) > 1:
        raise VitlabError(f"{spec}: the volumes have different channel counts ({sorted(channels)})")
    return SegmentationSet(torch.stack(images), torch.stack(masks), classes, names, skipped)
