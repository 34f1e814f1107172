"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the offline default dataset.

The split is fixed — train_test_split(test_size=0.25, stratify=y, random_state=0) — so every run, and the SVC
reference below, see the same 1347 train / 450 val images.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .decode import resize_uint8
from .imageset import DataBundle, ImageSet

DIGITS_CLASSES = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_val, y_train, y_val): X float (n, 8, 8) in 0..16, y int. Exactly the sklearn split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return tuple(train_test_split(digits.images, digits.target, test_size=0.25, stratify=digits.target,
                                  random_state=0))


def digits_to_uint8(X: np.ndarray, image_size: int) -> torch.Tensor:
    """(n, 8, 8) values 0..16 -> (n, 3, S, S) uint8: round(v * 255 / 16), gray to 3 channels, bilinear resize."""
    gray = torch.from_numpy(np.round(X * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)  # (n, 1, 8, 8)
    return resize_uint8(gray, image_size).expand(-1, 3, -1, -1).contiguous()


def build_digits(image_size: int) -> DataBundle:
    X_train, X_val, y_train, y_val = digits_split()
    train = ImageSet(DIGITS_CLASSES, torch.from_numpy(y_train), image_size, images=digits_to_uint8(X_train, image_size))
    val = ImageSet(DIGITS_CLASSES, torch.from_numpy(y_val), image_size, images=digits_to_uint8(X_val, image_size))
    return DataBundle(train=train, val=val, classes=list(DIGITS_CLASSES), name="digits", mirror_safe=False,
                      source_size="8x8", references=lambda: {"reference_svc_top1": digits_svc_reference()})


@lru_cache(maxsize=1)
def digits_svc_reference() -> float:
    """Top-1 % of sklearn SVC(gamma=0.001) on the flattened raw pixels of the same split: the bar a model should
    reach."""
    from sklearn.svm import SVC

    X_train, X_val, y_train, y_val = digits_split()
    svc = SVC(gamma=0.001).fit(X_train.reshape(len(X_train), -1), y_train)
    return 100.0 * float(svc.score(X_val.reshape(len(X_val), -1), y_val))
