"""Image-caption pairs for contrastive training (CLIP): generated `scenes`, a CSV `filepath,caption` (open_clip's
format) or a COCO captions JSON, as uint8 images + caption strings.

    bundle = build_image_text_data("scenes", 64, seed=0)            # or "scenes:N", "pairs.csv", "captions.json"
    bundle.train.images (N, 3, S, S) uint8, bundle.train.captions [str] * N

`scenes`: the generator's multi-object images with their grammar captions ("a large red circle above a small blue
star"). Compositional split: the colour-shape pairs of HELD_OUT_PAIRS never occur in a training image (images
holding one are dropped from train), so a val image holding one tests a combination the model never saw.
Per val image the set keeps its objects' shapes, so single-object images double as a zero-shot shape test.

A CSV/JSON row whose image cannot be read, or whose caption is empty, is skipped, named and counted.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import VitlabError

log = logging.getLogger(__name__)

# one per shape, each colour at most once: (colour, shape) pairs held out of scenes' training images
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (("red", "circle"), ("green", "square"), ("blue", "triangle"),
                                               ("yellow", "cross"), ("purple", "ring"), ("orange", "star"))
SCENES_TRAIN, SCENES_VAL = 4000, 500


@dataclass
class PairSet:
    """N images with one caption each."""
    images: Tensor                                   # (N, 3, S, S) uint8
    captions: list[str]
    shapes: list[list[str]] = field(default_factory=list)   # scenes: each image's object shapes ([] elsewhere)
    novel: list[bool] = field(default_factory=list)          # scenes val: holds a held-out colour-shape pair
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class ImageTextBundle:
    train: PairSet
    val: PairSet
    classes: list[str]                               # zero-shot classes (scenes: the shapes), may be empty
    name: str
    tokenizer: object = None                         # vitlab.text.TextTokenizer, set by the task

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.val.skipped


def build_image_text_data(spec: str, image_size: int, *, seed: int = 0, val_fraction: float = 0.2
                          ) -> ImageTextBundle:
    """`scenes` / `scenes:N` (N training images before the held-out filter; val N/4, 16 to 500) /
    `scenes:N,objects=A-B` (training images hold A..B objects, uniform; val keeps 1..3), a CSV or a COCO
    captions JSON."""
    if spec == "scenes" or spec.startswith("scenes:"):
        n_train, objects = parse_scenes_pairs_spec(spec)
        return scenes_pairs(image_size, seed=seed, n_train=n_train, n_val=min(SCENES_VAL, max(16, n_train // 4)),
                            train_objects=objects)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise VitlabError(f"{spec}: expected 'scenes', a CSV of filepath,caption, or a COCO captions JSON")
    rows = _csv_rows(path) if path.suffix.lower() in (".csv", ".tsv") else _coco_rows(path)
    pairs = _load_rows(rows, image_size, path.parent)
    if len(pairs) < 2:
        raise VitlabError(f"{spec}: {len(pairs)} readable image-caption pairs; at least 2 are needed")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pairs), generator=g).tolist()
    n_val = max(1, round(len(pairs) * val_fraction))
    split = {"val": order[:n_val], "train": order[n_val:]}
    sets = {}
    for name, idx in split.items():
        sets[name] = PairSet(torch.stack([pairs.images[i] for i in idx]), [pairs.captions[i] for i in idx])
    sets["train"].skipped = pairs.skipped
    return ImageTextBundle(sets["train"], sets["val"], [], str(spec))


def parse_scenes_pairs_spec(spec: str) -> tuple[int, tuple[int, int] | None]:
    """`scenes[:N][,objects=A-B]` -> (N, (A, B) or None). `objects=K` means K-K."""
    n_train, objects = SCENES_TRAIN, None
    parts = spec.split(":", 1)[1].split(",") if ":" in spec else []
    usage = (f"data spec {spec!r}: expected scenes, scenes:N or scenes:N,objects=A-B (N a positive number of "
             "images, 1 <= A <= B object counts of the training images)")
    for k, part in enumerate(parts):
        if k == 0 and part.isdigit() and int(part) >= 1:
            n_train = int(part)
        elif part.startswith("objects=") and objects is None:
            bounds = part.removeprefix("objects=").split("-")
            if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
                raise VitlabError(usage)
            objects = (int(bounds[0]), int(bounds[-1]))
            if not 1 <= objects[0] <= objects[1]:
                raise VitlabError(usage)
        else:
            raise VitlabError(usage)
    return n_train, objects


def scenes_pairs(image_size: int, *, seed: int = 0, n_train: int = SCENES_TRAIN, n_val: int = SCENES_VAL,
                 train_objects: tuple[int, int] | None = None) -> ImageTextBundle:
    from .scenes import build_scenes
    from .shapes import SHAPE_CLASSES

    train, val = build_scenes(image_size, seed=seed, n_train=n_train, n_val=n_val, train_objects=train_objects)
    held = set(HELD_OUT_PAIRS)

    def has_held(objects: list) -> bool:
        return any((o.colour, o.shape) in held for o in objects)

    keep = [i for i, objs in enumerate(train.objects) if not has_held(objs)]
    log.info("scenes: %d of %d training images hold a held-out colour-shape pair and are dropped",
             len(train) - len(keep), len(train))
    tr = PairSet(train.images[keep], [train.captions[i] for i in keep],
                 [[o.shape for o in train.objects[i]] for i in keep], [False] * len(keep))
    va = PairSet(val.images, list(val.captions), [[o.shape for o in objs] for objs in val.objects],
                 [has_held(objs) for objs in val.objects])
    return ImageTextBundle(tr, va, list(SHAPE_CLASSES), "scenes")


@dataclass
class _Rows:
    images: list[Tensor] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    """open_clip's CSV: a header naming `filepath` and `caption` columns (tab-separated for .tsv)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames or not {"filepath", "caption"} <= set(reader.fieldnames):
            raise VitlabError(f"{path}: the header must name the columns filepath and caption, got "
                              f"{reader.fieldnames}")
        return [(row.get("filepath") or "", row.get("caption") or "") for row in reader]


def _coco_rows(path: Path) -> list[tuple[str, str]]:
    """COCO captions JSON: images [{id, file_name}], annotations [{image_id, caption}] (one row per caption)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {im["id"]: im["file_name"] for im in data["images"]}
        anns = data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise VitlabError(f"{path}: not a COCO captions file ({type(e).__name__}: {e})") from None
    return [(files.get(a.get("image_id"), f"<no image {a.get('image_id')}>"), a.get("caption") or "") for a in anns]


def _load_rows(rows: list[tuple[str, str]], image_size: int, root: Path) -> _Rows:
    from .decode import load_image

    out, cache = _Rows(), {}
    for i, (file, text) in enumerate(rows):
        text = " ".join(str(text).split())
        if not text:
            out.skipped.append(f"row {i + 1}: empty caption")
            continue
        p = Path(file) if Path(file).is_absolute() else root / file
        if p not in cache:
            try:
                cache[p] = load_image(p, image_size)
            except Exception as e:        # one unreadable image: named, counted, the rest go on
                cache[p] = None
                out.skipped.append(f"{file}: {str(e).splitlines()[0][:100] if str(e) else type(e).__name__}")
        if cache[p] is None:
            continue
        out.images.append(cache[p])
        out.captions.append(text)
    if out.skipped:
        log.warning("%d rows skipped (first: %s)", len(out.skipped), out.skipped[0])
    return out
