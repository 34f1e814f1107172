"""Which change to `shapes` lets the studies' micro ViT learn it from scratch in ~1500 steps (issue 16): the
object size, a plain background, the pooling. A bare loop, as benchmarks/vit_plateau.py (AdamW, weight decay
0.05, 10% warm-up then cosine, random flips, batch 64, the jax init), on PER_CLASS x 6 images at 32 px.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vit_object_size.py OBJECTS BACKGROUND POOL PER_CLASS EPOCHS [LR]
    e.g. benchmarks/vit_object_size.py large textured cls 2000 8

OBJECTS small|large (data.shapes.OBJECT_RADII), BACKGROUND textured|plain (plain: one random colour and the pixel
grain), POOL cls|avg. Prints training loss and val top-1 (600 images of another stream) per epoch. The runs are
in benchmarks/results/vit_plateau/README.md.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from vit_plateau import as_tensors, fit   # benchmarks/: the same loop

import vitlab
import vitlab.data.shapes as shapes


def plain_backgrounds(n: int, S: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random colour per image plus the textured background's pixel grain (std 12), no smooth field."""
    base = rng.uniform(0, 255, (n, 3))
    image = np.broadcast_to(base[:, None, None, :], (n, S, S, 3)).astype(np.float32)    # (n, S, S, 3)
    return image + rng.standard_normal((n, S, S, 3), dtype=np.float32) * 12, base


def main() -> None:
    objects, background, pool = sys.argv[1], sys.argv[2], sys.argv[3]
    per_class, epochs = int(sys.argv[4]), int(sys.argv[5])
    lr = float(sys.argv[6]) if len(sys.argv) > 6 else 1e-3
    if background == "plain":
        shapes._backgrounds = plain_backgrounds
    torch.manual_seed(0)
    xt, yt = as_tensors(shapes.generate_shapes(per_class, 32, np.random.default_rng([0, 0]), objects=objects))
    xv, yv = as_tensors(shapes.generate_shapes(100, 32, np.random.default_rng([0, 1]), objects=objects))
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=6, weight_init="jax", pool=pool)
    fit(model, xt, yt, xv, yv, lr=lr, batch=64, epochs=epochs)


if __name__ == "__main__":
    main()
