"""Detection data: DetectionSet (one split in memory), DetectionBundle (train + val), batches, and the spec builder.

    bundle = build_detection_data("scenes", 64)             # or a COCO folder
    for images, targets in detection_batches(bundle.train, 32, shuffle=True, epoch=epoch):
        ...   # images uint8 (B, 3, S, S); targets[i]: "boxes" (n, 4) normalised cxcywh, "labels" (n,), "iscrowd" (n,)

Boxes are normalised (cx, cy, w, h) of the image the model sees: the source image squashed to S x S, so they are
the same fractions of the source image. coco_ground_truth() turns them back into COCO pixels of the original image.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import VitlabError
from .loader import epoch_batches

STAT_KEYS = ("clipped_boxes", "dropped_boxes", "crowd_boxes", "skipped_images")


class DetectionSet:
    """One split held in memory: images (N, 3, S, S) uint8 and per-image targets.

    targets[i]: "boxes" (n, 4) float32 normalised cxcywh, "labels" (n,) int64 class index, "iscrowd" (n,) bool.
    masks (optional): per image (n, S, S) bool instance masks. areas (optional): per image (n,) float32 object area
    in original pixels (COCO's segment area); where absent the box area is used.
    """

    def __init__(self, classes: Sequence[str], category_ids: Sequence[int], images: Tensor,
                 targets: list[dict[str, Tensor]], image_ids: Sequence[int], orig_sizes: Sequence[tuple[int, int]],
                 file_names: Sequence[str], *, skipped: Sequence[str] = (), stats: dict[str, int] | None = None,
                 masks: list[Tensor] | None = None, areas: list[Tensor] | None = None) -> None:
        n = len(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DetectionSet images must be uint8 (N, 3, S, S), got {images.dtype} "
                             f"{tuple(images.shape)}")
        for name, seq in (("targets", targets), ("image_ids", image_ids), ("orig_sizes", orig_sizes),
                          ("file_names", file_names), ("masks", masks), ("areas", areas)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"DetectionSet has {n} images but {len(seq)} {name}")
        if len(classes) != len(category_ids):
            raise ValueError(f"{len(classes)} classes but {len(category_ids)} category ids")
        self.classes = list(classes)
        self.category_ids = [int(c) for c in category_ids]
        self.images = images
        self.targets = targets
        self.image_ids = [int(i) for i in image_ids]
        self.orig_sizes = [(int(h), int(w)) for h, w in orig_sizes]
        self.file_names = [str(f) for f in file_names]
        self.skipped = list(skipped)
        self.stats = {key: 0 for key in STAT_KEYS} | dict(stats or {})
        self.masks = masks
        self.areas = areas

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def coco_ground_truth(self) -> dict:
        """The COCO ground-truth dict for COCOeval: bbox [x, y, w, h] in pixels of the original image."""
        images, annotations = [], []
        for i, (target, (height, width)) in enumerate(zip(self.targets, self.orig_sizes)):
            image_id = self.image_ids[i]
            images.append({"id": image_id, "width": width, "height": height, "file_name": self.file_names[i]})
            boxes = target["boxes"].double()  # (n, 4) cxcywh; double keeps integer pixel boxes exact
            x = (boxes[:, 0] - boxes[:, 2] / 2) * width
            y = (boxes[:, 1] - boxes[:, 3] / 2) * height
            w, h = boxes[:, 2] * width, boxes[:, 3] * height
            area = self.areas[i].double() if self.areas is not None else w * h
            crowd = target.get("iscrowd", torch.zeros(len(boxes), dtype=torch.bool))
            for k in range(len(boxes)):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": self.category_ids[int(target["labels"][k])],
                    "bbox": [float(x[k]), float(y[k]), float(w[k]), float(h[k])], "area": float(area[k]),
                    "iscrowd": int(bool(crowd[k]))})
        categories = [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}


@dataclass
class DetectionBundle:
    train: DetectionSet
    val: DetectionSet
    classes: list[str]
    name: str

    @property
    def category_ids(self) -> list[int]:
        return self.train.category_ids

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.val.skipped

    @property
    def stats(self) -> dict[str, int]:
        return {key: self.train.stats.get(key, 0) + self.val.stats.get(key, 0) for key in STAT_KEYS}


def detection_batches(dataset: DetectionSet, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                      drop_last: bool = False, rank: int = 0, world_size: int = 1,
                      drop_crowd: bool = True) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
    """Yield (images uint8 (B, 3, S, S), targets) for this rank's share of one epoch.

    The order and the sharding are vitlab.data.loader.epoch_indices', as for classification. drop_crowd removes
    iscrowd boxes from the yielded targets (training ignores them, as COCO does); the set itself is unchanged.
    """
    for idx in epoch_batches(len(dataset), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last,
                             rank=rank, world_size=world_size):
        targets = [dataset.targets[int(i)] for i in idx]
        if drop_crowd:
            targets = [_without_crowd(t) for t in targets]
        yield dataset.images[idx], targets


def num_detection_batches(dataset: DetectionSet | int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches per rank per epoch from detection_batches."""
    from .loader import num_batches

    return num_batches(len(dataset) if isinstance(dataset, DetectionSet) else dataset, batch_size, drop_last,
                       world_size)


def _without_crowd(target: dict[str, Tensor]) -> dict[str, Tensor]:
    crowd = target.get("iscrowd")
    if crowd is None or not bool(crowd.any()):
        return target
    keep = ~crowd
    n = len(crowd)
    return {k: v[keep] if isinstance(v, Tensor) and v.ndim and len(v) == n else v for k, v in target.items()}


_EXPECTED = ("expected 'scenes' or a COCO folder (annotations/instances_<split>.json with the images in <split>/, "
             "or images/ beside one JSON)")


def build_detection_data(spec: str, image_size: int, *, seed: int = 0, val_fraction: float = 0.2,
                         scenes_train: int = 2000, scenes_val: int = 500, max_objects: int = 3) -> DetectionBundle:
    """A detection data spec -> DetectionBundle. Raises VitlabError on a bad spec.

    scenes   generated from seed: scenes_train train and scenes_val val images of 1..max_objects shapes.
    a path   a COCO folder (see is_coco_folder); one JSON for all images is split by a seeded val_fraction.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise VitlabError(f"image size must be a positive integer, got {image_size!r}")
    if spec == "scenes":
        from .scenes import build_scenes_detection

        return build_scenes_detection(image_size, seed, scenes_train, scenes_val, max_objects)
    root = Path(spec).expanduser()
    if not root.exists():
        raise VitlabError(f"data path {spec} does not exist; {_EXPECTED}")
    if not root.is_dir():
        raise VitlabError(f"data path {spec} is a file, not a directory; {_EXPECTED}")
    if not is_coco_folder(root):
        raise VitlabError(f"{spec} is not a COCO folder; {_EXPECTED}")
    from .coco import build_coco

    return build_coco(root, image_size, val_fraction=val_fraction, seed=seed, name=str(spec))


def is_coco_folder(path: str | os.PathLike) -> bool:
    """True for annotations/instances_*.json, or an images/ folder beside exactly one JSON (top level or in
    annotations/)."""
    from .coco import find_layout

    root = Path(path)
    return root.is_dir() and find_layout(root) is not None
