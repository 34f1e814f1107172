"""Data: sources -> robust decode -> uint8 tensors -> loaders. See vitlab.data.build_data.

    bundle = build_data("digits", image_size=32)           # or "shapes", or a path
    for images, labels in batches(bundle.train, 64, shuffle=True, epoch=epoch):
        ...                                                 # images uint8 (B, 3, S, S), labels int64 (B,)

Detection: build_detection_data("scenes" or a COCO folder, S) and detection_batches; the box-aware augmentation is
vitlab.data.box_augment.DetectionAugment (not imported here: it pulls in kornia).
"""
from .build import build_data
from .detection import DetectionBundle, DetectionSet, build_detection_data, detection_batches, is_coco_folder
from .decode import IMAGE_EXTENSIONS, decode_image, load_image, resize_uint8, to_rgb
from .digits import digits_svc_reference
from .imageset import DataBundle, ImageSet
from .loader import batches, epoch_indices, num_batches
from .shapes import SHAPE_CLASSES
from .scenes import build_scenes, build_scenes_detection

__all__ = ["IMAGE_EXTENSIONS", "SHAPE_CLASSES", "DataBundle", "DetectionBundle", "DetectionSet",
           "ImageSet", "batches", "build_data", "build_detection_data", "build_scenes", "build_scenes_detection",
           "decode_image", "detection_batches", "digits_svc_reference", "epoch_indices", "is_coco_folder",
           "load_image", "num_batches", "resize_uint8", "to_rgb"]
