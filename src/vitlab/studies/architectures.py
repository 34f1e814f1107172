"""Study: "And the winner is ... Competition is still ongoing" - the lecture's closing slide on MLP-Mixer
(Tolstikhin et al. 2021), ConvMixer ("Patches are all you need?", Trockman & Kolter 2022), ConvNeXt ("A ConvNet
for the 2020s", Liu et al. 2022), ViT, DeiT and Swin: no single family wins on accuracy for its cost.

Six families in their micro 32 px variants train on the same data (generated `shapes` at 32 px,
--train-per-class per class) for the same --epochs with the same recipe (the studies' ViT recipe of
_common.train: AdamW lr 5e-4, batch 32, no augmentation beyond flips; tuned for the ViT, not for the others - a
handicap the convnets may feel). DeiT's architecture is the ViT's (its contribution is the training recipe and the
distillation token, and no micro distilled variant is registered), so the ViT row stands for both; `vitlab study
distill` measures distillation itself. Reported per model: val top-1 (mean ± std over --seeds), parameters, and
inference images/s measured in this process with the models interleaved round by round (as in `vitlab study
scaling`), given as the ratio to the ViT's so that a change in load cancels.

The verdict (studies/_families.no_clear_winner, in verdict.py's vocabulary): the best model by mean accuracy
against the runner-up, paired over seeds. A gap larger than 2 SE is a clear winner: the lecture's "no winner" is
"not reproduced". Within 2 SE it is "reproduced" - meaning "this run finds no winner", which is weak evidence with
few seeds (the JSON keeps the difference and its SE). If the best model is not above chance by 2 SE the verdict is
"inconclusive". Accuracy per parameter or per image/s is shown in the figure, not judged.

    vitlab study architectures                      # 5 models x 3 seeds, 10 epochs of 3000 large-object shapes:
                                                    # ~25 min with --jobs 2 on 2 cores (the ViT's 940 steps put
                                                    # ConvMixer, ConvNeXt and the Mixer past the studies' floor)
    vitlab study architectures --epochs 15 --seeds 5
    vitlab study architectures --quick              # 16 px, one epoch on 36 images: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..checks import int_arg, text_arg
from . import _common as common
from . import _families as families

log = logging.getLogger(__name__)

NAME = "architectures"
HELP = "MLP-Mixer, ConvMixer, ConvNeXt, ViT/DeiT, Swin on the same data and epochs: accuracy vs params vs images/s"
CLAIM = ("and the winner is ... competition is still ongoing: no single family (MLP, convolution, attention) "
         "clearly beats the others at equal data and training")
PAPER = ("Liu et al., A ConvNet for the 2020s, CVPR 2022; Tolstikhin et al., MLP-Mixer, NeurIPS 2021; "
         "Trockman & Kolter, Patches Are All You Need?, TMLR 2023")
MODELS = {"MLP-Mixer": "mixer_micro_patch4_32", "ConvMixer": "convmixer_128_4_ks5_p2_32",
          "ConvNeXt": "convnext_micro_32", "ViT / DeiT": "vit_micro_patch4_32",
          "Swin": "swin_micro_patch2_window4_32"}
REFERENCE = "ViT / DeiT"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes", type=text_arg, help="data spec all models use (default shapes)")
    p.add_argument("--img-size", type=int_arg(at_least=8), default=32, help="input side of every model")
    p.add_argument("--train-per-class", type=int_arg(at_least=1), default=500, help="shapes training images per class")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=10, help="epochs of every model (the same budget)")
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=32, help="batch of the throughput timing")
    p.add_argument("--repeats", type=int_arg(at_least=1), default=3, help="timed passes per round (the best)")
    common.add_objects_argument(p)
    common.add_jobs_argument(p)
    common.add_seed_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args = common.quick_args(args, NAME, add_arguments, img_size=common.QUICK_SIZE, epochs=1, repeats=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    data = common.study_data(args, out, args.img_size, args.train_per_class)
    runs = families.train_grid(MODELS, seeds, data, out, epochs=args.epochs, img_size=args.img_size,
                               quick=args.quick, jobs=args.jobs)
    speed = families.throughput(MODELS, args.img_size, args.batch_size, len(seeds), args.repeats, REFERENCE)
    results = summarize(runs, speed, args, seeds)
    return common.finish(results, out, NAME, log=log, plots={"architectures.png": lambda path: plot(results, path)},
                         line="best %(best)s, runner-up %(runner_up)s: %(verdict)s "
                              "(difference %(difference)+.2f points)")


def summarize(runs: dict[str, list[dict[str, Any]]], speed: dict[str, dict[str, list[float]]],
              args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    top1 = {label: [m["val_top1"] for m in ms] for label, ms in runs.items()}
    chance = runs[REFERENCE][0]["chance_top1"]             # the trainer's chance level of this val set, %
    claim = common.claim("the best family by mean val top-1 does not beat the runner-up by more than 2 SE", PAPER,
                         families.no_clear_winner(top1, chance=chance, quick=args.quick), chance_top1=chance)
    models = {label: {"name": MODELS[label], "params": ms[0]["params"], "epochs": ms[0]["epochs"],
                      "val_top1": common.summary(top1[label]),
                      "train_time_s": common.summary([m["train_time_s"] for m in ms], 1),
                      "images_per_s": common.summary(speed[label]["images_per_s"], 1),
                      "images_per_s_vs_vit": common.summary(speed[label]["ratio"])}
              for label, ms in runs.items()}
    table = [{"model": label, "name": m["name"], "params": m["params"], "val top-1 %": m["val_top1"]["text"],
              "images/s (inference)": m["images_per_s"]["text"], f"× {REFERENCE}": m["images_per_s_vs_vit"]["text"],
              "train s": m["train_time_s"]["text"]} for label, m in models.items()]
    table.sort(key=lambda row: -models[row["model"]]["val_top1"]["mean"])
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds,
            "data": "shapes (quick)" if args.quick else args.data,
            "img_size": args.img_size, "train_per_class": args.train_per_class, "epochs": args.epochs,
            "throughput_batch": args.batch_size, "deit": "the ViT row: DeiT's architecture is ViT's (no micro "
            "distilled variant is registered; see `vitlab study distill`)", "claims": [claim], "table": table,
            "models": models}


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: val top-1 vs parameters; right: val top-1 vs inference images/s relative to the ViT."""
    from ..explain.plots import new_figure

    models = results["models"]
    top1 = {label: m["val_top1"]["per_seed"] for label, m in models.items()}
    fig = new_figure(11.0, 4.2)
    ax, speed = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    families.scatter(ax, {label: [m["params"]] for label, m in models.items()}, top1, log_x=True)
    families.scatter(speed, {label: m["images_per_s_vs_vit"]["per_seed"] for label, m in models.items()}, top1,
                     log_x=True)
    ax.set_xlabel("parameters")
    speed.set_xlabel(f"inference images/s ÷ {REFERENCE}'s (± std over rounds)")
    for a in (ax, speed):
        a.set_ylabel("val top-1 (%), mean ± std over seeds")
        a.axhline(results["claims"][0]["chance_top1"], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.legend(fontsize=7)
    c = results["claims"][0]
    fig.suptitle(common.quick_title(f"{results['data']} at {results['img_size']} px, {results['epochs']} epochs, "
                                    f"{len(results['seeds'])} seed(s): best {c['best']}, runner-up {c['runner_up']}"
                                    f" - {c['verdict']}", results["quick"]), fontsize=9)
    common.save(fig, path)
