"""Data: sources -> robust decode -> uint8 tensors -> loaders. See vitlab.data.build_data.

    bundle = build_data("digits", image_size=32)           # or "shapes", or a path
    for images, labels in batches(bundle.train, 64, shuffle=True, epoch=epoch):
        ...                                                 # images uint8 (B, 3, S, S), labels int64 (B,)
"""
from .build import build_data
from .decode import IMAGE_EXTENSIONS, decode_image, load_image, resize_uint8, to_rgb
from .digits import digits_svc_reference
from .imageset import DataBundle, ImageSet
from .loader import batches, epoch_indices, num_batches
from .shapes import SHAPE_CLASSES

__all__ = ["IMAGE_EXTENSIONS", "SHAPE_CLASSES", "DataBundle", "ImageSet", "batches", "build_data", "decode_image",
           "digits_svc_reference", "epoch_indices", "load_image", "num_batches", "resize_uint8", "to_rgb"]
