"""ImageSet: a labelled set of images held in memory as one uint8 tensor, or decoded lazily item by item."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import VitlabError
from .decode import load_image, resize_uint8


class ImageSet(Dataset):
    """A labelled image set. __getitem__(i) -> (uint8 tensor (3, S, S), int label).

    Exactly one source is given:
      images  (N, 3, S, S) uint8, held in memory (the fast path: `batches` indexes it directly);
      files   N image paths, decoded on each access (images is None);
      arrays  (N, C, H, W) uint8 at native resolution (C = 1 or 3), resized on each access (images is None).
    A lazy item that fails to decode raises VitlabError, after adding its path to `skipped`.
    """

    def __init__(self, classes: Sequence[str], labels: Tensor | Sequence[int], image_size: int, *,
                 images: Tensor | None = None, files: Sequence[str] | None = None, arrays: Tensor | None = None,
                 skipped: Sequence[str] = ()) -> None:
        if sum(x is not None for x in (images, files, arrays)) != 1:
            raise ValueError("ImageSet needs exactly one of images, files, arrays")
        self.classes = list(classes)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        self.image_size = int(image_size)
        self.images = images
        self.files = [str(f) for f in files] if files is not None else None
        self.arrays = arrays
        self.skipped = list(skipped)
        n = len(self.labels)
        source_len = len(images) if images is not None else len(files) if files is not None else len(arrays)
        if source_len != n:
            raise ValueError(f"ImageSet has {source_len} images but {n} labels")
        if images is not None and (images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, image_size,
                                                                                              image_size)):
            raise ValueError(f"ImageSet images must be uint8 (N, 3, {image_size}, {image_size}), "
                             f"got {images.dtype} {tuple(images.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            return self.read_image(i), int(self.labels[i])
        except VitlabError:
            self.add_skipped([self.files[i]])
            raise

    def read_image(self, i: int) -> Tensor:
        """Image i as uint8 (3, S, S); a file that fails to decode raises VitlabError (not recorded in skipped)."""
        if self.images is not None:
            return self.images[i]
        if self.arrays is not None:
            image = resize_uint8(self.arrays[i:i + 1], self.image_size)[0]  # (C, S, S)
            return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image
        return load_image(self.files[i], self.image_size)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def add_skipped(self, paths: Sequence[str]) -> list[str]:
        """Record files found undecodable (deduplicated); returns those that were new."""
        new = [p for p in dict.fromkeys(paths) if p not in self.skipped]
        self.skipped.extend(new)
        return new

    def class_counts(self) -> Tensor:
        """(num_classes,) int64: images per class."""
        return torch.bincount(self.labels, minlength=len(self.classes))

    def __repr__(self) -> str:
        source = "in memory" if self.images is not None else "lazy files" if self.files is not None else "lazy arrays"
        return (f"ImageSet({len(self)} images, {len(self.classes)} classes, {self.image_size}px, {source}, "
                f"{len(self.skipped)} skipped)")


@dataclass
class DataBundle:
    """What build_data returns: the two splits and the class names they share."""
    train: ImageSet
    val: ImageSet
    classes: list[str]
    name: str  # "digits", "shapes", or the path given
    mirror_safe: bool = True   # a horizontal flip keeps the class (not for digits: a mirrored 2 is not a 2)
    references: Callable[[], dict[str, float]] | None = None   # metrics of a baseline on the same split
    source_size: str | None = None   # the images' own size before resizing ("8x8", "from 28x20 to 640x480")

    @property
    def skipped(self) -> list[str]:
        """Files that could not be decoded, in either split (so far, for lazily decoded sets)."""
        return list(dict.fromkeys(self.train.skipped + self.val.skipped))
