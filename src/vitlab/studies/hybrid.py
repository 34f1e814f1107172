"""Study: at a small compute budget a hybrid (a ResNet stem under the ViT) beats the pure ViT (Dosovitskiy et al.,
"An Image is Worth 16x16 Words", ICLR 2021, Fig. 5: "hybrids slightly outperform ViT at small computational
budgets, but the difference vanishes for larger models").

Fig. 5 plots transfer accuracy against pre-training compute. Here compute is training wall-clock time on this
machine: the pure ViT (vit_micro_patch4_32, 4x4 patches -> 8x8 tokens) and the hybrid (vit_micro_r8_s4_32: the same
ViT-micro on a 7-conv CIFAR ResNet of stride 4 -> 8x8 tokens; models/hybrid.py) train on the bundled digits at 32 px
(--data; 1347 train / 450 val) for EQUAL TIME budgets (--budgets, seconds of the training loop; evaluation and setup
are not counted), with the studies' recipe (_common.train). Digits, not the generated shapes: on shapes both models
stay within 3 points of chance at budgets that fit a 12-minute study (a one-seed trial: ViT 14-18%, hybrid 14-20% at
10-40 s), so there is nothing to compare; `--data shapes` runs it there.

A budget is real seconds: each run stops when its measured training time reaches the budget
(TrainConfig.time_limit_s: at the first optimizer step past it, so a run overshoots by at most one step; the clock
is metrics.csv's epoch_time_s), then evaluates and saves its checkpoint. Its cosine schedule is planned to end a
little after the budget, so that the limit, not the schedule, ends the run: each model's epoch time is measured
once, from a timed one-epoch run (seed --seed), and a budget becomes ceil(SCHEDULE_MARGIN x budget / epoch time)
epochs of schedule, at least 1. A run thus stops near the low-lr end of its schedule; where one epoch is longer than
the budget (the hybrid, ~2x slower per image, at the smallest budget) it stops part-way, lr still high: a small
budget then compares the models part-way through training. In equal time the hybrid takes about half the ViT's
steps. The times the runs took are the figure's x-axis and the JSON's points[...]["train_time_s"] (per seed, with
the steps each took and whether the budget stopped it), and time_ratio gives hybrid / ViT training seconds per
budget, paired by seed: ~1.0 when the limit stopped both (the table's "time ratio hybrid / ViT"). A machine that
runs faster than at the timing can finish a schedule before the budget; the ratio then says so.

The verdict (vitlab.studies.verdict, paired over --seeds seeds) is on "hybrid val top-1 > ViT val top-1 at the
smallest budget"; the gap at every budget is in the table.

    vitlab study hybrid                         # budgets 12, 24, 48 s x 2 models x 3 seeds: ~10 min
    vitlab study hybrid --budgets 30,60,120     # longer: does the hybrid's lead vanish?
    vitlab study hybrid --data shapes           # the generated shapes (harder: near chance at these budgets)
    vitlab study hybrid --quick                 # 16 px, one-epoch schedules on 36 images: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from ..checks import int_arg, text_arg
from ..errors import VitlabError
from . import _common as common
from . import _families as families
from .verdict import compare

log = logging.getLogger(__name__)

NAME = "hybrid"
HELP = "pure ViT vs ResNet-stem hybrid ViT at equal training-time budgets: accuracy vs training time (ViT Fig. 5)"
CLAIM = "at small computational budgets the hybrid (CNN feature map as tokens) outperforms the pure ViT"
PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021, Fig. 5 and §4.4"
MODELS = {"ViT": "vit_micro_patch4_32", "hybrid R8+ViT": "vit_micro_r8_s4_32"}
VIT, HYBRID = MODELS
SCHEDULE_MARGIN = 1.1    # a schedule spans ~10% more than its budget: the time limit ends the run, not the schedule


def _budgets_arg(text: str) -> tuple[float, ...]:
    try:
        budgets = tuple(float(b) for b in str(text).split(","))
    except ValueError:
        budgets = ()
    if not budgets or not all(0 < b < math.inf for b in budgets) or len(set(budgets)) != len(budgets):
        raise argparse.ArgumentTypeError(f"--budgets wants distinct positive seconds like 12,24,48, not {text!r}")
    return tuple(sorted(budgets))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", type=text_arg, help="data spec both models use (default digits)")
    p.add_argument("--img-size", type=int_arg(at_least=8), default=32, help="input side of both models")
    p.add_argument("--train-per-class", type=int_arg(at_least=1), default=100,
                   help="training images per class with --data shapes")
    p.add_argument("--budgets", type=_budgets_arg, default=(12.0, 24.0, 48.0),
                   help="training-time budgets in seconds, comma-separated (default 12,24,48)")
    common.add_seed_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args = common.quick_args(args, NAME, add_arguments, img_size=common.QUICK_SIZE, budgets=(1.0, 2.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    data = common.study_data(args, out, args.img_size, args.train_per_class)
    epoch_s = {label: 0.0 for label in MODELS} if args.quick else epoch_seconds(data, out, args)
    epochs = {b: {label: 1 if args.quick else budget_epochs(b, epoch_s[label]) for label in MODELS}
              for b in args.budgets}
    runs = {b: families.train_grid(MODELS, seeds, data, out, epochs=epochs[b].__getitem__, img_size=args.img_size,
                                   quick=args.quick, time_limit_s=b,
                                   run_dir=lambda label, seed, b=b: f"{families._slug(label)}-{b:g}s-seed{seed}")
            for b in args.budgets}
    results = summarize(runs, epoch_s, epochs, args, seeds)
    return common.finish(results, out, NAME, log=log, plots={"hybrid.png": lambda path: plot(results, path)},
                         difference="%+.2f points")


def budget_epochs(budget_s: float, epoch_s: float) -> int:
    """The epochs a run's schedule spans for a budget of budget_s seconds at epoch_s seconds an epoch: enough to
    outlast the budget by SCHEDULE_MARGIN (the time limit stops the run), at least one."""
    return max(1, math.ceil(SCHEDULE_MARGIN * budget_s / epoch_s))


def epoch_seconds(data: str, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Seconds of one training epoch of each model, from a timed one-epoch run (its training loop only)."""
    seconds = {}
    for label, name in MODELS.items():
        run_dir = out / f"timing-{families._slug(label)}"
        common.train(name, data, run_dir, epochs=1, seed=args.seed, img_size=args.img_size, report=False)
        seconds[label] = families.train_seconds(run_dir)
        if not seconds[label] > 0:
            raise VitlabError(f"hybrid study: could not time an epoch of {name}")
        log.info("hybrid: one epoch of %s takes %.2f s", label, seconds[label])
    return seconds


