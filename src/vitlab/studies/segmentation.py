"""Study: what does a transformer encoder buy a segmentation network at this scale? (TransUNet, Chen et al. 2021;
UNETR, Hatamizadeh et al. WACV 2022; both compare with a U-Net and report the transformer ahead on Synapse / BTCV.)

Four 2-D models trained on the same `scenes` masks for the same training time (not the same epochs: a fast model
gets more epochs), with several seeds:
  U-Net        the CNN baseline of both papers
  TransUNet    ResNet stages + a ViT on the 1/16 feature map + the cascaded upsampler with skips
  UNETR-2D     a plain ViT on 16x16 patches, four of its layers decoded with deconvolutions and a conv stem
  SETR-naive   a ViT and a 1x1 head upsampled: the transformer alone, no skips
The plots: validation mIoU against cumulative training time (mean over seeds at each epoch) and final mIoU against
parameters. The verdict (vitlab.studies.verdict) is on the papers' claim "TransUNet > U-Net in mIoU", paired over
seeds; the papers trained on thousands of CT slices for hours on GPUs with ImageNet-pretrained encoders, we train
from scratch for minutes, so the sign here says what the transformer buys without pre-training at small scale.

    vitlab study segmentation                           # 4 models x 3 seeds x 120 s of training: ~30 min on 2 cores
    vitlab study segmentation --budget 300 --seeds 2    # longer runs
    vitlab study segmentation --quick                   # 32 px, a few steps: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path
from typing import Any

from ..checks import float_arg, int_arg, text_arg
from ..io import atomic_path
from . import _common as common
from .verdict import compare, format_mean_std, mean_std

log = logging.getLogger(__name__)

NAME = "segmentation"
HELP = "U-Net vs TransUNet vs UNETR-2D vs SETR on scenes masks, equal training time, mIoU vs time and parameters"
MODELS = {"U-Net": "unet_small_64", "TransUNet": "transunet_small_64", "UNETR-2D": "unetr_small_2d_64",
          "SETR-naive": "setr_naive_small_64"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="scenes", type=text_arg, help="2-D segmentation data spec (default scenes)")
    p.add_argument("--budget", type=float_arg(above=0), default=120.0,
                   help="seconds of training per model and seed (epochs are chosen from a timed probe)")
    p.add_argument("--seeds", type=int_arg(at_least=1), default=3)
    p.add_argument("--seed", type=int_arg(at_least=0), default=0, help="first seed")
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=32)
    p.add_argument("--lr", type=float_arg(above=0), default=1e-3)
    p.add_argument("--quick", action="store_true", help="32 px, one short epoch per model: a smoke test, no verdict")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry import create_model
    from ..train import TrainConfig, run_training

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed + i for i in range(1 if args.quick else args.seeds)]
    size = 32 if args.quick else None
    data = quick_folder(out / "quick-data") if args.quick else args.data
    runs: dict[str, dict[str, Any]] = {}
    for label, model_name in MODELS.items():
        epochs = 1 if args.quick else epochs_for_budget(model_name, args.budget, args.batch_size, args.data)
        params = sum(p.numel() for p in create_model(model_name, img_size=size).parameters())
        runs[label] = {"model": model_name, "params": params, "epochs": epochs, "seeds": seeds, "per_seed": []}
        for seed in seeds:
            cfg = TrainConfig(model=model_name, data=data, out=str(out / f"{model_name}-seed{seed}"),
                              epochs=epochs, seed=seed, lr=args.lr, batch_size=8 if args.quick else args.batch_size,
                              warmup_epochs=min(1.0, epochs / 5), drop_path=0.0, label_smoothing=0.0,
                              img_size=size, weight_decay=1e-4)
            log.info("%s: %s (%s) seed %d, %d epochs", NAME, label, model_name, seed, epochs)
            metrics = run_training(cfg, overwrite=True)
            times, mious = read_curve(Path(cfg.out))
            runs[label]["per_seed"].append({"seed": seed, "val_miou": metrics["val_miou"],
                                            "val_dice": metrics["val_dice"], "train_time_s": times[-1],
                                            "curve_time_s": times, "curve_miou": mious})
    results = summarize(runs, args, seeds)
    common.finish(results, out, NAME, log=log,
                  plots={"segmentation.png": lambda path: plot(runs, path, quick=args.quick)})
    for label, r in results["table"].items():
        log.info("%s: %-10s %5.2fM params  mIoU %s  (%d epochs, %.0f s of training)", NAME, label,
                 r["params"] / 1e6, r["val_miou"], r["epochs"], r["train_time_s"])
    log.info("%s: TransUNet - U-Net mIoU %+.3f (se %s): %s", NAME, results["claim"]["difference"],
             "n/a" if results["claim"]["standard_error"] is None else f"{results['claim']['standard_error']:.3f}",
             results["claim"]["verdict"])
    return results


def quick_folder(root: Path, n: int = 40) -> str:
    """A tiny images/ + masks/ folder of 32 px scenes (the quick mode's data: seconds, not minutes)."""
    from PIL import Image

    from ..data.scenes import build_scenes

    train, _ = build_scenes(32, seed=0, n_train=n, n_val=1)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(train.images[i].permute(1, 2, 0).numpy()).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(train.semantic_masks[i].numpy().astype("uint8")).save(root / "masks" / f"{i:03d}.png")
    return str(root)


def epochs_for_budget(model_name: str, budget_s: float, batch_size: int, data: str) -> int:
    """Epochs that fill `budget_s` seconds of training: a few timed optimizer steps on random inputs of the
    model's size, times the training batches an epoch has (a generated spec's size; 1000 images for a folder)."""
    import torch

    from ..data.segmentation import SCENES_TRAIN, VOLUMES_TRAIN
    from ..registry import create_model

    model = create_model(model_name)
    size, C = model.cfg.img_size, model.cfg.in_chans
    x = torch.randn(batch_size, C, size, size)
    y = torch.randint(0, model.num_classes, (batch_size, size, size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timings = []
    for _ in range(4):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        timings.append(time.perf_counter() - t0)
    step_s = sorted(timings[1:])[1]                      # the median of the steps after the first
    n_train = {"scenes": SCENES_TRAIN, "volumes": VOLUMES_TRAIN}.get(data, 1000)
    return max(1, round(budget_s / (step_s * (n_train // batch_size))))


def read_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(cumulative training seconds, val mIoU) per epoch of a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    times, total = [], 0.0
    for r in rows:
        total += float(r["epoch_time_s"])
        times.append(total)
    return times, [float(r["val_miou"]) for r in rows]


def summarize(runs: dict[str, dict[str, Any]], args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    table = {}
    for label, r in runs.items():
        mious = [s["val_miou"] for s in r["per_seed"]]
        mean, std = mean_std(mious)
        table[label] = {"model": r["model"], "params": r["params"], "epochs": r["epochs"],
                        "val_miou": format_mean_std(mious), "val_miou_mean": mean, "val_miou_std": std,
                        "val_miou_per_seed": mious,
                        "val_dice_mean": mean_std([s["val_dice"] for s in r["per_seed"]])[0],
                        "train_time_s": sum(s["train_time_s"] for s in r["per_seed"]) / len(r["per_seed"])}
    claim = compare([s["val_miou"] for s in runs["TransUNet"]["per_seed"]],
                    [s["val_miou"] for s in runs["U-Net"]["per_seed"]], paired=True, quick=args.quick)
    command = "vitlab study segmentation" + (" --quick" if args.quick else
                                             f" --budget {args.budget:g} --seeds {len(seeds)}")
    return {"data": args.data, "budget_s": args.budget, "seeds": seeds, "quick": args.quick, "command": command,
            "claim": {"statement": "TransUNet > U-Net in mIoU (Chen et al. 2021, Table 1 on Synapse)", **claim},
            "table": table, "runs": runs}


def plot(runs: dict[str, dict[str, Any]], path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, r in runs.items():
        curves = r["per_seed"]
        n = min(len(c["curve_miou"]) for c in curves)
        t = [sum(c["curve_time_s"][i] for c in curves) / len(curves) for i in range(n)]
        m = [[c["curve_miou"][i] for c in curves] for i in range(n)]
        mean = [sum(v) / len(v) for v in m]
        err = [mean_std(v)[1] or 0.0 for v in m]
        ax_t.errorbar(t, mean, yerr=err, marker="o", markersize=3, capsize=2, label=label)
        finals = [c["val_miou"] for c in curves]
        fm, fs = mean_std(finals)
        ax_p.errorbar([r["params"] / 1e6], [fm], yerr=[fs or 0.0], marker="o", capsize=3, label=label)
        ax_p.annotate(label, (r["params"] / 1e6, fm), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax_t.set_xlabel("training time (s, mean over seeds)")
    ax_t.set_ylabel("validation mIoU")
    ax_t.set_title("mIoU vs training time" + (" (quick: smoke test)" if quick else ""))
    ax_t.grid(alpha=0.3)
    ax_t.legend()
    ax_p.set_xscale("log")
    ax_p.set_xlabel("parameters (M)")
    ax_p.set_ylabel("final validation mIoU (mean ± std over seeds)")
    ax_p.set_title("mIoU vs parameters, equal training time")
    ax_p.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
