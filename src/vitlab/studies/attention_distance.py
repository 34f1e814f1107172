"""Study: mean attention distance per layer and head (ViT, Dosovitskiy et al. 2021, Fig. 7 right).

The claim: the distance over which a head integrates information grows with depth, and the lowest layers hold a
spread of heads - some local, some already attending to most of the image (global) - what a CNN's early layers
cannot do. The paper measured ViT-L/16 trained on JPT-300M at 224 px (196 tokens); their Fig. 7 shows distances
from ~10 to ~120 px in layer 1 and all heads near ~120 px at the top.

Earlier versions of this study used 8x8 digits upsampled to 16 px with patch 2 (a 8x8 grid of mostly blank
patches): a model that barely needs attention, and flat distances. Here a ViT with patch 4 on 32 px `shapes`
(64 tokens; the object is small and somewhere on a textured background, so where to look matters) is trained with
--seeds seeds until far past chance, and every head's attention-weighted pixel distance on validation images is
compared with the same architecture at initialisation (nearly uniform attention: every head alike) and with the
uniform-attention bound. Two verdicts (vitlab.studies.verdict, paired over seeds):
  growth   last layer minus first layer mean distance, trained > at initialisation
  spread   max minus min head distance in layer 1, trained > at initialisation

    vitlab study attention-distance                       # 3 seeds x 30 epochs on 3000 shapes: ~20 min on 2 cores
    vitlab study attention-distance --checkpoint RUN_DIR  # a model trained elsewhere (its data is --data): 1 seed
    vitlab study attention-distance --quick               # 16 px, one epoch on 36 images: a smoke test, no verdict
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
from ..registry import create_model
from . import _common as common
from .verdict import compare, mean_std

log = logging.getLogger(__name__)

NAME = "attention-distance"
HELP = "mean attention distance per layer and head of a trained ViT vs initialisation (ViT Fig. 7 right)"
CLAIM = ("the attention distance grows with depth; the lowest layers already hold both local and global heads "
         "(a CNN's receptive field is local there)")
PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021, Fig. 7 (right)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes", type=text_arg,
                   help="data spec (training, and the images measured; default generated shapes)")
    p.add_argument("--img-size", type=int_arg(at_least=8), default=32)
    p.add_argument("--train-per-class", type=int_arg(at_least=1), default=500,
                   help="shapes training images per class (6 classes)")
    p.add_argument("--vit", type=text_arg, default="vit_micro_patch4_32", help="ViT model name to train")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=30)
    p.add_argument("--checkpoint", type=text_arg, default=None,
                   help="measure this trained model instead of training (one seed: no verdict)")
    p.add_argument("--reuse", action="store_true", help="load the models trained by an earlier run in --out")
    p.add_argument("--eval-images", type=int_arg(at_least=1), default=256, help="validation images averaged over")
    common.add_seed_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args = common.quick_args(args, NAME, add_arguments, img_size=common.QUICK_SIZE, epochs=1, eval_images=16)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed] if args.checkpoint else common.seed_list(args)
    data_spec = args.data if args.checkpoint else common.study_data(args, out, args.img_size, args.train_per_class)
    per_seed = []
    for seed in seeds:
        if args.checkpoint:
            model, how = load_model(args.checkpoint).eval(), f"loaded from {args.checkpoint}"
        else:
            run_dir = out / f"vit-seed{seed}"
            if not (args.reuse and (run_dir / "metrics.json").is_file()):
                common.train(args.vit, data_spec, run_dir, epochs=args.epochs, seed=seed, img_size=args.img_size,
                             quick=args.quick)
            model, how = load_model(run_dir).eval(), f"trained {args.epochs} epochs on {args.data}"
        size = model.cfg.img_size if isinstance(model.cfg.img_size, int) else model.cfg.img_size[0]
        data = build_data(data_spec, size)
        images = torch.stack([data.val[i][0] for i in range(min(args.eval_images, len(data.val)))])
        with torch.no_grad():
            top1 = 100.0 * float((model(model_input(model, images)).argmax(-1) == data.val.labels[:len(images)])
                                 .float().mean())
        torch.manual_seed(seed)
        init_model = create_model(model.vitlab_name, **model.vitlab_args).eval()
        init_model.vitlab_meta = getattr(model, "vitlab_meta", {})
        grid, patch = model.patch_embed.grid_size, pixel_patch_size(model)
        per_seed.append({"seed": seed, "how": how, "val_top1": top1, "trained_px": distances(model, images),
                         "initial_px": distances(init_model, images), "grid": list(grid), "patch": list(patch)})
    uniform = float(patch_distances(tuple(per_seed[0]["grid"]), tuple(per_seed[0]["patch"])).mean())
    results = summarize(per_seed, uniform, args, seeds, len(images))
    return common.finish(results, out, NAME, log=log, difference="%+.2f px",
                         plots={"attention_distance.png": lambda path: plot(per_seed, uniform, results, path)})


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


def growth(d: Tensor) -> float:
    """Last layer's mean head distance minus the first layer's (pixels)."""
    return float(d[-1].mean() - d[0].mean())


def first_layer_spread(d: Tensor) -> float:
    """Max minus min head distance in the first layer (pixels): local and global heads side by side."""
    return float(d[0].max() - d[0].min())


def spearman(values: list[float]) -> float:
    """Spearman's rho of (layer index, value): does the value rise with depth, monotonically?"""
    r = torch.tensor(values).argsort().argsort().double()
    i = torch.arange(len(values)).double()
    r, i = r - r.mean(), i - i.mean()
    den = float((r.square().sum() * i.square().sum()).sqrt())
    return float((r * i).sum()) / den if den else 0.0


