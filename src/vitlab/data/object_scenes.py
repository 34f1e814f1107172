"""Single-object `scenes` as a labelled image set: one shape per image, labelled by its shape, with its mask.

The data spec `scenes` (or `scenes:N` for N training images) in vitlab.data.build_data: `scenes` images
(vitlab.data.scenes, textured backgrounds, colour jitter, small/large objects) with exactly one object each, so an
image has one class (its shape) and one ground-truth object mask: what DINO's emergent segmentation is measured
against. Each ImageSet carries `masks` (N, S, S) bool beside its images.

    bundle = build_object_scenes(64, seed=0, n_train=2000, n_val=500)
    bundle.train.masks[0]            # (64, 64) bool, the object's visible pixels
"""
from __future__ import annotations

from ..errors import VitlabError
from .imageset import DataBundle, ImageSet
from .scenes import build_scenes
from .shapes import SHAPE_CLASSES

DEFAULT_TRAIN, DEFAULT_VAL = 2000, 500


def build_object_scenes(image_size: int = 64, *, seed: int = 0, n_train: int = DEFAULT_TRAIN,
                        n_val: int | None = None) -> DataBundle:
    """Train and val single-object scenes (val: n_val, default n_train // 4, at least 1)."""
    n_val = max(1, n_train // 4) if n_val is None else n_val
    train, val = build_scenes(image_size, seed=seed, n_train=n_train, n_val=n_val, max_objects=1)
    sets = []
    for scenes in (train, val):
        labels = [objects[0].label for objects in scenes.objects]
        s = ImageSet(SHAPE_CLASSES, labels, image_size, images=scenes.images)
        s.masks = scenes.semantic_masks > 0                       # (N, S, S) bool: the one object's pixels
        sets.append(s)
    return DataBundle(train=sets[0], val=sets[1], classes=list(SHAPE_CLASSES), name="scenes",
                      source_size=f"{image_size}x{image_size}")


def parse_scenes_spec(spec: str) -> int:
    """`scenes` -> DEFAULT_TRAIN; `scenes:N` -> N training images."""
    if spec == "scenes":
        return DEFAULT_TRAIN
    count = spec.split(":", 1)[1]
    if not count.isdigit() or int(count) < 1:
        raise VitlabError(f"data spec {spec!r}: expected scenes:N with N a positive number of training images")
    return int(count)
