"""COCO-format detection folders: the reader (-> DetectionBundle) and the scenes writer.

Layouts read (find_layout):
  root/annotations/instances_<split>.json with the images in root/<split>/ (or root/images/<split>/), as COCO ships
      them: train2017 + val2017, train + val, ... A train and a val (or test) file are the two splits; a lone file
      is split by a seeded val_fraction.
  root/images/ beside one JSON (root/*.json or root/annotations/*.json): split by a seeded val_fraction.

Category ids need not be contiguous: they are sorted and mapped to class indices 0..C-1, names kept as the classes.
Bad annotations never stop a run; they are counted in DetectionSet.stats: a missing or corrupt image (skipped,
named in `skipped`, a warning logged), a box partly outside its image (clipped), a zero-area, negative or malformed
box or one wholly outside (dropped), a crowd box (kept with iscrowd True; detection_batches drops it for training).
An unknown category id, a file with no images, or a JSON that does not parse raises VitlabError naming the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import VitlabError
from ..io import write_json
from .decode import decode_image
from .detection import DetectionBundle, DetectionSet

logger = logging.getLogger(__name__)

_TRAIN_WORDS, _VAL_WORDS = ("train",), ("val", "test")
_NOT_INSTANCES = ("captions", "person_keypoints", "image_info", "panoptic", "stuff")


@dataclass
class CocoLayout:
    """Where the annotations and images are. val_json is None when one file is split by val_fraction."""
    train_json: Path
    train_images: Path | None   # None: no image folder found (build_coco says where it looked)
    val_json: Path | None = None
    val_images: Path | None = None


def find_layout(root: Path) -> CocoLayout | None:
    """The COCO layout under root, or None when root is not a COCO folder."""
    files = sorted((root / "annotations").glob("instances_*.json"))
    if files:
        splits = {f: f.stem[len("instances_"):] for f in files}
        train = next((f for f in files if any(w in splits[f] for w in _TRAIN_WORDS)), None)
        val = next((f for f in files if f is not train and any(w in splits[f] for w in _VAL_WORDS)), None)
        if train is not None and val is not None:
            return CocoLayout(train, _split_images(root, splits[train]), val, _split_images(root, splits[val]))
        only = train or val or files[0]
        return CocoLayout(only, _split_images(root, splits[only]))
    if not (root / "images").is_dir():
        return None
    candidates = sorted([*root.glob("*.json"), *(root / "annotations").glob("*.json")])
    if len(candidates) > 1:
        candidates = [f for f in candidates if not f.name.startswith(_NOT_INSTANCES)]
    if len(candidates) != 1:
        return None
    return CocoLayout(candidates[0], root / "images")


def _split_images(root: Path, split: str) -> Path | None:
    for folder in (root / split, root / "images" / split, root / "images"):
        if folder.is_dir():
            return folder
    return None


def build_coco(root: Path, image_size: int, *, val_fraction: float = 0.2, seed: int = 0,
               name: str | None = None) -> DetectionBundle:
    """Read a COCO folder into memory: images decoded (robust) and squashed to image_size x image_size."""
    layout = find_layout(Path(root))
    if layout is None:
        raise VitlabError(f"{root} is not a COCO folder (expected annotations/instances_<split>.json, or images/ "
                          f"beside one JSON)")
    train_coco = read_coco_json(layout.train_json)
    classes, category_ids = _categories(train_coco, layout.train_json)
    if layout.val_json is not None:
        val_coco = read_coco_json(layout.val_json)
        _categories(val_coco, layout.val_json)  # validates the val file's own category list
        _check_annotation_categories(val_coco, layout.val_json, category_ids,
                                     f"the categories of {layout.train_json.name}")
        train_records, val_records = train_coco["images"], val_coco["images"]
        val_json, val_images = layout.val_json, layout.val_images
    else:
        val_coco = train_coco
        train_records, val_records = _seeded_split(train_coco["images"], val_fraction, seed, layout.train_json)
        val_json, val_images = layout.train_json, layout.train_images
    train = _make_set(train_coco, train_records, layout.train_json, layout.train_images, image_size, classes,
                      category_ids)
    # one file split in two: its annotations of unlisted images are counted once, with train
    val = _make_set(val_coco, val_records, val_json, val_images, image_size, classes, category_ids,
                    count_orphans=layout.val_json is not None)
    logger.info("%s: %d train / %d val images, %d classes; boxes clipped %d, dropped %d, crowd %d; images "
                "skipped %d", root, len(train), len(val), len(classes), *(train.stats[k] + val.stats[k] for k in
                ("clipped_boxes", "dropped_boxes", "crowd_boxes", "skipped_images")))
    return DetectionBundle(train=train, val=val, classes=classes, name=name or str(root))


def read_coco_json(path: Path) -> dict:
    """Parse and check the top level of a COCO instances file. Raises VitlabError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise VitlabError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise VitlabError(f"cannot read {path}: {e}") from e
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise VitlabError(f"{path} is not a COCO annotation file: no 'images' list at the top level")
    if not coco["images"]:
        raise VitlabError(f"{path} has no images (an empty annotation file)")
    for key in ("annotations", "categories"):
        if not isinstance(coco.get(key, []), list):
            raise VitlabError(f"{path}: '{key}' must be a list")
    bad = next((r for r in coco["images"] if not isinstance(r, dict) or "id" not in r or "file_name" not in r), None)
    if bad is not None:
        raise VitlabError(f"{path}: an image entry lacks 'id' or 'file_name': {str(bad)[:80]}")
    return coco


