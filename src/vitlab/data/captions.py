"""Caption data: images with one or more reference captions, a word-level tokenizer built from the training captions,
and (for `scenes`) each object's shape, colour and mask, which the attention grounding score reads. The `scenes`
caption names the objects left to right (reading_order_caption: scenes' own grammar, a visible order).

    bundle = build_caption_data("scenes", 64)                 # generated; or a captions file / folder (below)
    bundle = build_caption_data("scenes:1500,200", 64)        # 1500 training / 200 validation scenes
    for images, targets in caption_batches(bundle.train, bundle.tokenizer, 64, shuffle=True, epoch=1):
        ...   # images uint8 (B, 3, S, S); targets["ids"] (B, L) long: bos, words, eos, pad

A user's captions, given as a file or a folder holding exactly one of them:
- COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}; file names are
  looked up beside the JSON, one folder up (COCO's annotations/ layout) and in images/;
- a CSV with a header naming `filepath` and `caption` (or `title`, open_clip's default caption key), comma- or
  tab-separated; several rows may name the same image (several references).
A bad row (image missing or undecodable, caption empty, annotation of an unknown image) is skipped, named and
counted. Images are split into train/val by a seeded `val_fraction` (all captions of an image on the same side).
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import VitlabError
from ..text.tokenizer import TextTokenizer, build_word_level, pad_ids

log = logging.getLogger(__name__)

SCENES_TRAIN, SCENES_VAL = 6000, 500       # `scenes` captioning split sizes
CAPTION_FILES = ("captions.json", "captions.csv", "captions.tsv")


@dataclass
class GroundObject:
    """One object an image's caption can name: its shape word, colour word and visible mask (S, S) bool."""
    shape: str
    colour: str
    mask: Tensor


@dataclass
class CaptionSet:
    """One split in memory. references[i]: the captions of image i (normalised: lower case, single spaces)."""
    images: Tensor                                     # (N, 3, S, S) uint8
    references: list[list[str]]
    names: list[str]
    objects: list[list[GroundObject]] | None = None    # scenes: what the grounding score needs

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self) -> list[tuple[int, str]]:
        """(image index, caption) for every reference: one training sample each."""
        return [(i, c) for i, refs in enumerate(self.references) for c in refs]


@dataclass
class CaptionBundle:
    train: CaptionSet
    val: CaptionSet
    tokenizer: TextTokenizer
    name: str
    skipped: list[str]
    source_size: str | None = None

    @property
    def classes(self) -> list[str]:
        """The vocabulary in id order: a captioner's `num_classes` is its size."""
        return self.tokenizer.tokens()


def normalize_caption(text: str) -> str:
    return " ".join(str(text).lower().split())


def build_caption_data(spec: str, image_size: int, *, seed: int = 0, val_fraction: float = 0.25,
                       max_length: int = 40, n_train: int | None = None, n_val: int | None = None) -> CaptionBundle:
    """`scenes` (generated from seed; n_train / n_val images, default SCENES_TRAIN / SCENES_VAL) or a captions
    file / folder (module docstring). The tokenizer is a word-level vocabulary of the training captions with
    `max_length` tokens at most (longer captions are cut, eos kept)."""
    if spec == "scenes" or spec.startswith("scenes:"):
        sizes = scenes_sizes(spec)
        train, val = _scenes_sets(image_size, seed, n_train or sizes[0], n_val or sizes[1])
        skipped: list[str] = []
        name = "scenes"
    else:
        train, val, skipped = _folder_sets(Path(spec).expanduser(), image_size, seed, val_fraction)
        name = str(spec)
    tokenizer = build_word_level([c for refs in train.references for c in refs], max_length=max_length)
    if skipped:
        log.warning("%s: skipped %d bad caption rows (first: %s)", name, len(skipped), skipped[0])
    return CaptionBundle(train, val, tokenizer, name, skipped, f"{image_size}x{image_size}")


def scenes_sizes(spec: str) -> tuple[int, int]:
    """(training, validation) images of a `scenes`, `scenes:N` or `scenes:N,M` spec (defaults SCENES_TRAIN /
    SCENES_VAL)."""
    parts = spec.split(":", 1)[1].split(",") if ":" in spec else []
    try:
        sizes = [int(v) for v in parts]
    except ValueError:
        sizes = []
    if parts and (len(sizes) not in (1, 2) or min(sizes) < 1):
        raise VitlabError(f"{spec!r}: scenes captions are 'scenes', 'scenes:N' or 'scenes:N,M' (N training, "
                          "M validation images, each at least 1)")
    return (sizes[0] if sizes else SCENES_TRAIN), (sizes[1] if len(sizes) == 2 else SCENES_VAL)


def caption_batches(dataset: CaptionSet, tokenizer: TextTokenizer, batch_size: int, *, shuffle: bool,
                    seed: int = 0, epoch: int = 0, drop_last: bool = False, rank: int = 0,
                    world_size: int = 1):
    """(images uint8 (B, 3, S, S), {"ids": (B, L) long}) over every (image, caption) pair."""
    from .loader import epoch_batches

    pairs = dataset.pairs()
    for idx in epoch_batches(len(pairs), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last,
                             rank=rank, world_size=world_size):
        chosen = [pairs[i] for i in idx.tolist()]
        ids, _ = pad_ids([tokenizer.encode(c, truncate=True) for _, c in chosen], tokenizer.pad_id)
        yield dataset.images[torch.tensor([i for i, _ in chosen])], {"ids": ids}


