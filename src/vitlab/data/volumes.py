"""`volumes`: generated 3-D volumes of ellipsoids, boxes and tubes in noise, with voxel labels, offline and seeded.

Each volume (1 channel, S^3, default 32^3) holds 2..max_objects objects of three classes: 1 ellipsoid, 2 box, 3 tube
(a cylinder along a random direction), each randomly sized and rotated, with its own brightness drawn from one range
shared by all classes (so the class is told by shape, not by intensity). A later object covers an earlier one. The
background is a smooth random field; Gaussian noise lies over everything.

    train, val = build_volumes(32, seed=0, n_train=500, n_val=100)    # VolumeSet each
    train.images   # (N, 1, S, S, S) uint8
    train.masks    # (N, S, S, S) uint8: 0 background, 1 ellipsoid, 2 box, 3 tube

Everything is drawn from numpy Generators seeded by (seed, split): same seed, identical bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError

VOLUME_CLASSES = ("background", "ellipsoid", "box", "tube")
MIN_VOLUME_SIZE = 8

_TRAIN_STREAM, _VAL_STREAM = 0, 1
_NOISE = 0.07              # std of the voxel noise, on the 0..1 intensity scale
_OBJECT_BRIGHTNESS = (0.55, 0.95)   # every object's mean intensity, whatever its class
_BACKGROUND = (0.1, 0.35)          # the background field's mean


@dataclass
class VolumeSet:
    images: Tensor          # (N, 1, S, S, S) uint8
    masks: Tensor           # (N, S, S, S) uint8 class index per voxel

    def __len__(self) -> int:
        return len(self.images)


def build_volumes(size: int = 32, *, seed: int = 0, n_train: int = 500, n_val: int = 100,
                  max_objects: int = 4) -> tuple[VolumeSet, VolumeSet]:
    """Train and val volumes, each from its own stream of seed."""
    for name, value, least in (("volume size", size, MIN_VOLUME_SIZE), ("train count", n_train, 1),
                               ("val count", n_val, 1), ("max objects", max_objects, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise VitlabError(f"volumes {name} must be an integer of at least {least}, got {value!r}")
    train = generate_volumes(n_train, size, np.random.default_rng([seed % 2**64, _TRAIN_STREAM]), max_objects)
    val = generate_volumes(n_val, size, np.random.default_rng([seed % 2**64, _VAL_STREAM]), max_objects)
    return train, val


def generate_volumes(n: int, size: int, rng: np.random.Generator, max_objects: int = 4) -> VolumeSet:
    """n volumes drawn from rng one after another (a prefix does not depend on n)."""
    S = size
    grid = (np.stack(np.meshgrid(*[np.arange(S, dtype=np.float32) + 0.5] * 3, indexing="ij"), -1)
            / S)                                                     # (S, S, S, 3) voxel centres in [0, 1]
    images = np.empty((n, 1, S, S, S), dtype=np.uint8)
    masks = np.zeros((n, S, S, S), dtype=np.uint8)
    for i in range(n):
        volume = _background(rng, S)
        label = np.zeros((S, S, S), dtype=np.uint8)
        for _ in range(int(rng.integers(min(2, max_objects), max_objects + 1))):
            cls = int(rng.integers(1, len(VOLUME_CLASSES)))
            inside = _object(cls, grid, rng)
            volume[inside] = rng.uniform(*_OBJECT_BRIGHTNESS)
            label[inside] = cls
        volume += rng.standard_normal(volume.shape, dtype=np.float32) * _NOISE
        images[i, 0] = np.clip(np.round(volume * 255), 0, 255).astype(np.uint8)
        masks[i] = label
    return VolumeSet(torch.from_numpy(images), torch.from_numpy(masks))


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """(S, S, S) float32: a smooth random field (a 4^3 grid of values, trilinearly upsampled)."""
    coarse = rng.uniform(*_BACKGROUND) + rng.normal(0, 0.06, (1, 1, 4, 4, 4))
    field = F.interpolate(torch.from_numpy(coarse.astype(np.float32)), size=(S, S, S), mode="trilinear",
                          align_corners=False)
    return field[0, 0].numpy().copy()


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def _object(cls: int, grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The voxels (S, S, S) bool inside one object of class cls (1 ellipsoid, 2 box, 3 tube), in the object's
    rotated frame centred at a random point away from the borders."""
    centre = rng.uniform(0.3, 0.7, 3).astype(np.float32)
    local = (grid - centre) @ _rotation(rng)                         # (S, S, S, 3) coordinates in the object frame
    if cls == 1:
        radii = rng.uniform(0.12, 0.25, 3).astype(np.float32)
        return ((local / radii) ** 2).sum(-1) <= 1.0
    if cls == 2:
        half = rng.uniform(0.1, 0.2, 3).astype(np.float32)
        return (np.abs(local) <= half).all(-1)
    radius, half_length = rng.uniform(0.05, 0.08), rng.uniform(0.25, 0.4)
    return (local[..., 1] ** 2 + local[..., 2] ** 2 <= radius ** 2) & (np.abs(local[..., 0]) <= half_length)
