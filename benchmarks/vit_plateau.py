"""How long the studies' micro ViT stays on its plateau on `shapes` at 32 px (issue 16): a bare training loop,
no trainer, so nothing but the model, the optimiser and the data is measured.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vit_plateau.py LR BATCH PER_CLASS EPOCHS [MODEL] [key=value ...]
    e.g. benchmarks/vit_plateau.py 1e-3 64 500 30 vit_micro_patch4_32 pos_embed='"sincos"'

AdamW (weight decay 0.05), linear warm-up over the first 10% of steps then cosine, random horizontal flips;
train on PER_CLASS generated images per class, validate on 100 per class from another stream. Prints training
loss and val top-1 per epoch. benchmarks/results/vit_plateau/README.md has the runs.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import vitlab
from vitlab.data.shapes import generate_shapes


def as_tensors(images) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.images.float() / 255                 # (n, 3, S, S) in [0, 1]
    return (x - 0.5) / 0.5, images.labels


def main() -> None:
    lr, batch, per_class, epochs = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    name = sys.argv[5] if len(sys.argv) > 5 else "vit_micro_patch4_32"
    kwargs = {k: eval(v) for k, v in (a.split("=", 1) for a in sys.argv[6:])}   # noqa: S307 (a local tool)
    torch.manual_seed(0)
    xt, yt = as_tensors(generate_shapes(per_class, 32, np.random.default_rng([0, 0])))
    xv, yv = as_tensors(generate_shapes(100, 32, np.random.default_rng([0, 1])))
    fit(vitlab.create_model(name, num_classes=6, **kwargs), xt, yt, xv, yv, lr=lr, batch=batch, epochs=epochs)


def fit(model: torch.nn.Module, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, *,
        lr: float, batch: int, epochs: int) -> None:
    """AdamW (weight decay 0.05), 10% linear warm-up then cosine, random flips; prints loss and val top-1 per
    epoch. xt, xv: (n, 3, S, S) normalised images; yt, yv: (n,) labels."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(yt) / batch)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1, s / steps))))
    t0, step = time.time(), 0
    for epoch in range(epochs):
        model.train()
        order, total, seen = torch.randperm(len(yt)), 0.0, 0
        for i in range(0, len(yt), batch):
            idx = order[i:i + batch]
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip[:, None, None, None], xt[idx].flip(3), xt[idx])
            loss = F.cross_entropy(model(x), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, seen, step = total + loss.item() * len(idx), seen + len(idx), step + 1
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1) == yv).float().mean().item()
        print(f"epoch {epoch} step {step} train_loss {total / seen:.3f} val_top1 {acc:.3f} "
              f"t {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
