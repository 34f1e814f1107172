"""`scenes`: generated images of 1-K coloured shapes with everything later tasks need, offline and seeded.

Each image holds 1..max_objects objects from the six `shapes` classes. An object has a shape, a colour from a small
named palette, a size class (small/large) and a position; objects barely overlap (placements whose enclosing
circles overlap much are redrawn), so every box is well defined. Per image the generator keeps each object's spec,
its tight box and instance mask (the visible pixels), the semantic mask (0 = background, class index + 1) and a
caption from a small grammar: "a large red circle above a small blue star".

    train, val = build_scenes(64, seed=0, n_train=2000, n_val=500)
    bundle = build_scenes_detection(64, seed=0, n_train=2000, n_val=500)   # DetectionBundle

Everything is drawn from numpy Generators seeded by (seed, split), as `shapes` does: same seed, identical bytes.
`render_objects` draws a list of ObjectSpecs onto a background, so a video variant can move the same objects over T
frames and render each frame with it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from .detection import DetectionBundle, DetectionSet
from .shapes import SHAPE_CLASSES, _shape_mask

# Saturated colours that stand off the grey backgrounds; named so a caption can say them. Hue is never jittered.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (45, 175, 65), "blue": (50, 90, 230), "yellow": (235, 215, 50),
    "purple": (150, 70, 200), "orange": (240, 135, 30), "cyan": (40, 200, 215), "white": (240, 240, 240),
}
# Radius (centre to farthest point of the shape) as a fraction of the image side, per size class.
SIZE_CLASSES: dict[str, tuple[float, float]] = {"small": (0.08, 0.11), "large": (0.15, 0.20)}
# Twice the radii, for single-object scenes whose object must span several 8 px patches at 64 px (2-4 patches
# across at SIZE_CLASSES, 4-6 here); the names stay, so a caption still says which of the two an object is.
LARGE_SIZE_CLASSES: dict[str, tuple[float, float]] = {"small": (0.16, 0.22), "large": (0.30, 0.40)}
CATEGORY_IDS = list(range(1, len(SHAPE_CLASSES) + 1))  # COCO category id of each class index, in SHAPE_CLASSES order
MIN_IMAGE_SIZE = 16

_TRAIN_STREAM, _VAL_STREAM = 0, 1
_OVERLAP = 0.85       # centres at least 0.85 (r1 + r2) apart: enclosing circles overlap by at most 15% of a radius
_PLACEMENT_TRIES = 30
_COLOUR_JITTER = 12.0  # per-channel spread of each object's colour around its palette entry (RGB units)


@dataclass(frozen=True)
class ObjectSpec:
    """One object to draw: everything `render_objects` needs, in pixels of an S x S image."""
    shape: str                             # one of SHAPE_CLASSES
    colour: str                            # a PALETTE name
    size: str                              # a SIZE_CLASSES name
    cx: float                              # centre, pixels from the left edge
    cy: float                              # centre, pixels from the top edge
    radius: float                          # centre to the shape's farthest point, pixels
    angle: float                           # rotation, radians
    rgb: tuple[float, float, float]        # the drawn colour: the palette entry with a little jitter

    @property
    def label(self) -> int:
        return SHAPE_CLASSES.index(self.shape)

    def moved(self, dx: float, dy: float) -> ObjectSpec:
        """The same object shifted by (dx, dy) pixels (for a later video variant)."""
        return ObjectSpec(self.shape, self.colour, self.size, self.cx + dx, self.cy + dy, self.radius, self.angle,
                          self.rgb)


@dataclass
class Scenes:
    """N generated images and all their annotations. Boxes are tight boxes of the visible instance masks."""
    image_size: int
    images: Tensor                          # (N, 3, S, S) uint8
    objects: list[list[ObjectSpec]]         # per image, in drawing order (a later object is drawn on top)
    boxes: list[Tensor]                     # per image (n, 4) float32 pixel x0, y0, x1, y1 (x1, y1 exclusive)
    instance_masks: list[Tensor]            # per image (n, S, S) bool: the pixels where each object is visible
    semantic_masks: Tensor                  # (N, S, S) uint8: 0 = background, class index + 1
    captions: list[str]

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def file_names(self) -> list[str]:
        return [f"{i + 1:06d}.png" for i in range(len(self))]

    def labels(self, i: int) -> Tensor:
        """Class indices (n,) int64 of image i's objects."""
        return torch.tensor([o.label for o in self.objects[i]], dtype=torch.int64)


