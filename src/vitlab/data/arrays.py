"""Datasets that ship as arrays: CIFAR-10/100 (python pickles) and MNIST-style idx files. val = the official test split.

Images are kept at native resolution; they become (N, 3, S, S) uint8 in memory when that fits in cache_bytes,
otherwise each item is resized when it is read.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import VitlabError
from .decode import resize_uint8
from .imageset import DataBundle, ImageSet

# ---------------------------------------------------------------------------------------------------- CIFAR

_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def find_cifar(root: Path) -> tuple[str, Path] | None:
    """("cifar10" | "cifar100", folder) if root is a CIFAR python folder or directly contains one."""
    for folder in [root, *_subdirs(root)]:
        if (folder / "batches.meta").is_file() and (folder / "data_batch_1").is_file():
            return "cifar10", folder
        if (folder / "meta").is_file() and (folder / "train").is_file() and (folder / "test").is_file():
            return "cifar100", folder
    return None


def build_cifar(kind: str, folder: Path, image_size: int, *, cache_bytes: int, name: str) -> DataBundle:
    if kind == "cifar10":
        classes = _names(_unpickle(folder / "batches.meta"), b"label_names", folder / "batches.meta")
        train_files = [folder / f for f in _CIFAR10_TRAIN if (folder / f).is_file()]
        test_files, label_key = [folder / "test_batch"], b"labels"
    else:
        classes = _names(_unpickle(folder / "meta"), b"fine_label_names", folder / "meta")
        train_files, test_files, label_key = [folder / "train"], [folder / "test"], b"fine_labels"
    if not test_files[0].is_file():
        raise VitlabError(f"CIFAR folder {folder} has no {test_files[0].name} file")
    train_x, train_y = _cifar_arrays(train_files, label_key)
    test_x, test_y = _cifar_arrays(test_files, label_key)
    return _bundle(train_x, train_y, test_x, test_y, classes, image_size, cache_bytes, name)


def _cifar_arrays(files: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in files:
        batch = _unpickle(path)
        if b"data" not in batch or label_key not in batch:
            raise VitlabError(f"CIFAR file {path} lacks the keys data and {label_key.decode()}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise VitlabError(f"CIFAR file {path}: data has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each 32x32 row-major
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _unpickle(path: Path) -> dict:
    # The user pointed us at this data folder; CIFAR only ships as pickles of numpy arrays and lists.
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise VitlabError(f"cannot read CIFAR file {path}: {' '.join(str(e).split())}") from e
    if not isinstance(obj, dict):
        raise VitlabError(f"CIFAR file {path} does not hold a dict")
    return obj


def _names(meta: dict, key: bytes, path: Path) -> list[str]:
    if key not in meta:
        raise VitlabError(f"CIFAR meta file {path} lacks {key.decode()}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


# ---------------------------------------------------------------------------------------------------- MNIST idx

_IDX_FILES = {"train-images": 3, "train-labels": 1, "t10k-images": 3, "t10k-labels": 1}  # name -> ndim
_IDX_UBYTE = 0x08


def find_idx(root: Path) -> dict[str, Path] | None:
    """{"train-images": path, ...} (all four) in root, a child of it, or a grandchild (e.g. data/MNIST/raw)."""
    children = _subdirs(root)
    # only probe grandchildren of a small tree: under an ImageFolder root they are thousands of class folders
    grandchildren = [g for child in children for g in _subdirs(child)] if len(children) <= 8 else []
    for folder in [root, *children, *grandchildren]:
        found = {key: _idx_file(folder, key, ndim) for key, ndim in _IDX_FILES.items()}
        if all(found.values()):
            return found
    return None


def _idx_file(folder: Path, key: str, ndim: int) -> Path | None:
    split, kind = key.split("-")
    for sep in "-.":  # train-images-idx3-ubyte, and the train-images.idx3-ubyte some mirrors use
        for suffix in ("", ".gz"):
            path = folder / f"{split}-{kind}{sep}idx{ndim}-ubyte{suffix}"
            if path.is_file():
                return path
    return None


def build_idx(files: dict[str, Path], image_size: int, *, cache_bytes: int, name: str) -> DataBundle:
    train_x, train_y = read_idx(files["train-images"]), read_idx(files["train-labels"])
    test_x, test_y = read_idx(files["t10k-images"]), read_idx(files["t10k-labels"])
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise VitlabError(f"idx files for {split} in {files['train-images'].parent} do not match: "
                              f"images {tuple(x.shape)}, labels {tuple(y.shape)}")
    classes_file = files["train-images"].parent / "classes.txt"
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    else:
        classes = [str(i) for i in range(max(10, num_classes))]
    if len(classes) < num_classes:
        raise VitlabError(f"{classes_file} names {len(classes)} classes but the labels go up to {num_classes - 1}")
    return _bundle(torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y.astype(np.int64)),
                   torch.from_numpy(test_x).unsqueeze(1), torch.from_numpy(test_y.astype(np.int64)),
                   classes, image_size, cache_bytes, name)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) -> uint8 array.

    Header: 0, 0, type (0x08 = ubyte), ndim; then big-endian dims."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise VitlabError(f"cannot read idx file {path}: {' '.join(str(e).split())}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or data[3] == 0:
        raise VitlabError(f"{path} is not an unsigned-byte idx file (magic {data[:4].hex() or 'missing'}, "
                          f"expected 00000801 or 00000803)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VitlabError(f"idx file {path} is truncated in its header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(data) - header != int(np.prod(dims)):
        raise VitlabError(f"idx file {path} holds {len(data) - header} bytes of data, its header says "
                          f"{int(np.prod(dims))} (dims {dims})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


# ---------------------------------------------------------------------------------------------------- shared


def _bundle(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
            classes: list[str], image_size: int, cache_bytes: int, name: str) -> DataBundle:
    """uint8 (N, C, H, W) arrays -> a bundle, in memory at image_size if it fits in cache_bytes, else lazy."""
    for y, split in ((train_y, "train"), (test_y, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise VitlabError(f"{name}: {split} labels span {int(y.min())}..{int(y.max())} but there are "
                              f"{len(classes)} classes")
    in_memory = (len(train_x) + len(test_x)) * 3 * image_size * image_size <= cache_bytes

    def make(x: torch.Tensor, y: torch.Tensor) -> ImageSet:
        if in_memory:
            return ImageSet(classes, y, image_size, images=resize_uint8(x, image_size).expand(-1, 3, -1, -1)
                            .contiguous())
        return ImageSet(classes, y, image_size, arrays=x)

    digits = [str(d) for d in range(10)]
    return DataBundle(train=make(train_x, train_y), val=make(test_x, test_y), classes=list(classes), name=name,
                      source_size=f"{train_x.shape[3]}x{train_x.shape[2]}",
                      mirror_safe=list(classes) != digits)      # MNIST's digits are not mirror-symmetric


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
