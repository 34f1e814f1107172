"""Study: mean attention distance per layer and head (ViT, Dosovitskiy et al. 2021, Fig. 7 right).

The claim: the distance over which a head integrates information grows with depth, and some heads of the lowest
layers already attend to most of the image (global), while others stay local - what a CNN's early layers cannot do.
We train a ViT (vitlab.train.run_training) or load one (--checkpoint), measure the attention-weighted pixel
distance of every head on validation images, and compare with the same architecture at initialisation, whose
nearly uniform attention makes every head equally global.

    vitlab study attention-distance                       # digits at 16px, a ViT trained for a few minutes
    vitlab study attention-distance --checkpoint RUN_DIR  # a model trained elsewhere (its data is --data)
    vitlab study attention-distance --tiny                # 8px, one epoch, 32 images (the test)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_model
from ..checks import int_arg, text_arg
from ..data import build_data
from ..errors import VitlabError
from ..explain import attention_maps, model_input, patch_distances
from ..explain.distance import mean_attention_distance, pixel_patch_size
from ..io import write_json
from ..registry import create_model
from .robustness import train_or_load

log = logging.getLogger(__name__)

NAME = "attention-distance"
HELP = "mean attention distance per layer and head of a trained ViT (ViT Fig. 7 right)"
GLOBAL_FRACTION = 0.75     # a head is "global" when its distance reaches this fraction of uniform attention's


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", type=text_arg, help="data spec (training, and the images measured)")
    p.add_argument("--img-size", type=int_arg(at_least=1), default=16)
    p.add_argument("--vit", type=text_arg, default="vit_micro_patch2_16", help="ViT model name to train")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=30)
    p.add_argument("--checkpoint", type=text_arg, default=None,
                   help="measure this trained model instead of training one")
    p.add_argument("--reuse", action="store_true", help="load the model trained by an earlier run in --out")
    p.add_argument("--eval-images", type=int_arg(at_least=1), default=256, help="validation images averaged over")
    p.add_argument("--seed", type=int_arg(at_least=0), default=0)
    p.add_argument("--tiny", action="store_true", help="8px, one epoch, 32 images: seconds (the test)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        args = argparse.Namespace(**{**vars(args), "img_size": 8, "vit": "vit_micro_patch2_8", "epochs": 1,
                                     "eval_images": 32})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        model, trained_how = load_model(args.checkpoint).eval(), f"loaded from {args.checkpoint}"
    else:
        model, metrics = train_or_load(args.vit, args, out / "vit")
        trained_how = f"trained {metrics['epochs']} epochs on {args.data}: val top-1 {metrics['val_top1']:.1f}%"
    size = model.cfg.img_size if isinstance(model.cfg.img_size, int) else model.cfg.img_size[0]
    data = build_data(args.data, size)
    images = torch.stack([data.val[i][0] for i in range(min(args.eval_images, len(data.val)))])

    trained = distances(model, images)
    torch.manual_seed(args.seed)
    init_model = create_model(model.vitlab_name, **model.vitlab_args).eval()
    init_model.vitlab_meta = getattr(model, "vitlab_meta", {})
    initial = distances(init_model, images)
    grid, patch = model.patch_embed.grid_size, pixel_patch_size(model)
    uniform = float(patch_distances(grid, patch).mean())

    results = {"model": model.vitlab_name, "how": trained_how, "data": args.data, "img_size": size,
               "grid": list(grid), "patch_size": list(patch), "images": len(images),
               "uniform_attention_px": round(uniform, 3),
               "trained_px": _rounded(trained), "initial_px": _rounded(initial),
               "claims": judge(trained, initial, uniform)}
    write_json(out / "attention_distance.json", results)
    from ..explain.plots import figure_attention_distance, save_figure

    fig = figure_attention_distance(trained, uniform, f"{model.vitlab_name} on {args.data}: mean attention distance",
                                    baseline=initial)
    save_figure(fig, out / "attention_distance.png")
    log.info("attention-distance: %s", results["claims"]["summary"])
    return results


def distances(model: nn.Module, images: Tensor, batch: int = 64) -> Tensor:
    """Mean attention distance (layers, heads) in pixels over uint8 images (B, 3, S, S), batch by batch."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise VitlabError(f"{type(model).__name__} has no patch grid: attention distance needs a ViT")
    patch, prefix = pixel_patch_size(model), getattr(model, "num_prefix_tokens", 0)
    total, count = None, 0
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        maps = attention_maps(model, model_input(model, chunk))
        d = torch.stack([mean_attention_distance(a, grid, patch, prefix) for a in maps]) * len(chunk)
        total, count = (d if total is None else total + d), count + len(chunk)
    return total / count


def _rounded(t: Tensor) -> list[list[float]]:
    return [[round(float(v), 3) for v in row] for row in t]


def _spearman(x: list[float], y: list[float]) -> float:
    def ranks(v: list[float]) -> Tensor:
        return torch.tensor(v).argsort().argsort().double()
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float((rx.square().sum() * ry.square().sum()).sqrt())
    return round(float((rx * ry).sum()) / den, 3) if den else 0.0


def judge(trained: Tensor, initial: Tensor, uniform: float) -> dict[str, Any]:
    """The two signs of the claim, on the trained model; the untrained one is the contrast."""
    L = trained.shape[0]
    per_layer = trained.mean(dim=1)
    rho = _spearman(list(range(L)), per_layer.tolist())
    grows = bool(rho > 0 and per_layer[-1] > per_layer[0])
    first = trained[0]
    global_early = bool(float(first.max()) >= GLOBAL_FRACTION * uniform)
    local_early = float(first.min())
    return {
        "mean_per_layer_px": [round(float(v), 3) for v in per_layer],
        "spearman_depth_vs_distance": rho,
        "distance_grows_with_depth": grows,
        "first_layer_max_px": round(float(first.max()), 3), "first_layer_min_px": round(local_early, 3),
        "first_layer_has_global_head": global_early,
        "first_layer_spread_px": round(float(first.max() - first.min()), 3),
        "last_layer_spread_px": round(float(trained[-1].max() - trained[-1].min()), 3),
        "initial_mean_px": round(float(initial.mean()), 3),
        "summary": (f"mean distance by layer {[round(float(v), 1) for v in per_layer]} px (uniform {uniform:.1f}); "
                    f"grows with depth: {'yes' if grows else 'no'} (Spearman {rho}); a global head in layer 1 "
                    f"(>= {GLOBAL_FRACTION:.0%} of uniform): {'yes' if global_early else 'no'} "
                    f"(max {float(first.max()):.1f}, min {local_early:.1f} px)"),
    }
