"""Study: how gracefully do a ViT and a ResNet trained on the same data degrade under occlusion, shuffling, noise
and adversarial attack? (Naseer et al., "Intriguing Properties of Vision Transformers", NeurIPS 2021: ViTs keep
much of their accuracy when random patches are dropped, where CNNs collapse.)

Both models are trained with `vitlab.train.run_training` on the same data at the same size (or loaded with
--reuse from an earlier run of this study). Then, on validation images:
  patch drop      a random fraction (0-90%) of the ViT's patch grid blacked out (the same masks for both models)
  patch shuffle   the image cut into g x g blocks, randomly permuted
  Gaussian noise  sigma in pixel units ([0, 1] images), clipped
  FGSM / PGD      L-inf attacks of radius eps (pixel units) on the cross-entropy (Goodfellow et al. 2015;
                  Madry et al. 2018: random start, steps of 2.5 eps / steps, projection)
The claim's sign: the ViT's mean relative accuracy (accuracy / clean accuracy) over the drop fractions is the
higher one.

    vitlab study robustness                 # digits at 16px, both models trained, a few minutes
    vitlab study robustness --tiny          # 8px, one epoch each, a handful of images (the test)
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_model
from ..checks import int_arg, text_arg
from ..data import build_data
from ..data.augment import Normalize
from ..errors import VitlabError
from ..explain.distance import pixel_patch_size
from ..io import write_json

log = logging.getLogger(__name__)

NAME = "robustness"
HELP = "ViT vs ResNet under patch drop, patch shuffle, noise and FGSM/PGD (Naseer et al. 2021)"

DROP_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SHUFFLE_GRIDS = (1, 2, 4, 8)
NOISE_SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", type=text_arg,
                   help="data spec both models are trained on (default digits)")
    p.add_argument("--img-size", type=int_arg(at_least=1), default=16)
    p.add_argument("--vit", type=text_arg, default="vit_micro_patch2_16", help="ViT model name")
    p.add_argument("--resnet", type=text_arg, default="resnet_micro_32", help="ResNet model name (built at --img-size)")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=30, help="training epochs of each model")
    p.add_argument("--eval-images", type=int_arg(at_least=1), default=450,
                   help="validation images evaluated (all of digits')")
    p.add_argument("--attack-images", type=int_arg(at_least=1), default=256,
                   help="validation images attacked (FGSM/PGD)")
    p.add_argument("--pgd-steps", type=int_arg(at_least=1), default=5)
    p.add_argument("--repeats", type=int_arg(at_least=1), default=3,
                   help="random masks / permutations / noise draws averaged")
    p.add_argument("--reuse", action="store_true", help="load the models trained by an earlier run in --out")
    p.add_argument("--seed", type=int_arg(at_least=0), default=0)
    p.add_argument("--tiny", action="store_true", help="8px, one epoch, 32 images: seconds (the test)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        args = argparse.Namespace(**{**vars(args), "img_size": 8, "vit": "vit_micro_patch2_8", "epochs": 1,
                                     "eval_images": 32, "attack_images": 16, "pgd_steps": 2, "repeats": 1})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"ViT": train_or_load(args.vit, args, out / "vit"),
              "ResNet": train_or_load(args.resnet, args, out / "resnet")}
    patch = pixel_patch_size(models["ViT"][0])
    data = build_data(args.data, args.img_size)
    n = min(args.eval_images, len(data.val))
    images = torch.stack([data.val[i][0] for i in range(n)]).float() / 255.0          # (n, 3, S, S) in [0, 1]
    labels = data.val.labels[:n]
    results: dict[str, Any] = {"data": args.data, "img_size": args.img_size, "eval_images": n,
                               "patch_size": list(patch), "models": {}}
    for label, (model, metrics) in models.items():
        pixel_model = pixel_space(model)
        results["models"][label] = {"name": metrics["model"], "train_epochs": metrics["epochs"],
                                    "val_top1_train_report": metrics["val_top1"],
                                    **evaluate_all(pixel_model, images, labels, patch, args)}
    results["claims"] = judge(results["models"])
    write_json(out / "robustness.json", results)
    plot(results, out / "robustness.png")
    log.info("robustness: %s", results["claims"]["summary"])
    return results


# --- models ----------------------------------------------------------------------------------------------------
def train_or_load(name: str, args: argparse.Namespace, run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A model trained on args.data at args.img_size by run_training (or, with args.reuse, loaded from run_dir)."""
    from ..train import TrainConfig, run_training

    metrics_path = run_dir / "metrics.json"
    if getattr(args, "reuse", False) and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        log.info("%s: reusing %s (%s epochs, val top-1 %.1f%%)", NAME, run_dir, metrics["epochs"], metrics["val_top1"])
    else:
        cfg = TrainConfig(model=name, data=args.data, out=str(run_dir), epochs=args.epochs, img_size=args.img_size,
                          warmup_epochs=min(2.0, args.epochs / 5), seed=args.seed)
        metrics = run_training(cfg, overwrite=True)
    return load_model(run_dir).eval(), metrics