def _categories(coco: dict, path: Path) -> tuple[list[str], list[int]]:
    """(class names, category ids), ordered by category id; annotations checked against them."""
    cats = coco.get("categories", [])
    try:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    except (KeyError, TypeError, ValueError) as e:
        raise VitlabError(f"{path}: a category lacks an integer 'id' ({e})") from e
    if len(by_id) != len(cats):
        raise VitlabError(f"{path}: duplicate category ids")
    if not by_id:
        raise VitlabError(f"{path} has no categories")
    ids = sorted(by_id)
    _check_annotation_categories(coco, path, ids, "its categories")
    return [by_id[i] for i in ids], ids


def _check_annotation_categories(coco: dict, path: Path, ids: list[int], where: str) -> None:
    known = set(ids)
    for ann in coco.get("annotations", []):
        cid = ann.get("category_id") if isinstance(ann, dict) else None
        if cid not in known:
            shown = ", ".join(map(str, ids[:12])) + (", ..." if len(ids) > 12 else "")
            raise VitlabError(f"{path}: annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'} has "
                              f"category id {cid!r}, which is not among {where} ({shown})")


def _seeded_split(records: list[dict], val_fraction: float, seed: int, path: Path) -> tuple[list[dict], list[dict]]:
    if not 0 < val_fraction < 1:
        raise VitlabError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(records) < 2:
        raise VitlabError(f"{path} has only {len(records)} image; need at least 2 to split into train and val")
    n_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
    val_idx = set(np.random.default_rng(seed).permutation(len(records))[:n_val].tolist())
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])  # each keeps the file's order


def _make_set(coco: dict, records: list[dict], json_path: Path, image_dir: Path | None, image_size: int,
              classes: list[str], category_ids: list[int], count_orphans: bool = True) -> DetectionSet:
    if image_dir is None:
        raise VitlabError(f"no image folder for {json_path}: expected {json_path.parent.parent}/<split>/ or "
                          f"{json_path.parent.parent}/images/")
    index_of = {cid: k for k, cid in enumerate(category_ids)}
    by_image: dict[int, list[dict]] = {}
    wanted = {r["id"] for r in records}
    stats = {"clipped_boxes": 0, "dropped_boxes": 0, "crowd_boxes": 0, "skipped_images": 0}
    all_ids = {r["id"] for r in coco["images"]}
    for ann in coco.get("annotations", []):
        if ann.get("image_id") in wanted:
            by_image.setdefault(ann["image_id"], []).append(ann)
        elif count_orphans and ann.get("image_id") not in all_ids:
            stats["dropped_boxes"] += 1  # an annotation of no listed image
    decoded = _decode_all([image_dir / str(r["file_name"]) for r in records], records, image_size)
    images, targets, areas, kept, skipped = [], [], [], [], []
    for record, result in zip(records, decoded):
        if isinstance(result, VitlabError):
            logger.warning("%s; skipped", result)
            skipped.append(str(image_dir / str(record["file_name"])))
            continue
        image, (height, width) = result
        target, area = _image_target(by_image.get(record["id"], []), width, height, index_of, stats)
        images.append(image)
        targets.append(target)
        areas.append(area)
        kept.append((record, (height, width)))
    stats["skipped_images"] = len(skipped)
    if not kept:
        raise VitlabError(f"none of the {len(records)} images listed in {json_path} could be decoded "
                          f"(first: {decoded[0]})")
    return DetectionSet(classes, category_ids, torch.stack(images), targets, [r["id"] for r, _ in kept],
                        [size for _, size in kept], [str(r["file_name"]) for r, _ in kept], skipped=skipped,
                        stats=stats, areas=areas)


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _decode_all(paths: list[Path], records: list[dict], image_size: int) -> list:
    """Per image: (uint8 (3, S, S), (height, width)) or the VitlabError that stopped it."""

    def load(item: tuple[Path, dict]) -> tuple[Tensor, tuple[int, int]] | VitlabError:
        path, record = item
        width, height = _positive_int(record.get("width")), _positive_int(record.get("height"))
        try:
            # the annotated size, when given, is the frame the boxes live in; only then may a JPEG decode reduced
            img = decode_image(path, min_size=image_size if width and height else None)
        except VitlabError as e:
            return e
        size = (height, width) if width and height else (img.height, img.width)
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)  # squash: boxes stay fractions
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous(), size

    # PIL releases the GIL while decoding and resizing: threads speed this up without pickling
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(load, zip(paths, records), chunksize=16))


