"""ImageFolder: root/<class>/**/<image>, or root/train/<class>/... with root/val/ (or root/test/) beside it.

Classes are the sorted names of class folders holding at least one image. Without a val folder the files are split
by a stratified, seeded train_test_split. Small sets are decoded once into memory (corrupt files dropped and listed
in `skipped`); sets whose uint8 tensor would exceed cache_bytes are decoded lazily.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import VitlabError
from .decode import IMAGE_EXTENSIONS, list_image_files, load_image
from .imageset import DataBundle, ImageSet

logger = logging.getLogger(__name__)

_VAL_DIRS = ("val", "test")


def build_imagefolder(root: Path, image_size: int, *, val_fraction: float, seed: int, cache_bytes: int,
                      name: str) -> DataBundle:
    split_dirs = _split_dirs(root)
    if split_dirs is not None:
        train_dir, val_dir = split_dirs
        train_files, val_files = _scan(train_dir), _scan(val_dir)
        classes = sorted(set(train_files) | set(val_files))
        if not train_files:
            raise VitlabError(f"no images in class folders under {train_dir} (expected {train_dir}/<class>/<image>, "
                              f"extensions {' '.join(IMAGE_EXTENSIONS)})")
        if not val_files:
            raise VitlabError(f"no images in class folders under {val_dir} (expected {val_dir}/<class>/<image>)")
        missing = sorted(set(val_files) - set(train_files))
        if missing:
            logger.warning("classes with val images but no train images in %s: %s", root, ", ".join(missing))
        train_items = _flatten(train_files, classes)
        val_items = _flatten(val_files, classes)
    else:
        files = _scan(root)
        if not files:
            raise VitlabError(f"no images found in {root}: expected class subfolders with images "
                              f"(<root>/<class>/<image>, or <root>/train/ and <root>/val/), a CIFAR-10/100 python "
                              f"folder, or MNIST idx files")
        classes = sorted(files)
        train_items, val_items = _split(_flatten(files, classes), val_fraction, seed, root)
    estimated_bytes = (len(train_items) + len(val_items)) * 3 * image_size * image_size
    in_memory = estimated_bytes <= cache_bytes
    logger.info("%s: %d train / %d val images, %d classes, %s", root, len(train_items), len(val_items), len(classes),
                "decoding into memory" if in_memory else f"lazy decoding ({estimated_bytes / 2**30:.1f} GiB > cache)")
    train_where, val_where = split_dirs if split_dirs is not None else (root, root)
    train = _make_set(train_items, classes, image_size, in_memory, train_where)
    val = _make_set(val_items, classes, image_size, in_memory, val_where)
    return DataBundle(train=train, val=val, classes=classes, name=name,
                      source_size=source_sizes([path for path, _ in train_items + val_items]))


def source_sizes(paths: list[str], sample: int = 64) -> str | None:
    """The images' own size as "WxH", or "from WxH to WxH" when they differ, read from the headers of up to
    `sample` files spread over the list (PIL reads no pixels for .size). None when none could be read."""
    from PIL import Image

    sizes = []
    for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int) if paths else []:
        try:
            with Image.open(paths[i]) as img:
                sizes.append(img.size)
        except Exception:   # unreadable: decoding names it later
            continue
    if not sizes:
        return None
    small, large = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    if small == large:
        return f"{small[0]}x{small[1]}"
    return f"from {small[0]}x{small[1]} to {large[0]}x{large[1]}"


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    train = root / "train"
    if not train.is_dir():
        return None
    for val_name in _VAL_DIRS:
        if (root / val_name).is_dir():
            return train, root / val_name
    raise VitlabError(f"{root} has a train/ folder but no val/ or test/ folder beside it")


def _class_dirs(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    except OSError:
        return []


def _scan(folder: Path) -> dict[str, list[str]]:
    """{class name: sorted image paths} for class folders that hold at least one image."""
    found = {}
    for class_dir in _class_dirs(folder):
        files = list_image_files(class_dir)
        if files:
            found[class_dir.name] = [str(f) for f in files]
        else:
            logger.warning("class folder %s has no images; ignored", class_dir)
    return found


def _flatten(files: dict[str, list[str]], classes: list[str]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    return [(path, index[c]) for c in sorted(files) for path in files[c]]


def _split(items: list[tuple[str, int]], val_fraction: float, seed: int,
           root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise VitlabError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(items) < 2:
        raise VitlabError(f"{root} has only {len(items)} image; need at least 2 to split into train and val")
    labels = np.array([label for _, label in items])
    indices = np.arange(len(items))
    stratify = labels if np.bincount(labels).min() >= 2 else None
    try:
        train_idx, val_idx = train_test_split(indices, test_size=val_fraction, stratify=stratify, random_state=seed)
    except ValueError:  # e.g. fewer val slots than classes: stratification is impossible, a plain split is not
        train_idx, val_idx = train_test_split(indices, test_size=val_fraction, random_state=seed)
    return [items[i] for i in train_idx], [items[i] for i in val_idx]


def _make_set(items: list[tuple[str, int]], classes: list[str], image_size: int, in_memory: bool,
              where: Path) -> ImageSet:
    paths = [p for p, _ in items]
    labels = [label for _, label in items]
    if in_memory:
        return _decode_all(paths, labels, classes, image_size, where)
    return _lazy_set(paths, labels, classes, image_size, where)


def _try_load(path: str, image_size: int) -> torch.Tensor | VitlabError:
    try:
        return load_image(path, image_size)
    except VitlabError as e:
        return e


def _decode_all(paths: list[str], labels: list[int], classes: list[str], image_size: int, where: Path) -> ImageSet:
    # PIL releases the GIL while decoding and resizing, so threads give a real speed-up without pickling anything
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: _try_load(p, image_size), paths, chunksize=16))
    kept = [i for i, r in enumerate(results) if not isinstance(r, VitlabError)]
    skipped = []
    for path, result in zip(paths, results):
        if isinstance(result, VitlabError):
            logger.warning("%s; skipped", result)
            skipped.append(path)
    if paths and not kept:
        raise VitlabError(f"none of the {len(paths)} images under {where} could be decoded (first: {results[0]})")
    images = torch.stack([results[i] for i in kept]) if kept else torch.empty(0, 3, image_size, image_size,
                                                                              dtype=torch.uint8)
    return ImageSet(classes, [labels[i] for i in kept], image_size, images=images, skipped=skipped)


def _lazy_set(paths: list[str], labels: list[int], classes: list[str], image_size: int, where: Path) -> ImageSet:
    """Decode files in order until one works, so a set that is wholly corrupt fails now, not mid-training."""
    bad = []
    for path in paths:
        result = _try_load(path, image_size)
        if not isinstance(result, VitlabError):
            break
        logger.warning("%s; skipped", result)
        bad.append(path)
    if paths and len(bad) == len(paths):
        raise VitlabError(f"none of the {len(paths)} images under {where} could be decoded")
    # the bad files are a prefix of paths: the scan stopped at the first good one
    return ImageSet(classes, labels[len(bad):], image_size, files=paths[len(bad):], skipped=bad)