def pixel_space(model: nn.Module) -> nn.Module:
    """The model behind its own normalisation: input float (B, 3, H, W) in [0, 1] (attacks live in pixel space)."""
    meta = getattr(model, "vitlab_meta", None) or {}
    mean = tuple(meta.get("mean") or model.cfg.mean)
    std = tuple(meta.get("std") or model.cfg.std)
    return nn.Sequential(Normalize(mean, std), model).eval()


# --- corruptions -------------------------------------------------------------------------------------------------
def drop_patches(images: Tensor, fraction: float, patch: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Black out round(fraction * N) random patches of each image (N = patches of the grid)."""
    B, _, H, W = images.shape
    gh, gw = H // patch[0], W // patch[1]
    k = round(fraction * gh * gw)
    if k == 0:
        return images
    order = torch.rand(B, gh * gw, generator=generator).argsort(dim=1)
    keep = torch.ones(B, gh * gw)
    keep.scatter_(1, order[:, :k], 0.0)
    mask = keep.view(B, 1, gh, gw).repeat_interleave(patch[0], 2).repeat_interleave(patch[1], 3)   # (B, 1, H, W)
    return images * mask


def shuffle_patches(images: Tensor, grid: int, generator: torch.Generator) -> Tensor:
    """Cut each image into grid x grid blocks and permute them randomly (grid 1 = unchanged)."""
    if grid == 1:
        return images
    B, C, H, W = images.shape
    if H % grid or W % grid:
        raise VitlabError(f"a {H}x{W} image does not split into a {grid}x{grid} grid")
    bh, bw = H // grid, W // grid
    blocks = images.view(B, C, grid, bh, grid, bw).permute(0, 2, 4, 1, 3, 5).reshape(B, grid * grid, C, bh, bw)
    perm = torch.rand(B, grid * grid, generator=generator).argsort(dim=1)
    blocks = blocks[torch.arange(B)[:, None], perm]                                  # (B, g*g, C, bh, bw)
    return blocks.view(B, grid, grid, C, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def gaussian_noise(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def fgsm(model: nn.Module, images: Tensor, labels: Tensor, eps: float) -> Tensor:
    """One signed-gradient step of size eps (Goodfellow et al. 2015)."""
    if eps == 0:
        return images
    x = images.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    return (images + eps * grad.sign()).clamp(0, 1)


def pgd(model: nn.Module, images: Tensor, labels: Tensor, eps: float, steps: int,
        generator: torch.Generator) -> Tensor:
    """Projected gradient descent in the L-inf ball (Madry et al. 2018): random start, steps of 2.5 eps / steps."""
    if eps == 0:
        return images
    alpha = 2.5 * eps / steps
    x = (images + (torch.rand(images.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
        x = x.detach() + alpha * grad.sign()
        x = torch.min(torch.max(x, images - eps), images + eps).clamp(0, 1)
    return x.detach()


# --- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 256) -> float:
    correct = sum(int((model(images[i:i + batch]).argmax(-1) == labels[i:i + batch]).sum())
                  for i in range(0, len(images), batch))
    return 100.0 * correct / len(images)


def evaluate_all(model: nn.Module, images: Tensor, labels: Tensor, patch: tuple[int, int],
                 args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy (percent) under every corruption; random draws are seeded identically for every model."""
    def averaged(corrupt) -> float:
        gens = [torch.Generator().manual_seed(args.seed + 1000 + r) for r in range(args.repeats)]
        return round(sum(accuracy(model, corrupt(g), labels) for g in gens) / args.repeats, 2)

    size = images.shape[-1]
    out: dict[str, Any] = {"clean": round(accuracy(model, images, labels), 2)}
    out["patch_drop"] = {f: averaged(lambda g, f=f: drop_patches(images, f, patch, g)) for f in DROP_FRACTIONS}
    out["patch_shuffle"] = {g: averaged(lambda gen, g=g: shuffle_patches(images, g, gen))
                            for g in SHUFFLE_GRIDS if size % g == 0}
    out["noise"] = {s: averaged(lambda g, s=s: gaussian_noise(images, s, g)) for s in NOISE_SIGMAS}
    m = min(args.attack_images, len(images))
    x, y = images[:m], labels[:m]
    out["fgsm"] = {round(e * 255, 3): round(accuracy(model, fgsm(model, x, y, e), y), 2) for e in EPSILONS}
    gen = torch.Generator().manual_seed(args.seed)
    out["pgd"] = {round(e * 255, 3): round(accuracy(model, pgd(model, x, y, e, args.pgd_steps, gen), y), 2)
                  for e in EPSILONS}
    out["attack_images"] = m
    return out


def relative_area(curve: dict, clean: float) -> float | None:
    """Mean of accuracy / clean accuracy over the corrupted levels (all but the first, the uncorrupted one)."""
    values = list(curve.values())[1:]
    return round(sum(values) / len(values) / clean, 4) if clean > 0 and values else None


def judge(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per corruption: which model keeps more of its clean accuracy (mean relative accuracy)."""
    vit, cnn = models["ViT"], models["ResNet"]
    claims: dict[str, Any] = {}
    for key in ("patch_drop", "patch_shuffle", "noise", "fgsm", "pgd"):
        v, r = relative_area(vit[key], vit["clean"]), relative_area(cnn[key], cnn["clean"])
        claims[key] = {"vit_relative": v, "resnet_relative": r,
                       "vit_more_robust": None if v is None or r is None else v > r}
    reproduced = claims["patch_drop"]["vit_more_robust"]
    claims["reproduced"] = reproduced
    claims["summary"] = (f"patch drop: ViT keeps {claims['patch_drop']['vit_relative']} of its clean accuracy "
                         f"({vit['clean']}%), ResNet {claims['patch_drop']['resnet_relative']} ({cnn['clean']}%) "
                         f"-> Naseer et al.'s claim {'reproduced' if reproduced else 'not reproduced'}")
    return claims


def plot(results: dict[str, Any], path: Path) -> None:
    from ..explain.plots import figure_curves, new_figure, save_figure

    panels = [("patch_drop", "fraction of patches dropped"), ("patch_shuffle", "shuffle grid (g x g blocks)"),
              ("noise", "Gaussian noise sigma"), ("fgsm", "FGSM eps (x 1/255)"), ("pgd", "PGD eps (x 1/255)")]
    fig = new_figure(3.6 * len(panels), 3.8)
    for i, (key, xlabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        curves = {f"{label} ({r['name']})": {"x": [float(k) for k in r[key]], "y": list(r[key].values())}
                  for label, r in results["models"].items()}
        claim = results["claims"][key]
        title = (f"{key.replace('_', ' ')}\nkept (mean acc / clean): ViT {claim['vit_relative']}, "
                 f"ResNet {claim['resnet_relative']}")
        figure_curves(curves, xlabel, "top-1 accuracy (%)" if i == 0 else "", title, ax_fig=(fig, ax))
        ax.set_ylim(0, 100)
    fig.suptitle(f"Robustness on {results['data']} at {results['img_size']}px ({results['eval_images']} validation "
                 f"images; attacks on {next(iter(results['models'].values()))['attack_images']})", fontsize=10)
    save_figure(fig, path)