def _image_target(anns: list[dict], width: int, height: int, index_of: dict[int, int],
                  stats: dict[str, int]) -> tuple[dict[str, Tensor], Tensor]:
    """One image's annotations -> target (boxes normalised cxcywh, labels, iscrowd) and areas; stats updated."""
    boxes, labels, crowd, areas = [], [], [], []
    for ann in anns:
        box = _clipped_box(ann.get("bbox"), width, height)
        if box is None:
            stats["dropped_boxes"] += 1
            continue
        (x0, y0, x1, y1), was_clipped = box
        stats["clipped_boxes"] += was_clipped
        is_crowd = bool(ann.get("iscrowd", 0))
        stats["crowd_boxes"] += is_crowd
        area = ann.get("area")
        valid_area = isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area) and area > 0
        boxes.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
        labels.append(index_of[ann["category_id"]])
        crowd.append(is_crowd)
        areas.append(float(area) if valid_area else (x1 - x0) * (y1 - y0))
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor(labels, dtype=torch.int64), "iscrowd": torch.tensor(crowd, dtype=torch.bool)}
    return target, torch.tensor(areas, dtype=torch.float32)


def _clipped_box(bbox: object, width: int, height: int) -> tuple[tuple[float, float, float, float], bool] | None:
    """COCO [x, y, w, h] -> ((x0, y0, x1, y1) clipped to the image, whether it was clipped), or None to drop it."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None  # wholly outside the image
    return (x0, y0, x1, y1), (x0, y0, x1, y1) != (x, y, x + w, y + h)


# --- writer ------------------------------------------------------------------------------------------------------


def export_scenes(out_dir: str | os.PathLike, n_train: int = 2000, n_val: int = 500, size: int = 64, seed: int = 0,
                  max_objects: int = 3) -> dict:
    """Write generated scenes as a COCO folder that build_detection_data(out_dir, size) reads back identically.

    out_dir/annotations/instances_{train,val}.json   COCO instances (bbox in pixels, area, RLE segmentation)
    out_dir/annotations/captions_{train,val}.json    COCO captions (images + annotations with image_id, caption)
    out_dir/{train,val}/<id>.png                      the images (lossless)
    out_dir/masks/{train,val}/<id>.png                semantic index masks (0 = background, class index + 1)
    Returns a summary: {"out": path, "train": n_train, "val": n_val, "size": size, "objects": count}.
    """
    from .scenes import build_scenes

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise VitlabError(f"{out} exists and is a file; give a directory to write the scenes into")
    train, val = build_scenes(size, seed=seed, n_train=n_train, n_val=n_val, max_objects=max_objects)
    info = {"description": "vitlab scenes", "seed": seed, "image_size": size, "max_objects": max_objects}
    objects = 0
    for split, scenes in (("train", train), ("val", val)):
        _write_pngs(out / split, scenes.file_names, scenes.images.permute(0, 2, 3, 1).numpy())  # (N, S, S, 3)
        _write_pngs(out / "masks" / split, scenes.file_names, scenes.semantic_masks.numpy())  # (N, S, S)
        write_json(out / "annotations" / f"captions_{split}.json", scenes_captions_json(scenes, info))
        objects += sum(len(o) for o in scenes.objects)
    for split, scenes in (("train", train), ("val", val)):  # last: a folder is complete once these exist
        write_json(out / "annotations" / f"instances_{split}.json", scenes_coco_json(scenes, info))
    return {"out": str(out), "train": n_train, "val": n_val, "size": size, "objects": objects}


def scenes_coco_json(scenes, info: dict | None = None) -> dict:
    """COCO instances dict of Scenes: integer pixel boxes, mask areas, uncompressed RLE, colour and size kept."""
    from .scenes import CATEGORY_IDS, SHAPE_CLASSES

    S = scenes.image_size
    images, annotations = [], []
    for i, (objects, boxes, masks) in enumerate(zip(scenes.objects, scenes.boxes, scenes.instance_masks)):
        images.append({"id": i + 1, "file_name": scenes.file_names[i], "width": S, "height": S})
        for obj, box, mask in zip(objects, boxes.tolist(), masks.numpy()):
            x0, y0, x1, y1 = (int(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": CATEGORY_IDS[obj.label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": int(mask.sum()), "iscrowd": 0, "segmentation": mask_to_rle(mask),
                                "colour": obj.colour, "size": obj.size})
    categories = [{"id": cid, "name": name, "supercategory": "shape"}
                  for cid, name in zip(CATEGORY_IDS, SHAPE_CLASSES)]
    return {"info": dict(info or {}), "images": images, "annotations": annotations, "categories": categories}


def scenes_captions_json(scenes, info: dict | None = None) -> dict:
    """COCO captions dict of Scenes: one caption per image."""
    S = scenes.image_size
    images = [{"id": i + 1, "file_name": f, "width": S, "height": S} for i, f in enumerate(scenes.file_names)]
    annotations = [{"id": i + 1, "image_id": i + 1, "caption": c} for i, c in enumerate(scenes.captions)]
    return {"info": dict(info or {}), "images": images, "annotations": annotations}


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO uncompressed RLE: run lengths of the column-major pixels, starting with a 0-run."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _write_pngs(folder: Path, names: list[str], arrays: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in zip(names, arrays):
        Image.fromarray(np.ascontiguousarray(a)).save(folder / name)
