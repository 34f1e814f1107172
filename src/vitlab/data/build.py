"""build_data: a data spec from the CLI ("digits", "shapes", or a path) -> a DataBundle of train and val ImageSets."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import VitlabError
from .arrays import build_cifar, build_idx, find_cifar, find_idx
from .digits import build_digits
from .imagefolder import build_imagefolder
from .imageset import DataBundle
from .shapes import build_shapes

logger = logging.getLogger(__name__)

_EXPECTED = ("expected 'digits', 'shapes', or a directory holding an ImageFolder (<dir>/<class>/<image>), "
             "a CIFAR-10/100 python folder, or MNIST idx files")


def build_data(spec: str, image_size: int, *, val_fraction: float = 0.25, seed: int = 0, cache_bytes: int = 2**31,
               shapes_per_class: int = 500) -> DataBundle:
    """Load or generate a dataset as uint8 (3, image_size, image_size) images. Raises VitlabError on a bad spec.

    digits   sklearn's 8x8 digits, fixed split (1347 train / 450 val); val_fraction and seed do not apply.
    shapes   generated from seed: shapes_per_class train and shapes_per_class // 4 val images per class.
    a path   ImageFolder (train/ + val/ or test/, else a seeded stratified val_fraction split), CIFAR-10/100 or
             MNIST idx (val = the official test split). Sets larger than cache_bytes as uint8 are decoded lazily.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise VitlabError(f"image size must be a positive integer, got {image_size!r}")
    if spec == "digits":
        return build_digits(image_size)
    if spec == "scenes" or spec.startswith(("scenes:", "scenes,")):   # single-object scenes labelled by shape
        from .object_scenes import build_object_scenes, parse_scenes_spec

        n_train, background, object_size = parse_scenes_spec(spec)
        return build_object_scenes(image_size, seed=seed, n_train=n_train, background=background,
                                   object_size=object_size)
    if spec == "numbers-en-fr" or spec.startswith("parallel:"):
        raise VitlabError(f"{spec} is text for translation: train a translation model on it (vitlab models "
                          "'transformer_*')")
    if spec == "videos" or spec.startswith("videos:"):
        raise VitlabError(f"{spec} is captioned video clips for text-video retrieval: train a video_text model on "
                          "it (mmt_micro_32, mmt_maxpool_micro_32, coll_maxpool_micro_32)")
    if spec == "shapes":
        if shapes_per_class < 1:
            raise VitlabError(f"shapes_per_class must be at least 1, got {shapes_per_class}")
        return build_shapes(image_size, seed=seed, shapes_per_class=shapes_per_class)
    root = Path(spec).expanduser()
    if not root.exists():
        raise VitlabError(f"data path {spec} does not exist; {_EXPECTED}")
    if not root.is_dir():
        raise VitlabError(f"data path {spec} is a file, not a directory; {_EXPECTED}")
    cifar = find_cifar(root)
    if cifar is not None:
        logger.info("%s: %s python folder at %s", spec, cifar[0], cifar[1])
        return build_cifar(cifar[0], cifar[1], image_size, cache_bytes=cache_bytes, name=str(spec))
    idx_files = find_idx(root)
    if idx_files is not None:
        logger.info("%s: idx files in %s", spec, idx_files["train-images"].parent)
        return build_idx(idx_files, image_size, cache_bytes=cache_bytes, name=str(spec))
    return build_imagefolder(root, image_size, val_fraction=val_fraction, seed=seed, cache_bytes=cache_bytes,
                             name=str(spec))
