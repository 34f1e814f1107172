"""Study: a spatial transformer learns to undo random affine distortions (Jaderberg et al. 2015, distorted MNIST).

Digits (or shapes) are placed on a larger canvas under a random rotation, scale and translation. Two classifiers
with the same CNN are trained on them: one behind a spatial transformer (localisation net -> affine grid -> sampler,
identity at the start), one on the identity crop (no ST). The claim: the ST learns to crop and straighten the
object, which the accuracy gap and the saved picture of its crops show. The paper's distorted MNIST (rotated,
scaled, translated, 60x60 canvas) is what this reproduces at 48 px; the verdict (vitlab.studies.verdict, paired
over --seeds seeds: same data, same distortions, same initial CNN) is on "ST-CNN val top-1 > CNN val top-1".

    vitlab study stn                          # digits, 15 epochs, 3 seeds: ~10 min on 2 cores
    vitlab study stn --data shapes --heads 2  # the multi-head variant on the generated shapes
    vitlab study stn --quick                  # one epoch on 64 images: a smoke test (no verdict)
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
from ..io import atomic_path
from ..models.stn import STNClassifier, STNConfig
from . import _common as common
from .verdict import compare

log = logging.getLogger(__name__)

NAME = "stn"
HELP = "spatial transformer vs plain CNN on randomly rotated/scaled/translated digits or shapes; saves the crops"
CLAIM = "a spatial transformer learns to undo the distortion (crop, straighten) and beats the same CNN without it"
PAPER = "Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015, Table 1 (distorted MNIST)"


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
    common.add_seed_arguments(p)


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
    seeds = common.seed_list(args)
    epochs = 1 if args.quick else args.epochs
    curves: dict[str, list[list[float]]] = {"stn": [], "baseline": []}
    seconds: dict[str, list[float]] = {"stn": [], "baseline": []}
    for seed in seeds:
        torch.manual_seed(seed)
        bundle = build_data(args.data, image_size=32, seed=seed)
        # digits fill their 8x8 frame: shrink them to half the canvas; shapes already sit small in their frame
        fraction = 0.5 if args.data == "digits" else 1.0
        train_images, train_labels = bundle.train.images, bundle.train.labels
        val_images, val_labels = bundle.val.images, bundle.val.labels
        if args.quick:
            train_images, train_labels, val_images, val_labels = (train_images[:64], train_labels[:64],
                                                                  val_images[:32], val_labels[:32])
        g = torch.Generator().manual_seed(seed + 1)
        val_theta = random_affine(len(val_images), g, args.max_rotation)
        val_x = _normalize(distort(val_images, args.canvas, val_theta, fraction))
        cfg = STNConfig(img_size=args.canvas, num_classes=len(bundle.classes), out_size=args.crop,
                        num_transformers=args.heads)
        for label, use_stn in (("stn", True), ("baseline", False)):
            torch.manual_seed(seed)
            model = STNClassifier(cfg, use_stn=use_stn)
            t0 = time.perf_counter()
            curve = train(model, train_images, train_labels, val_x, val_labels, epochs=epochs,
                          batch_size=args.batch_size, lr=args.lr, canvas=args.canvas, fraction=fraction,
                          max_rotation=args.max_rotation, seed=seed)
            curves[label].append(curve)
            seconds[label].append(time.perf_counter() - t0)
            log.info("stn study: %s seed %d val top-1 %.1f%% after %d epochs", label, seed, curve[-1], epochs)
            if use_stn and seed == seeds[0]:
                plot_crops(model, val_x[:8], val_labels[:8], bundle.classes, out / "stn_crops.png")
    results = summarize(curves, seconds, args, seeds, epochs)
    return common.finish(results, out, NAME, log=log, difference="%+.2f points", prefix="stn study",
                         plots={"stn.png": lambda path: plot_curves(curves, results, path)})


def summarize(curves: dict[str, list[list[float]]], seconds: dict[str, list[float]], args: argparse.Namespace,
              seeds: list[int], epochs: int) -> dict[str, Any]:
    final = {label: [c[-1] for c in runs] for label, runs in curves.items()}
    table = [{"model": {"stn": f"ST-CNN ({args.heads} transformer(s))", "baseline": "CNN"}[label],
              "val top-1 %": common.summary(final[label])["text"],
              "train s": common.summary(seconds[label], 1)["text"]} for label in curves]
    claim = common.claim("the ST-CNN beats the same CNN without the spatial transformer (val top-1)", PAPER,
                         compare(final["stn"], final["baseline"], paired=True, quick=args.quick))
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds, "data": args.data,
            "epochs": epochs, "heads": args.heads, "canvas": args.canvas, "crop": args.crop,
            "max_rotation": args.max_rotation, "claims": [claim], "table": table,
            "stn_val_top1": common.summary(final["stn"]), "baseline_val_top1": common.summary(final["baseline"]),
            "curves": curves, "picture": "stn_crops.png"}


def plot_curves(curves: dict[str, list[list[float]]], results: dict[str, Any], path: Path) -> None:
    """Validation top-1 per epoch, mean ± std over seeds, for the ST-CNN and the CNN."""
    from ..explain.plots import new_figure

    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for label, name in (("stn", "ST-CNN"), ("baseline", "CNN")):
        runs = curves[label]
        common.errorbar_plot(ax, range(1, len(runs[0]) + 1), [[r[e] for r in runs] for e in range(len(runs[0]))],
                             name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(common.quick_title(f"distorted {results['data']}, {len(results['seeds'])} seed(s)",
                                    results["quick"]), fontsize=9)
    common.save(fig, path)


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