# --- scenes ----------------------------------------------------------------------------------------------------------
def _scenes_sets(image_size: int, seed: int, n_train: int, n_val: int) -> tuple[CaptionSet, CaptionSet]:
    from .scenes import build_scenes

    def convert(scenes) -> CaptionSet:
        objects, captions = [], []
        for objs, masks, boxes in zip(scenes.objects, scenes.instance_masks, scenes.boxes):
            objects.append([GroundObject(o.shape, o.colour, m) for o, m in zip(objs, masks)])
            captions.append(normalize_caption(reading_order_caption(objs, boxes)))
        return CaptionSet(scenes.images, [[c] for c in captions], scenes.file_names, objects)

    train, val = build_scenes(image_size, seed=seed, n_train=n_train, n_val=n_val)
    return convert(train), convert(val)


def reading_order_caption(objects: Sequence, boxes: Tensor) -> str:
    """scenes' caption (its grammar, vitlab.data.scenes.caption) with the objects named left to right (by box
    centre). The generator names them in drawing order, which the image does not show (objects barely overlap):
    a reference in that order could not be predicted from the pixels, one in reading order can."""
    from .scenes import caption

    centres = ((boxes[:, 0] + boxes[:, 2]) / 2).tolist()
    order = sorted(range(len(objects)), key=lambda k: centres[k])
    return caption([objects[k] for k in order], boxes[order])


# --- a user's captions -----------------------------------------------------------------------------------------------
def find_caption_file(root: Path) -> Path:
    """The captions file a spec names: the file itself, or the one captions file in a folder."""
    if not root.exists():
        raise VitlabError(f"caption data {root} does not exist; expected 'scenes', a COCO captions .json, a "
                          "filepath,caption .csv, or a folder holding one")
    if root.is_file():
        return root
    for name in CAPTION_FILES:
        if (root / name).is_file():
            return root / name
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in (".json", ".csv", ".tsv") and p.is_file())
    if len(found) != 1:
        raise VitlabError(f"{root}: expected one captions file (captions.json / captions.csv, COCO captions JSON "
                          f"or filepath,caption CSV), found {len(found)}"
                          + (f": {', '.join(p.name for p in found[:5])}" if found else ""))
    return found[0]


def read_caption_rows(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(file name, caption) rows of a COCO captions JSON or a CSV, and the rows skipped for a bad annotation."""
    if path.suffix.lower() == ".json":
        return _coco_rows(path)
    return _csv_rows(path)


def _coco_rows(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: str(im["file_name"]) for im in data["images"]}
        annotations = list(data["annotations"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VitlabError(f"{path}: not a COCO captions file ({type(e).__name__}: {str(e)[:80]})") from None
    rows, skipped = [], []
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            skipped.append(f"{path.name} annotation {k}: unknown image_id {image_id!r}")
            continue
        rows.append((images[ann["image_id"]], str(ann.get("caption") or "")))
    return rows, skipped


def _csv_rows(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VitlabError(f"{path}: cannot read ({e})") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = "\t" if "\t" in first else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    fields = reader.fieldnames or []
    caption_key = "caption" if "caption" in fields else "title" if "title" in fields else None
    if "filepath" not in fields or caption_key is None:
        raise VitlabError(f"{path}: the header must name filepath and caption (or title) columns, got "
                          f"{', '.join(fields) or 'nothing'}")
    return [(str(r.get("filepath") or ""), str(r.get(caption_key) or "")) for r in reader], []


def _image_path(file_name: str, caption_file: Path) -> Path | None:
    base = caption_file.parent
    for candidate in (base / file_name, base.parent / file_name, base / "images" / file_name):
        if file_name and candidate.is_file():
            return candidate
    return None


def _folder_sets(root: Path, image_size: int, seed: int,
                 val_fraction: float) -> tuple[CaptionSet, CaptionSet, list[str]]:
    from .decode import load_image

    path = find_caption_file(root)
    rows, skipped = read_caption_rows(path)
    images: dict[str, Tensor] = {}
    references: dict[str, list[str]] = {}
    bad_images: set[str] = set()
    for line, (file_name, caption) in enumerate(rows, start=2 if path.suffix.lower() != ".json" else 1):
        where = f"{path.name} row {line}" if path.suffix.lower() != ".json" else f"{path.name} caption {line}"
        caption = normalize_caption(caption)
        if not caption:
            skipped.append(f"{where}: empty caption ({file_name or 'no file name'})")
            continue
        if file_name in bad_images:
            skipped.append(f"{where}: {file_name} could not be read")
            continue
        if file_name not in images:
            image_path = _image_path(file_name, path)
            if image_path is None:
                skipped.append(f"{where}: missing image {file_name or '(no file name)'}")
                bad_images.add(file_name)
                continue
            try:
                images[file_name] = load_image(image_path, image_size)
            except VitlabError as e:
                skipped.append(f"{where}: {e}")
                bad_images.add(file_name)
                continue
        references.setdefault(file_name, []).append(caption)
    names = list(references)
    if len(names) < 2:
        raise VitlabError(f"{path}: {len(names)} usable images (need at least 2 for a train/val split; "
                          f"{len(skipped)} rows skipped)")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(val_fraction * len(names))), len(names) - 1)
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])

    def subset(idx: list[int]) -> CaptionSet:
        chosen = [names[i] for i in idx]
        return CaptionSet(torch.stack([images[n] for n in chosen]), [references[n] for n in chosen], chosen)

    return subset(train_idx), subset(val_idx), skipped