def summarize(per_seed: list[dict[str, Any]], uniform: float, args: argparse.Namespace, seeds: list[int],
              n_images: int) -> dict[str, Any]:
    trained = [s["trained_px"] for s in per_seed]
    initial = [s["initial_px"] for s in per_seed]
    L = trained[0].shape[0]
    table = []
    for layer in range(L):
        table.append({"layer": layer + 1,
                      "trained mean px": common.summary([float(t[layer].mean()) for t in trained])["text"],
                      "trained min head px": common.summary([float(t[layer].min()) for t in trained])["text"],
                      "trained max head px": common.summary([float(t[layer].max()) for t in trained])["text"],
                      "initial mean px": common.summary([float(t[layer].mean()) for t in initial])["text"],
                      "uniform bound px": f"{uniform:.2f}"})
    claims = [
        common.claim("mean attention distance grows with depth (last minus first layer, trained vs at init)",
                     "ViT Fig. 7 right", compare([growth(t) for t in trained], [growth(t) for t in initial],
                                                 paired=True, quick=args.quick),
                     trained_growth_px=common.summary([growth(t) for t in trained]),
                     initial_growth_px=common.summary([growth(t) for t in initial]),
                     spearman_depth_trained=common.summary([spearman(t.mean(1).tolist()) for t in trained], 3)),
        common.claim("layer 1 holds local and global heads (head spread, trained vs at init)", "ViT Fig. 7 right",
                     compare([first_layer_spread(t) for t in trained], [first_layer_spread(t) for t in initial],
                             paired=True, quick=args.quick),
                     trained_spread_px=common.summary([first_layer_spread(t) for t in trained]),
                     initial_spread_px=common.summary([first_layer_spread(t) for t in initial])),
    ]
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds, "data": args.data,
            "img_size": args.img_size, "model": args.vit if not args.checkpoint else args.checkpoint,
            "images": n_images, "uniform_attention_px": uniform,
            "val_top1": common.summary([s["val_top1"] for s in per_seed]),
            "claims": claims, "table": table,
            "per_seed": [{**s, "trained_px": _rounded(s["trained_px"]), "initial_px": _rounded(s["initial_px"])}
                         for s in per_seed]}


def _rounded(t: Tensor) -> list[list[float]]:
    return [[round(float(v), 3) for v in row] for row in t]


def plot(per_seed: list[dict[str, Any]], uniform: float, results: dict[str, Any], path: Path) -> None:
    from ..explain.plots import new_figure

    fig = new_figure(10.5, 4.0)
    for k, (key, title) in enumerate((("trained_px", "trained"), ("initial_px", "at initialisation"))):
        ax = fig.add_subplot(1, 2, k + 1)
        L, H = per_seed[0][key].shape
        for j, s in enumerate(per_seed):
            xs = torch.arange(1, L + 1).repeat_interleave(H).float() + 0.08 * (j - (len(per_seed) - 1) / 2)
            ax.scatter(xs.numpy(), s[key].flatten().numpy(), s=10, alpha=0.5, color=f"C{j}",
                       label=f"heads, seed {s['seed']}")
        per_layer = [[float(s[key][layer].mean()) for s in per_seed] for layer in range(L)]
        common.errorbar_plot(ax, range(1, L + 1), per_layer, "layer mean (± std over seeds)", color="black")
        ax.axhline(uniform, color="gray", linestyle="--", linewidth=1, label="uniform attention")
        ax.set_xlabel("network depth (layer)")
        ax.set_ylabel("mean attention distance (pixels)")
        ax.set_ylim(0, uniform * 1.25)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, loc="lower right")
    acc, _ = mean_std(results["val_top1"]["per_seed"])
    fig.suptitle(common.quick_title(f"{results['model']} on {results['data']} ({results['img_size']} px, val top-1 "
                                    f"{acc:.1f}%): mean attention distance", results["quick"]), fontsize=10)
    common.save(fig, path)