def summarize(runs: dict[float, dict[str, list[dict[str, Any]]]], epoch_s: dict[str, float],
              epochs: dict[float, dict[str, int]], args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    top1 = {b: {label: [m["val_top1"] for m in ms] for label, ms in r.items()} for b, r in runs.items()}
    smallest = min(runs)
    claim = common.claim(f"the hybrid beats the ViT at the smallest budget ({smallest:g} s of training, val top-1)",
                         PAPER, compare(top1[smallest][HYBRID], top1[smallest][VIT], paired=True, quick=args.quick))
    # "epochs": the schedule's length; the runs' own counts (the last one partial when the budget stopped it) and
    # steps are per seed
    points = {label: [{"budget_s": b, "epochs": epochs[b][label], "val_top1": common.summary(top1[b][label]),
                       "train_time_s": common.summary([m["train_time_s"] for m in runs[b][label]], 1),
                       "epochs_run": [m["epochs"] for m in runs[b][label]],
                       "steps": [m["steps"] for m in runs[b][label]],
                       "stopped_at_budget": [m["stopped_at_time_limit"] for m in runs[b][label]]}
                      for b in runs] for label in MODELS}
    ratio = {b: common.summary([h["train_time_s"] / v["train_time_s"] for h, v in zip(runs[b][HYBRID], runs[b][VIT])])
             for b in runs}
    table = [{"budget s": f"{b:g}",
              **{f"{label} steps": common.summary([m["steps"] for m in runs[b][label]], 0)["text"] for label in MODELS},
              **{f"{label} train s": common.summary([m["train_time_s"] for m in runs[b][label]], 1)["text"]
                 for label in MODELS},
              "time ratio hybrid / ViT": ratio[b]["text"],
              **{f"{label} val top-1 %": common.summary(top1[b][label])["text"] for label in MODELS},
              "hybrid - ViT": common.summary([h - v for h, v in zip(top1[b][HYBRID], top1[b][VIT])])["text"]}
             for b in runs]
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds,
            "data": "shapes (quick)" if args.quick else args.data,
            "img_size": args.img_size, "train_per_class": args.train_per_class, "budgets_s": list(runs),
            "epoch_s": epoch_s, "chance_top1": runs[smallest][VIT][0]["chance_top1"],
            "params": {label: runs[smallest][label][0]["params"] for label in MODELS},
            "models": MODELS, "claims": [claim], "table": table, "points": points,
            "time_ratio": [{"budget_s": b, "hybrid_over_vit": ratio[b]} for b in runs]}


def plot(results: dict[str, Any], path: Path) -> None:
    """Val top-1 against the training time the runs took, mean ± std over seeds on both axes."""
    from ..explain.plots import new_figure

    fig = new_figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, pts) in enumerate(results["points"].items()):
        x = [p["train_time_s"]["mean"] for p in pts]
        ax.errorbar(x, [p["val_top1"]["mean"] for p in pts], xerr=[p["train_time_s"]["std"] or 0.0 for p in pts],
                    yerr=[p["val_top1"]["std"] or 0.0 for p in pts], marker="o", capsize=3, color=f"C{i}",
                    label=f"{label} ({results['params'][label] / 1e6:.2f}M params)")
    ax.axhline(results["chance_top1"], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("training time, s (log; budgets " + ", ".join(f"{b:g}" for b in results["budgets_s"]) + ")")
    ax.set_ylabel("val top-1 (%), mean ± std over seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    c = results["claims"][0]
    ax.set_title(common.quick_title(f"{results['data']} at {results['img_size']} px, {len(results['seeds'])} seed(s):"
                                    f" hybrid - ViT at the smallest budget {c['difference']:+.1f} ({c['verdict']})",
                                    results["quick"]), fontsize=8)
    common.save(fig, path)
