"""Study: does a convnet teacher make a better small transformer when data and epochs are few? (Touvron et al.,
"Training data-efficient image transformers & distillation through attention", ICML 2021: DeiT-Ti distilled from
a RegNetY-16GF gains ~2.5 points on ImageNet at equal epochs (Table 5), hard distillation beats soft, and a convnet
teacher beats a transformer teacher of similar accuracy (Table 2) - "the student inherits the convnet's inductive
bias".)

DeiT trained on 1.2M images for 300 epochs; the benefit of the teacher's convolutional bias is largest when the
transformer cannot learn that bias from the data itself. An earlier version of this study ran 8x8 digits at 16 px,
where the student alone reached 84% and the distilled one 69%: one seed, and a setting in which the student has
nothing to inherit. Here the regime is data- and epoch-limited on purpose: --train-per-class generated `shapes` at
32 px, large objects (default 100 per class, 600 images), patch 4 (64 tokens), 40 epochs (750 steps;
with 15 every student sat at chance). All runs go through
`vitlab.train.run_training` with the same recipe:
  CNN teacher          a ResNet (lr --teacher-lr) trained for --teacher-epochs on --teacher-per-class shapes
                       (default 1000): on the students' 100 per class it reached only 25-28%, nothing to teach
  ViT teacher          a plain ViT trained as long on the same images: the "transformer teacher" of DeiT's Table 2
  student, labels      a DeiT-Ti-like student (dim 96, 3 heads, --depth blocks), labels only
  student, hard / soft the distilled student (distillation token + head), DeiT's hard and soft objectives
  student, ViT teacher the same hard distillation from the ViT teacher
for --seeds seeds (the students' seeds pair across rows). Verdicts (paired over seeds): hard-distilled > labels
only; soft-distilled > labels only; CNN teacher > ViT teacher (both hard). A teacher less than halfway from
chance to 100% makes its claims inconclusive (verdict.undertrained): it has nothing to teach.

    vitlab study distill                       # 2 teachers + 4 students x 3 seeds: ~24 min with --jobs 2
    vitlab study distill --train-per-class 300 # more data: the teacher's advantage should shrink
    vitlab study distill --quick               # 16 px, one epoch on 36 images: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

from ..checks import float_arg, int_arg, text_arg
from . import _common as common
from .verdict import compare, undertrained

log = logging.getLogger(__name__)

NAME = "distill"
HELP = "DeiT distillation in a data-limited regime: CNN vs ViT teacher, hard vs soft, vs labels only"
CLAIM = ("a student transformer distilled from a convnet teacher beats the same student trained on labels alone; "
         "a convnet teacher is better than a transformer teacher")
PAPER = "Touvron et al., Training data-efficient image transformers & distillation through attention, ICML 2021"
STUDENT_DIM, STUDENT_HEADS = 96, 3
ROWS = ("labels only", "hard, CNN teacher", "soft, CNN teacher", "hard, ViT teacher")
DISTILLED = {"hard, CNN teacher": ("hard", "cnn"), "soft, CNN teacher": ("soft", "cnn"),   # row: (mode, teacher)
             "hard, ViT teacher": ("hard", "vit")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes", type=text_arg, help="data spec all runs use (default shapes)")
    p.add_argument("--img-size", type=int_arg(at_least=8), default=32, help="input side of every model")
    p.add_argument("--train-per-class", type=int_arg(at_least=1), default=100,
                   help="shapes training images per class: few, on purpose")
    p.add_argument("--teacher", type=text_arg, default="resnet_micro_32", help="CNN teacher model name")
    p.add_argument("--vit-teacher", type=text_arg, default="vit_micro_patch4_32", help="transformer teacher name")
    p.add_argument("--patch", type=int_arg(at_least=1), default=4, help="student patch size")
    p.add_argument("--depth", type=int_arg(at_least=1), default=4,
                   help=f"student blocks (DeiT-Ti has 12; here width {STUDENT_DIM}, {STUDENT_HEADS} heads)")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=40, help="epochs of each student")
    p.add_argument("--teacher-epochs", type=int_arg(at_least=1), default=30, help="epochs of each teacher")
    p.add_argument("--teacher-lr", type=float_arg(above=0), default=2e-3,
                   help="peak lr of the CNN teacher (the ViTs use the studies' 5e-4)")
    p.add_argument("--teacher-per-class", type=int_arg(at_least=1), default=1000,
                   help="shapes per class the teachers train on (the students see --train-per-class): on the "
                        "students' 100 per class resnet_micro_32 reached only 25-28%% in 30 epochs")
    common.add_objects_argument(p)
    common.add_jobs_argument(p)
    common.add_seed_arguments(p)


def student_args(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor overrides that shrink DeiT-Ti (dim 192, 3 heads, 12 blocks) to the study's input."""
    return {"patch_size": args.patch, "depth": args.depth, "dim": STUDENT_DIM, "num_heads": STUDENT_HEADS}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args = common.quick_args(args, NAME, add_arguments, img_size=common.QUICK_SIZE, depth=1, epochs=1,
                                     teacher_epochs=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    data = common.study_data(args, out, args.img_size, args.train_per_class)
    # the teachers learn from more images than the students (DeiT's regime: the student's data are few, the
    # teacher brings what a convnet learned elsewhere); the validation images are the same (same stream)
    teacher_data = common.study_data(args, out, args.img_size, args.teacher_per_class)

    def fit(run_dir: str, model: str, seed: int, epochs: int, on: str = data, **extra: Any) -> dict[str, Any]:
        return dict(model=model, data=on, out=out / run_dir, epochs=epochs, seed=seed, img_size=args.img_size,
                    quick=args.quick, **extra)

    # The teachers first (once, args.jobs at a time): every distilled run loads its teacher from the directory.
    cnn, vit = common.train_all([fit("teacher-cnn", args.teacher, args.seed, args.teacher_epochs, teacher_data,
                                     lr=args.teacher_lr),
                                 fit("teacher-vit", args.vit_teacher, args.seed, args.teacher_epochs, teacher_data)],
                                jobs=args.jobs)
    teachers = {"CNN teacher": cnn, "ViT teacher": vit}
    recipe = {"model_args": student_args(args)}
    grid = [(seed, row) for seed in seeds for row in ROWS]
    runs = []
    for seed, row in grid:
        if row == "labels only":
            runs.append(fit(f"labels-seed{seed}", "deit_tiny_patch16_224", seed, args.epochs, **recipe))
        else:
            mode, teacher = DISTILLED[row]
            runs.append(fit(f"{mode}-{teacher}-seed{seed}", "deit_tiny_distilled_patch16_224", seed, args.epochs,
                            teacher=str(out / f"teacher-{teacher}"), distill=mode, **recipe))
    students: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    for (_, row), metrics in zip(grid, common.train_all(runs, jobs=args.jobs)):
        students[row].append(metrics)
    results = summarize(teachers, students, args, seeds)
    return common.finish(results, out, NAME, log=log, difference="%+.2f points",
                         plots={"distill.png": lambda path: plot(out, seeds, results, path)})


def summarize(teachers: dict[str, dict[str, Any]], students: dict[str, list[dict[str, Any]]],
              args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    top1 = {row: [m["val_top1"] for m in runs] for row, runs in students.items()}
    table = [{"run": label, "model": m["model"], "params": m["params"], "epochs": m["epochs"],
              "val top-1 %": f"{m['val_top1']:.2f} (one run)"} for label, m in teachers.items()]
    table += [{"run": f"student, {row}", "model": runs[0]["model"], "params": runs[0]["params"],
               "epochs": runs[0]["epochs"], "val top-1 %": common.summary(top1[row])["text"]}
              for row, runs in students.items()]
    source = "DeiT Table 5 (distillation) and Table 2 (teacher type)"
    # a teacher near chance has nothing to teach, and two teachers of unequal accuracy do not compare teacher types
    teacher_top1 = {k: [t["val_top1"]] for k, t in teachers.items()}
    classes = teachers["CNN teacher"]["num_classes"]
    cnn_gate = undertrained({"CNN teacher": teacher_top1["CNN teacher"]}, classes)
    pair_gate = undertrained(teacher_top1, classes)
    claims = [
        common.claim("hard distillation from a CNN teacher beats labels only (val top-1)", source,
                     compare(top1["hard, CNN teacher"], top1["labels only"], paired=True, quick=args.quick,
                             undertrained=cnn_gate)),
        common.claim("soft distillation from a CNN teacher beats labels only (val top-1)", source,
                     compare(top1["soft, CNN teacher"], top1["labels only"], paired=True, quick=args.quick,
                             undertrained=cnn_gate)),
        common.claim("a CNN teacher beats a ViT teacher (hard distillation, val top-1)", source,
                     compare(top1["hard, CNN teacher"], top1["hard, ViT teacher"], paired=True, quick=args.quick,
                             undertrained=pair_gate),
                     teachers_top1={k: v["val_top1"] for k, v in teachers.items()}),
    ]
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds, "data": args.data,
            "img_size": args.img_size, "train_per_class": args.train_per_class,
            "teacher_per_class": args.teacher_per_class, "epochs": args.epochs,
            "student": {"dim": STUDENT_DIM, "heads": STUDENT_HEADS, **student_args(args)},
            "claims": claims, "table": table,
            "teachers": {k: {f: v[f] for f in ("model", "epochs", "val_top1", "params")} for k, v in teachers.items()},
            "students": {row: {"val_top1": common.summary(v), "params": students[row][0]["params"]}
                         for row, v in top1.items()}}


def read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(epochs, val top-1 %) from a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["epoch"]) for r in rows], [float(r["val_top1"]) for r in rows]


