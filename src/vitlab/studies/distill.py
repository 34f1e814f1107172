"""Study: does a convnet teacher make a better small transformer? (Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021: DeiT-Ti distilled from a RegNet beats the same DeiT-Ti
trained on labels alone, for the same number of epochs.)

Three runs of `vitlab.train.run_training` on the same data, at the same input size, with the same recipe:
  teacher    a ResNet (the lecture's CNN baseline), trained on the labels
  baseline   a DeiT-Ti-like student (no distillation token), trained on the labels
  distilled  the same student with a distillation token and head, trained on the labels (class head) and on the
             teacher's hard decisions (distillation head, --distill hard) or its softened outputs (soft)
The claim's sign: distilled val top-1 > baseline val top-1 after equal epochs (means over --seeds students).

    vitlab study distill                    # digits at 16 px, 20 epochs each: minutes on a CPU
    vitlab study distill --data shapes --epochs 40 --distill soft --seeds 3   # mean of 3 seeds (on a GPU)
    vitlab study distill --tiny             # 8 px, one epoch, one block: seconds (the test)
"""
from __future__ import annotations

import argparse
import csv
import logging
import statistics
from pathlib import Path
from typing import Any

from ..checks import int_arg, text_arg
from ..io import atomic_path, write_json

log = logging.getLogger(__name__)

NAME = "distill"
HELP = "DeiT distillation: ResNet teacher -> DeiT-Ti-like student vs the same student without teacher"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", type=text_arg, help="data spec all three runs use (default digits)")
    p.add_argument("--img-size", type=int_arg(at_least=1), default=16, help="input side of all three models")
    p.add_argument("--teacher", type=text_arg, default="resnet_micro_32",
                   help="teacher model name (built at --img-size)")
    p.add_argument("--patch", type=int_arg(at_least=1), default=2, help="student patch size")
    p.add_argument("--depth", type=int_arg(at_least=1), default=6,
                   help="student blocks (DeiT-Ti has 12; width 192, 3 heads)")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=20, help="epochs of each student (and of the teacher)")
    p.add_argument("--teacher-epochs", type=int_arg(at_least=1), default=None, help="teacher epochs (default --epochs)")
    p.add_argument("--distill", choices=("hard", "soft"), default="hard", help="DeiT's hard or soft distillation")
    p.add_argument("--seed", type=int_arg(at_least=0), default=0)
    p.add_argument("--seeds", type=int_arg(at_least=1), default=1,
                   help="students trained with seeds seed..seed+N-1, accuracies averaged (one run is noisy: a "
                        "small ViT on digits moves by several points between seeds)")
    p.add_argument("--tiny", action="store_true", help="8 px, one epoch, one block: seconds (the test)")


def student_args(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor overrides that shrink DeiT-Ti (dim 192, 3 heads) to the study's input size and depth."""
    return {"patch_size": args.patch, "depth": args.depth}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..train import TrainConfig, run_training

    if args.tiny:
        args = argparse.Namespace(**{**vars(args), "img_size": 8, "patch": 2, "depth": 1, "epochs": 1,
                                     "teacher_epochs": 1})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_epochs = args.teacher_epochs or args.epochs
    seeds = [args.seed + i for i in range(max(1, getattr(args, "seeds", 1)))]

    def config(label: str, model: str, seed: int, epochs: int, **extra: Any) -> TrainConfig:
        run_dir = out / (label if len(seeds) == 1 or label == "teacher" else f"{label}-seed{seed}")
        return TrainConfig(model=model, data=args.data, out=str(run_dir), epochs=epochs, img_size=args.img_size,
                           seed=seed, warmup_epochs=min(2.0, epochs / 5), **extra)

    # The teacher first (once): every distilled run loads it from its directory.
    runs = {"teacher": config("teacher", args.teacher, args.seed, teacher_epochs, drop_path=0.0)}
    for seed in seeds:
        runs[f"baseline/{seed}"] = config("baseline", "deit_tiny_patch16_224", seed, args.epochs,
                                          model_args=student_args(args))
        runs[f"distilled/{seed}"] = config("distilled", "deit_tiny_distilled_patch16_224", seed, args.epochs,
                                           model_args=student_args(args), teacher=str(out / "teacher"),
                                           distill=args.distill)
    metrics = {}
    for label, cfg in runs.items():
        log.info("%s: training %s (%s, %d epochs)", NAME, label, cfg.model, cfg.epochs)
        metrics[label] = run_training(cfg, overwrite=True)

    def summary(label: str) -> dict[str, Any]:
        top1 = [metrics[f"{label}/{s}"]["val_top1"] for s in seeds]
        first = metrics[f"{label}/{seeds[0]}"]
        return {"model": first["model"], "epochs": first["epochs"], "params": first["params"], "seeds": seeds,
                "val_top1": statistics.fmean(top1), "val_top1_per_seed": top1,
                "val_top1_std": statistics.stdev(top1) if len(top1) > 1 else None}

    teacher = metrics["teacher"]
    results: dict[str, Any] = {
        "data": args.data, "img_size": args.img_size, "distill": args.distill, "epochs": args.epochs,
        "student": {"dim": 192, "heads": 3, **student_args(args)},
        "runs": {"teacher": {k: teacher[k] for k in ("model", "epochs", "val_top1", "val_top5", "params")},
                 "baseline": summary("baseline"), "distilled": summary("distilled")},
    }
    diff = results["runs"]["distilled"]["val_top1"] - results["runs"]["baseline"]["val_top1"]
    results["distilled_minus_baseline_top1"] = diff
    results["claim_holds"] = diff > 0
    write_json(out / "distill.json", results)
    plot(out, [Path(cfg.out).name for cfg in runs.values()], out / "distill.png", args.distill)
    log.info("%s: teacher %.2f%%, student %.2f%% without teacher, %.2f%% distilled (%s; mean of %d seed(s))",
             NAME, teacher["val_top1"], results["runs"]["baseline"]["val_top1"],
             results["runs"]["distilled"]["val_top1"], args.distill, len(seeds))
    return results


def read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(epochs, val top-1 %) from a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["epoch"]) for r in rows], [float(r["val_top1"]) for r in rows]


def plot(out: Path, labels: list[str], path: Path, mode: str) -> None:
    """Validation top-1 per epoch of the run directories `labels` under `out` (teacher, baseline[-seedN], ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"teacher": dict(color="grey", linestyle="--"), "baseline": dict(color="tab:blue"),
              "distilled": dict(color="tab:red")}
    named = set()
    for run_dir in labels:
        kind = run_dir.split("-seed")[0]
        epochs, top1 = read_curve(out / run_dir)
        name = {"distilled": f"student, {mode} distillation", "baseline": "student, labels only"}.get(kind, kind)
        ax.plot(epochs, top1, marker="o", markersize=3, label=None if kind in named else name,
                **styles.get(kind, {}))
        named.add(kind)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("DeiT distillation from a ResNet teacher")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
