"""Study: a spatial transformer learns to undo random affine distortions (Jaderberg et al. 2015, distorted MNIST).

Digits (or shapes) are placed on a larger canvas under a random rotation, scale and translation. Two classifiers
with the same CNN are trained on them: one behind a spatial transformer (localisation net -> affine grid -> sampler,
identity at the start), one on the identity crop (no ST). The claim: the ST learns to crop and straighten the
object, which the accuracy gap and the saved picture of its crops show.

    vitlab study stn                          # digits, 15 epochs, a few minutes on a CPU
    vitlab study stn --data shapes --heads 2  # the multi-head variant on the generated shapes
    vitlab study stn --tiny                   # seconds (the test)
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import float_arg, int_arg
from ..errors import VitlabError
from ..io import atomic_path, write_json
from ..models.stn import STNClassifier, STNConfig

log = logging.getLogger(__name__)

NAME = "stn"
HELP = "spatial transformer vs plain CNN on randomly rotated/scaled/translated digits or shapes; saves the crops"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", choices=("digits", "shapes"), help="objects to distort")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=15)
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=64)
    p.add_argument("--lr", type=float_arg(above=0.0), default=1e-3)
    p.add_argument("--heads", type=int_arg(at_least=1), default=1,
                   help="parallel spatial transformers (multi-head variant)")
    p.add_argument("--canvas", type=int_arg(at_least=8), default=48, help="side of the distorted input in pixels")
    p.add_argument("--crop", type=int_arg(at_least=8), default=32, help="side of the crops the transformer samples")
    p.add_argument("--max-rotation", type=float_arg(at_least=0.0, at_most=180.0), default=60.0,
                   help="degrees, uniform in [-max, max]")
    p.add_argument("--seed", type=int_arg(at_least=0), default=0)
    p.add_argument("--tiny", action="store_true", help="2 epochs on 256 images: seconds")


def random_affine(n: int, generator: torch.Generator, max_rotation: float = 60.0, scale: tuple[float, float] =
                  (0.7, 1.2), max_shift: float = 0.3) -> Tensor:
    """(n, 2, 3) sampling matrices: the object rotated by a, scaled by s and moved by t in the output.

    affine_grid maps output coordinates to input coordinates, so the matrix is the inverse map
    x_in = R(-a) (x_out - t) / s.
    """
    u = torch.rand(n, 4, generator=generator)
    a = (2 * u[:, 0] - 1) * math.radians(max_rotation)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    t = (2 * u[:, 2:] - 1) * max_shift                                          # (n, 2)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    A = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)   # (n, 2, 2) = R(-a) / s
    b = -(A @ t.unsqueeze(-1)).squeeze(-1)                                      # (n, 2)
    return torch.cat([A, b.unsqueeze(-1)], dim=2)


def distort(images: Tensor, canvas: int, theta: Tensor, object_fraction: float) -> Tensor:
    """uint8 (n, 3, S, S) -> float (n, 3, canvas, canvas) in [0, 1]: each image shrunk to object_fraction of the
    canvas, centred on black, then warped by theta."""
    side = max(1, round(canvas * object_fraction))
    x = F.interpolate(images.float() / 255.0, size=(side, side), mode="bilinear", align_corners=False,
                      antialias=True)
    pad = canvas - side
    x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))          # (n, 3, canvas, canvas)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import build_data

    if args.heads < 1 or args.epochs < 1:
        raise VitlabError("--heads and --epochs must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    bundle = build_data(args.data, image_size=32, seed=args.seed)
    # digits fill their 8x8 frame: shrink them to half the canvas; shapes already sit small in their frame
    fraction = 0.5 if args.data == "digits" else 1.0
    train_images, train_labels = bundle.train.images, bundle.train.labels
    val_images, val_labels = bundle.val.images, bundle.val.labels
    epochs = args.epochs
    if args.tiny:
        train_images, train_labels, val_images, val_labels = (train_images[:256], train_labels[:256],
                                                              val_images[:128], val_labels[:128])
        epochs = min(epochs, 2)
    g = torch.Generator().manual_seed(args.seed + 1)
    val_theta = random_affine(len(val_images), g, args.max_rotation)
    val_x = _normalize(distort(val_images, args.canvas, val_theta, fraction))
    cfg = STNConfig(img_size=args.canvas, num_classes=len(bundle.classes), out_size=args.crop,
                    num_transformers=args.heads)
    results: dict[str, Any] = {"data": args.data, "epochs": epochs, "heads": args.heads, "canvas": args.canvas,
                               "crop": args.crop, "max_rotation": args.max_rotation,
                               "train_images": len(train_images), "val_images": len(val_images)}
    models = {}
    for label, use_stn in (("stn", True), ("baseline", False)):
        torch.manual_seed(args.seed)
        model = STNClassifier(cfg, use_stn=use_stn)
        t0 = time.perf_counter()
        curve = train(model, train_images, train_labels, val_x, val_labels, epochs=epochs, batch_size=args.batch_size,
                      lr=args.lr, canvas=args.canvas, fraction=fraction, max_rotation=args.max_rotation,
                      seed=args.seed)
        results[f"{label}_val_top1"] = curve[-1]
        results[f"{label}_curve"] = curve
        results[f"{label}_seconds"] = round(time.perf_counter() - t0, 1)
        log.info("stn study: %s val top-1 %.1f%% after %d epochs", label, curve[-1], epochs)
        models[label] = model
    results["claim"] = ("the spatial transformer beats the same CNN without it on distorted inputs"
                        if results["stn_val_top1"] > results["baseline_val_top1"] else
                        "no gain from the spatial transformer in this run")
    picture = out / "stn_crops.png"
    plot_crops(models["stn"], val_x[:8], val_labels[:8], bundle.classes, picture)
    results["picture"] = str(picture)
    write_json(out / "stn.json", results)
    return results


def _normalize(x: Tensor) -> Tensor:
    return (x - 0.5) / 0.5                                                      # the model's mean/std (0.5, 0.5)


def train(model: STNClassifier, images: Tensor, labels: Tensor, val_x: Tensor, val_labels: Tensor, *, epochs: int,
          batch_size: int, lr: float, canvas: int, fraction: float, max_rotation: float, seed: int) -> list[float]:
    """Adam on freshly distorted training images each epoch. Returns val top-1 (%) after each epoch.

    The localisation net learns at a tenth of the rate: a fast-moving transform keeps changing what the classifier
    sees (and its BatchNorm statistics), the usual source of unstable ST training."""
    loc = [p for n, p in model.named_parameters() if n.startswith("stn.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("stn.")]
    groups = [{"params": rest, "lr": lr}] + ([{"params": loc, "lr": lr * 0.1}] if loc else [])
    opt = torch.optim.Adam(groups)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    # cosine decay to zero: the last epochs settle, so the final accuracy is not one noisy step's luck
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed + 2)
    curve = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=g)
        theta = random_affine(len(images), g, max_rotation)
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            x = _normalize(distort(images[idx], canvas, theta[idx], fraction))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        curve.append(evaluate(model, val_x, val_labels))
    return curve


@torch.no_grad()
def evaluate(model: STNClassifier, x: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return 100.0 * correct / len(x)


@torch.no_grad()
def plot_crops(model: STNClassifier, x: Tensor, labels: Tensor, classes: list[str], path: Path) -> None:
    """Row 1: distorted inputs with each transformer's sampling box; next rows: what each transformer samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    crops, theta = model.transform(x)                                          # (n, K, 3, c, c), (n, K, 2, 3)
    n, K = crops.shape[:2]
    H, W = x.shape[-2:]
    corners = torch.tensor([[-1.0, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1], [-1, -1, 1]])   # output corners, closed
    fig, axes = plt.subplots(1 + K, n, figsize=(1.5 * n, 1.6 * (1 + K)), squeeze=False)
    colours = ["tab:red", "tab:cyan", "tab:orange", "tab:green"]
    for j in range(n):
        axes[0, j].imshow(_to_image(x[j]))
        axes[0, j].set_title(classes[int(labels[j])], fontsize=8)
        for k in range(K):
            src = corners @ theta[j, k].t()                                   # (5, 2) input coords in [-1, 1]
            axes[0, j].plot((src[:, 0] + 1) * W / 2 - 0.5, (src[:, 1] + 1) * H / 2 - 0.5,
                            color=colours[k % len(colours)], linewidth=1)
            axes[1 + k, j].imshow(_to_image(crops[j, k]))
        axes[0, j].set_xlim(-0.5, W - 0.5)                                     # keep the image's frame: the box
        axes[0, j].set_ylim(H - 0.5, -0.5)                                     # may reach past it
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    for k in range(K):
        axes[1 + k, 0].set_ylabel(f"ST {k + 1} crop", fontsize=8)
    fig.suptitle("spatial transformer: sampling boxes (top) and learned crops", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _to_image(t: Tensor) -> Any:
    return (t * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