def plot(out: Path, seeds: list[int], results: dict[str, Any], path: Path) -> None:
    """Left: students' val top-1 per epoch (mean ± std over seeds), teachers' final accuracy as lines.
    Right: final accuracy of each row with its error bar."""
    from ..explain.plots import new_figure

    fig = new_figure(11.0, 4.0)
    ax, bar = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    dirs = {"labels only": "labels", "hard, CNN teacher": "hard-cnn", "soft, CNN teacher": "soft-cnn",
            "hard, ViT teacher": "hard-vit"}
    for i, (row, prefix) in enumerate(dirs.items()):
        curves = [read_curve(out / f"{prefix}-seed{s}") for s in seeds]
        n = min(len(c[0]) for c in curves)
        common.errorbar_plot(ax, curves[0][0][:n], [[c[1][e] for c in curves] for e in range(n)], row, color=f"C{i}")
        s = results["students"][row]["val_top1"]
        bar.errorbar([i], [s["mean"]], yerr=[s["std"] or 0.0], marker="o", capsize=4, color=f"C{i}")
    for k, (label, t) in enumerate(results["teachers"].items()):
        ax.axhline(t["val_top1"], color="grey", linestyle="--" if k == 0 else ":", label=f"{label} ({t['model']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"students, {results['train_per_class']} images per class", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    bar.set_xticks(range(len(dirs)))
    bar.set_xticklabels([r.replace(", ", "\n") for r in dirs], fontsize=8)
    bar.set_ylabel("final val top-1 (%), mean ± std over seeds")
    bar.grid(alpha=0.3)
    fig.suptitle(common.quick_title(f"DeiT distillation on {results['data']} at {results['img_size']} px, "
                                    f"{len(seeds)} seed(s)", results["quick"]), fontsize=10)
    common.save(fig, path)
