"""Study: throughput and memory against resolution for ViT, Swin and ConvNeXt (Liu et al., "Swin Transformer",
ICCV 2021, Table 1(a); the lecture's complexity slides).

The claim: a ViT's global attention makes its cost grow with the square of the token count, so its throughput
falls faster with resolution than that of Swin (attention in fixed windows: linear) or a ConvNeXt (convolutions:
linear). Swin's Table 1(a) on a V100: at 224 px Swin-T 755 img/s vs DeiT-S 940 and DeiT-B 292; at 384 px Swin-B
85 img/s vs ViT-B/16 86 - at ImageNet sizes the n^2 term is not yet dominant. We measure, in one process on this
CPU, inference images/s (the best of --repeats forward passes of a batch, after a warm-up) and forward+backward
activation memory of the micro variants at 32..128 px (patch 4 / 2: 64..1024 ViT tokens), fit log-log slopes
against pixels, repeat the timing --seeds rounds and give the verdict (paired over rounds) on "Swin's throughput
slope is above ViT's" (falls more slowly). Without --quick the paper-size pair Swin-T / ViT-B/16 at 224 px is timed
too and its ratio printed next to the paper's (755 / 292 = 2.6 for Swin-T / DeiT-B).

    vitlab study scaling              # micro models at 32, 64, 128 px + Swin-T and ViT-B at 224, 3 rounds: ~5 min
    vitlab study scaling --quick      # 16 and 32 px, one round: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..checks import int_arg
from ..errors import VitlabError
from ..registry import create_model
from . import _common as common
from .complexity import _slope, memory_mb
from .verdict import compare

log = logging.getLogger(__name__)

NAME = "scaling"
HELP = "images/s and memory vs resolution for ViT, Swin, ConvNeXt in one process; slopes; Swin Table 1 ratios"
CLAIM = ("Swin's windowed attention (and a ConvNeXt) scale linearly with the image area, a ViT's global attention "
         "quadratically: at high resolution the ViT falls behind")
PAPER = "Liu et al., Swin Transformer, ICCV 2021, Table 1(a) (throughput on a V100)"
MODELS = {"ViT": "vit_micro_patch4_32", "Swin": "swin_micro_patch2_window4_32", "ConvNeXt": "convnext_micro_32"}
PAPER_PAIR = {"Swin-T": "swin_tiny_patch4_window7_224", "ViT-B/16": "vit_base_patch16_224"}
PAPER_RATIO = {"Swin-T / DeiT-B (ViT-B/16) at 224 px": 755.2 / 292.3}
SIZES, QUICK_SIZES = (32, 64, 128), (16, 32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=8)
    p.add_argument("--repeats", type=int_arg(at_least=1), default=3, help="timed passes per point (the best)")
    common.add_seed_arguments(p)


@torch.no_grad()
def images_per_s(model: torch.nn.Module, size: int, batch: int, repeats: int) -> float:
    """Inference throughput: batch / the fastest of `repeats` forward passes after one warm-up."""
    model.eval()
    x = torch.randn(batch, 3, size, size)
    model(x)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = common.seed_list(args)
    sizes, repeats = (QUICK_SIZES, 1) if args.quick else (SIZES, args.repeats)
    points: dict[str, list[dict[str, Any]]] = {}
    for label, name in MODELS.items():
        points[label] = []
        for size in sizes:
            try:
                model = create_model(name, img_size=size, num_classes=10)
            except VitlabError as e:
                log.info("scaling: %s at %d px skipped: %s", label, size, e)
                continue
            torch.manual_seed(0)
            throughput = [images_per_s(model, size, args.batch_size, repeats) for _ in rounds]
            points[label].append({"size": size, "pixels": size * size, "images_per_s": throughput,
                                  "memory_mb": memory_mb(model, size, 1)})
            log.info("scaling: %s %d px: %.1f img/s", label, size, max(throughput))
    slopes = {label: [_slope([(p["pixels"], p["images_per_s"][k]) for p in pts]) for k in range(len(rounds))]
              for label, pts in points.items()}
    memory_slopes = {label: _slope([(p["pixels"], p["memory_mb"]) for p in pts]) for label, pts in points.items()}
    paper = {} if args.quick else paper_pair(args.batch_size, repeats)
    claim = common.claim("Swin's throughput falls more slowly with resolution than ViT's (log-log slope of images/s)",
                         PAPER, compare([s or 0.0 for s in slopes["Swin"]], [s or 0.0 for s in slopes["ViT"]],
                                        paired=True, quick=args.quick))
    table = [{"model": label, "name": MODELS[label],
              **{f"img/s at {p['size']} px": common.summary(p["images_per_s"], 1)["text"] for p in pts},
              "throughput slope": common.summary([s for s in slopes[label] if s is not None], 3)["text"],
              "memory slope": f"{memory_slopes[label]}"} for label, pts in points.items()]
    results = {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
               "command": common.command_line(NAME, args, add_arguments), "seeds": rounds, "sizes": list(sizes),
               "batch_size": args.batch_size, "claims": [claim], "table": table, "points": points,
               "throughput_slopes": slopes, "memory_slopes": memory_slopes, "paper_pair": paper}
    return common.finish(results, out, NAME, log=log, plots={"scaling.png": lambda path: plot(results, path)},
                         difference="%+.3f")


def paper_pair(batch: int, repeats: int) -> dict[str, Any]:
    """Swin-T and ViT-B/16 at 224 px on this CPU: images/s and their ratio beside Swin's Table 1(a) ratio."""
    measured = {label: images_per_s(create_model(name, num_classes=1000), 224, max(1, batch // 4), repeats)
                for label, name in PAPER_PAIR.items()}
    ratio = measured["Swin-T"] / measured["ViT-B/16"]
    return {"images_per_s": measured, "ratio_swin_t_over_vit_b": ratio, "paper_ratio": PAPER_RATIO}


def plot(results: dict[str, Any], path: Path) -> None:
    from ..explain.plots import new_figure

    fig = new_figure(11.0, 4.0)
    ax, mem = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (label, pts) in enumerate(results["points"].items()):
        slope = common.summary([s for s in results["throughput_slopes"][label] if s is not None] or [0.0], 2)
        common.errorbar_plot(ax, [p["pixels"] for p in pts], [p["images_per_s"] for p in pts],
                             f"{label}: slope {slope['text']}", color=f"C{i}")
        mem.plot([p["pixels"] for p in pts], [p["memory_mb"] for p in pts], marker="o", color=f"C{i}",
                 label=f"{label}: slope {results['memory_slopes'][label]}")
    for a, ylabel in ((ax, "images/s (inference, ± std over rounds)"), (mem, "fwd+bwd activation memory, MB")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("input pixels")
        a.set_ylabel(ylabel)
        a.grid(True, alpha=0.3, which="both")
        a.legend(fontsize=7)
    pair = results["paper_pair"]
    note = (f"; Swin-T/ViT-B at 224 px: {pair['ratio_swin_t_over_vit_b']:.2f} here, 2.58 in Swin Table 1"
            if pair else "")
    fig.suptitle(common.quick_title(f"throughput and memory vs resolution{note}", results["quick"]), fontsize=10)
    common.save(fig, path)