def build_scenes(image_size: int = 64, *, seed: int = 0, n_train: int = 2000, n_val: int = 500,
                 max_objects: int = 3, train_objects: tuple[int, int] | None = None,
                 background: str = "textured",
                 size_classes: dict[str, tuple[float, float]] = SIZE_CLASSES) -> tuple[Scenes, Scenes]:
    """Train and val scenes, each from its own stream of seed. Objects per image: uniform in 1..max_objects, or
    in train_objects = (least, most) for the training split alone (val keeps 1..max_objects). background:
    "textured" (textured_background) or "plain" (plain_background: one grey level per image). size_classes: the
    radius range (fraction of the side) of each size name, SIZE_CLASSES or LARGE_SIZE_CLASSES."""
    _check_args(image_size, n_train, n_val, max_objects)
    if background not in BACKGROUNDS:
        raise VitlabError(f"scenes background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    least, most = train_objects or (1, max_objects)
    _check_args(image_size, n_train, n_val, most)
    if isinstance(least, bool) or not isinstance(least, int) or not 1 <= least <= most:
        raise VitlabError(f"scenes training object counts must be integers 1 <= least <= most, got {train_objects}")
    train = generate_scenes(n_train, image_size, np.random.default_rng([seed % 2**64, _TRAIN_STREAM]), most,
                            min_objects=least, background=background, size_classes=size_classes)
    val = generate_scenes(n_val, image_size, np.random.default_rng([seed % 2**64, _VAL_STREAM]), max_objects,
                          background=background, size_classes=size_classes)
    return train, val


def build_scenes_detection(image_size: int = 64, seed: int = 0, n_train: int = 2000, n_val: int = 500,
                           max_objects: int = 3) -> DetectionBundle:
    """The scenes as a DetectionBundle: classes SHAPE_CLASSES, COCO category ids 1..6, instance masks kept."""
    train, val = build_scenes(image_size, seed=seed, n_train=n_train, n_val=n_val, max_objects=max_objects)
    return DetectionBundle(train=scenes_detection_set(train), val=scenes_detection_set(val),
                           classes=list(SHAPE_CLASSES), name="scenes")


def scenes_detection_set(scenes: Scenes) -> DetectionSet:
    """Scenes -> DetectionSet (boxes normalised cxcywh; areas = visible mask pixels, as COCO's segment area)."""
    S = scenes.image_size
    targets = []
    for i, boxes in enumerate(scenes.boxes):
        x0, y0, x1, y1 = boxes.unbind(-1)
        cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1) / S  # (n, 4)
        targets.append({"boxes": cxcywh.float(), "labels": scenes.labels(i),
                        "iscrowd": torch.zeros(len(boxes), dtype=torch.bool)})
    areas = [m.flatten(1).sum(1).float() for m in scenes.instance_masks]
    return DetectionSet(classes=list(SHAPE_CLASSES), category_ids=list(CATEGORY_IDS), images=scenes.images,
                        targets=targets, image_ids=list(range(1, len(scenes) + 1)),
                        orig_sizes=[(S, S)] * len(scenes), file_names=scenes.file_names,
                        masks=list(scenes.instance_masks), areas=areas)


def generate_scenes(n: int, image_size: int, rng: np.random.Generator, max_objects: int = 3,
                    min_objects: int = 1, background: str = "textured",
                    size_classes: dict[str, tuple[float, float]] = SIZE_CLASSES) -> Scenes:
    """n scenes of size image_size drawn from rng, one image after another (so a prefix does not depend on n);
    min_objects..max_objects objects each (uniform; an object with no free place is left out); background is a
    key of BACKGROUNDS; size_classes maps each size name to its radius range (fraction of the side)."""
    S = image_size
    draw_background = BACKGROUNDS[background]
    images = torch.empty(n, 3, S, S, dtype=torch.uint8)
    semantic = torch.zeros(n, S, S, dtype=torch.uint8)
    all_objects, all_boxes, all_masks, captions = [], [], [], []
    for i in range(n):
        objects = sample_objects(rng, S, int(rng.integers(min_objects, max_objects + 1)), size_classes)
        field = draw_background(rng, S)  # (S, S, 3) float32
        image, visible = render_objects(field, objects)
        keep = visible.any(axis=(1, 2))  # an object too small to cover half a pixel anywhere is left out
        if not keep.all():
            objects = [o for o, k in zip(objects, keep) if k]
            image, visible = render_objects(field, objects)
        image += rng.standard_normal(image.shape, dtype=np.float32) * 6.0  # fine grain over objects too
        images[i] = torch.from_numpy(np.clip(np.round(image), 0, 255).astype(np.uint8)).permute(2, 0, 1)
        masks = torch.from_numpy(visible)  # (n_obj, S, S) bool
        for obj, mask in zip(objects, masks):
            semantic[i][mask] = obj.label + 1
        all_objects.append(objects)
        all_masks.append(masks)
        all_boxes.append(torch.tensor([mask_box(m) for m in visible], dtype=torch.float32).reshape(-1, 4))
        captions.append(caption(objects, all_boxes[-1]))
    return Scenes(S, images, all_objects, all_boxes, all_masks, semantic, captions)


