"""Single-object `scenes` as a labelled image set: one shape per image, labelled by its shape, with its mask.

The data spec `scenes` (or `scenes:N` for N training images; `,background=plain` for one grey level per image
in place of the textured backgrounds; `,object_size=large` for twice the radii, scenes.LARGE_SIZE_CLASSES: the object
spans 4-6 patches of 8 px at 64 px instead of 2-4) in vitlab.data.build_data: `scenes` images
(vitlab.data.scenes, textured backgrounds, colour jitter, small/large objects) with exactly one object each, so an
image has one class (its shape) and one ground-truth object mask: what DINO's emergent segmentation is measured
against. Each ImageSet carries `masks` (N, S, S) bool beside its images.

    bundle = build_object_scenes(64, seed=0, n_train=2000, n_val=500)
    bundle.train.masks[0]            # (64, 64) bool, the object's visible pixels
"""
from __future__ import annotations

from ..errors import VitlabError
from .imageset import DataBundle, ImageSet
from .scenes import BACKGROUNDS, LARGE_SIZE_CLASSES, SIZE_CLASSES, build_scenes
from .shapes import SHAPE_CLASSES

DEFAULT_TRAIN, DEFAULT_VAL = 2000, 500
# the spec's object_size= values (not objects=: in the image-text spec that is the objects per image)
OBJECT_SIZES = {"default": SIZE_CLASSES, "large": LARGE_SIZE_CLASSES}


def build_object_scenes(image_size: int = 64, *, seed: int = 0, n_train: int = DEFAULT_TRAIN,
                        n_val: int | None = None, background: str = "textured",
                        object_size: str = "default") -> DataBundle:
    """Train and val single-object scenes (val: n_val, default n_train // 4, at least 1) on `background`
    ("textured" or "plain", vitlab.data.scenes.BACKGROUNDS), objects of the OBJECT_SIZES entry `object_size`."""
    if object_size not in OBJECT_SIZES:
        raise VitlabError(f"scenes object_size must be one of {', '.join(OBJECT_SIZES)}, got {object_size!r}")
    n_val = max(1, n_train // 4) if n_val is None else n_val
    train, val = build_scenes(image_size, seed=seed, n_train=n_train, n_val=n_val, max_objects=1,
                              background=background, size_classes=OBJECT_SIZES[object_size])
    sets = []
    for scenes in (train, val):
        labels = [objects[0].label for objects in scenes.objects]
        s = ImageSet(SHAPE_CLASSES, labels, image_size, images=scenes.images)
        s.masks = scenes.semantic_masks > 0                       # (N, S, S) bool: the one object's pixels
        sets.append(s)
    return DataBundle(train=sets[0], val=sets[1], classes=list(SHAPE_CLASSES), name="scenes",
                      source_size=f"{image_size}x{image_size}")


def parse_scenes_spec(spec: str) -> tuple[int, str, str]:
    """`scenes[:N][,background=B][,object_size=O]` -> (N training images, default DEFAULT_TRAIN; background,
    default textured; object size, default "default")."""
    usage = (f"data spec {spec!r}: expected scenes or scenes:N, then optionally ,background=textured|plain and "
             ",object_size=default|large (N a positive number of training images; each option at most once)")
    head, *options = spec.split(",")
    n_train, chosen = DEFAULT_TRAIN, {"background": "textured", "object_size": "default"}
    allowed = {"background": BACKGROUNDS, "object_size": OBJECT_SIZES}
    if head != "scenes":
        count = head.removeprefix("scenes:")
        if not head.startswith("scenes:") or not count.isdigit() or int(count) < 1:
            raise VitlabError(usage)
        n_train = int(count)
    keys = [option.partition("=")[0] for option in options]
    for option in options:
        key, _, value = option.partition("=")
        if key not in allowed or value not in allowed[key] or keys.count(key) > 1:
            raise VitlabError(usage)
        chosen[key] = value
    return n_train, chosen["background"], chosen["object_size"]