def sample_objects(rng: np.random.Generator, image_size: int, count: int,
                   size_classes: dict[str, tuple[float, float]] = SIZE_CLASSES) -> list[ObjectSpec]:
    """Up to count objects fully inside the image, redrawing a position that overlaps an earlier object much.
    An object that finds no free place in _PLACEMENT_TRIES draws is left out (the first one always fits)."""
    S = image_size
    colours = list(PALETTE)
    objects: list[ObjectSpec] = []
    for _ in range(count):
        shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        colour = colours[int(rng.integers(len(colours)))]
        size = list(size_classes)[int(rng.integers(len(size_classes)))]
        radius = float(rng.uniform(*size_classes[size])) * S
        angle = float(rng.uniform(0, 2 * math.pi))
        rgb = tuple(float(c) for c in np.clip(np.array(PALETTE[colour]) + rng.normal(0, _COLOUR_JITTER, 3), 0, 255))
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = (float(v) for v in rng.uniform(radius, S - radius, 2))
            if all(math.hypot(cx - o.cx, cy - o.cy) >= _OVERLAP * (radius + o.radius) for o in objects):
                objects.append(ObjectSpec(shape, colour, size, cx, cy, radius, angle, rgb))
                break
    return objects


def textured_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(S, S, 3) float32 in RGB units: a dark-to-mid grey with a slight tint, a smooth random field, and for half
    the images a faint stripe pattern. Low saturation keeps the objects' colour names true."""
    S = image_size
    grey = rng.uniform(25, 125)
    tint = rng.normal(0, 8, 3)
    coarse = grey + tint[:, None, None] + rng.normal(0, 14, (1, 4, 4)) + rng.normal(0, 4, (3, 4, 4))  # (3, 4, 4)
    field = F.interpolate(torch.from_numpy(coarse.astype(np.float32))[None], size=(S, S), mode="bilinear",
                          align_corners=False)[0].numpy()  # (3, S, S)
    if rng.random() < 0.5:  # stripes: a random orientation and period of 4-12% of the side
        theta, period, phase = rng.uniform(0, math.pi), rng.uniform(0.04, 0.12) * S, rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        field += 10 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
    return np.ascontiguousarray(field.transpose(1, 2, 0), dtype=np.float32)


def plain_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(S, S, 3) float32: one grey level per image (textured_background's range, 25-125), nothing else; the fine
    grain is added over the whole image afterwards as for textured scenes. With no texture, no per-image
    pattern survives cropping: what two crops of one image share is the object (and the grey level)."""
    return np.full((image_size, image_size, 3), rng.uniform(25, 125), dtype=np.float32)


BACKGROUNDS = {"textured": textured_background, "plain": plain_background}


def render_objects(background: np.ndarray, objects: Sequence[ObjectSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Draw objects in order onto background (S, S, 3) float: antialiased edges, a later object on top.

    Returns the image (S, S, 3) float32 and the visible masks (n, S, S) bool: the pixels an object covers at least
    half of, minus those a later object covers at least half of.
    """
    S = background.shape[0]
    image = background.astype(np.float32, copy=True)
    covered = np.zeros((len(objects), S, S), dtype=bool)
    for k, obj in enumerate(objects):
        alpha = _shape_mask(obj.shape, S, obj.cx, obj.cy, obj.radius, obj.angle)[..., None]  # (S, S, 1) in 0..1
        image = image * (1 - alpha) + np.asarray(obj.rgb, dtype=np.float32) * alpha
        covered[k] = alpha[..., 0] >= 0.5
    visible = covered.copy()
    for k in range(len(objects) - 2, -1, -1):
        visible[k] &= ~covered[k + 1:].any(axis=0)
    return image, visible


def mask_box(mask: np.ndarray | Tensor) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a non-empty (H, W) mask in pixel edges: x1 = last column + 1."""
    mask = np.asarray(mask)
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def caption(objects: Sequence[ObjectSpec], boxes: Tensor) -> str:
    """"a small green ring"; "a large red circle above a small blue star"; each further object is related to the
    one before it: "..., and a small white cross to the left of the blue star". Relations use the box centres."""
    phrases = [f"a {o.size} {o.colour} {o.shape}" for o in objects]
    centres = [((float(b[0]) + float(b[2])) / 2, (float(b[1]) + float(b[3])) / 2) for b in boxes]
    if len(objects) == 1:
        return phrases[0]
    text = f"{phrases[0]} {relation(centres[0], centres[1])} {phrases[1]}"
    for k in range(2, len(objects)):
        prev = objects[k - 1]
        text += f", and {phrases[k]} {relation(centres[k], centres[k - 1])} the {prev.colour} {prev.shape}"
    return text


def relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre a (x, y; y down) lies relative to centre b, along the axis they differ most in."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def _check_args(image_size: int, n_train: int, n_val: int, max_objects: int) -> None:
    for name, value, least in (("image size", image_size, MIN_IMAGE_SIZE), ("train count", n_train, 1),
                               ("val count", n_val, 1), ("max objects", max_objects, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise VitlabError(f"scenes {name} must be an integer of at least {least}, got {value!r}")
