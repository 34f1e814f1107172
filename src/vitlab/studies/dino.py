"""DINO's emergent segmentation (Caron et al. 2021, Fig. 3-4, Table 8): a ViT trained with DINO on single-object
`scenes` vs the same ViT trained supervised on the shape labels, for the same number of epochs.

Per seed (both models on the same generated data): weighted k-NN top-1 of the frozen [CLS] features (k 20, T 0.07;
train split = memory bank, val split = queries) and the Jaccard similarity between each model's 60%-mass mask of
the last-layer [CLS] attention (per head; the best head, chosen on the val set, and the mean over heads) and the
ground-truth object masks. The paper's sign: DINO's masks are closer to the objects than the supervised model's.
The same backbone at its initialisation (seeded like the run, no training) is scored beside them, so a k-NN ratio
or a Jaccard can be read against what the architecture gives with no learning at all.

The default budget, 8000 images x 4 epochs at batch 64 (500 steps per model), is the smallest at which the
supervised ViT is well past chance (~35% k-NN against 16.7%; at the earlier 1000 x 10 at batch 32 it was at
~22%): a Jaccard or k-NN comparison against a model that learned nothing says nothing. About 12 minutes per seed
on one thread (DINO ~10, supervised ~2.5).

The runs of all seeds are independent: --jobs of them train at a time, each in its own process with its share of
the threads (the DINO runs first, they are the long ones). The objects are drawn at twice scenes' radii
(--objects large, the default; data spec scenes:N,object_size=large): 4-6 patches of 8 px across and ~16% of the
image, so that a 60%-mass mask can overlap them; --objects default gives scenes' own (2-4 patches, ~4%).

    vitlab study dino                             # the full settings: 4 seeds, two at a time (--jobs 2)
    vitlab study dino --model-arg teacher_temp=0.02 --model-arg warmup_teacher_temp=0.02 --background plain
    vitlab study dino --quick                     # a seconds-long smoke test, no verdict
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..checks import float_arg, int_arg, parse_model_args, text_arg
from ..io import atomic_path
from ._common import add_jobs_argument, finish, quick_args, train_all
from .verdict import compare, format_mean_std, mean_std

log = logging.getLogger(__name__)

NAME = "dino"
HELP = "DINO vs supervised ViT on single-object scenes: k-NN accuracy and Jaccard of 60%-mass attention masks"
KNN_TARGET = 0.8      # DINO's k-NN accuracy at least this share of the supervised model's (the target)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="dino_vit_micro_patch8_64", type=text_arg,
                   help="DINO variant; the supervised model is its backbone (default dino_vit_micro_patch8_64)")
    p.add_argument("--train-images", type=int_arg(at_least=8), default=8000,
                   help="single-object scenes to train on (val: a quarter as many; default 8000)")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=4, help="epochs of each model (default 4)")
    p.add_argument("--batch-size", type=int_arg(at_least=2), default=64)
    p.add_argument("--lr", type=float_arg(above=0), default=1e-3, help="peak learning rate of both models")
    p.add_argument("--seeds", type=int_arg(at_least=1), default=None,
                   help="seeds (default 4; 2 with --quick). With --jobs 2, 4 seeds take the wall time of 3")
    p.add_argument("--seed", type=int_arg(at_least=0), default=0, help="first seed")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="DINO model argument (repeatable, as in vitlab train), e.g. teacher_temp=0.02; "
                        "backbone_weight_init also reaches the supervised model")
    p.add_argument("--background", choices=("textured", "plain"), default="textured",
                   help="the scenes' background (data spec scenes:N,background=plain); default textured")
    p.add_argument("--objects", choices=("default", "large"), default="large",
                   help="object radii: large (the default: twice scenes' radii, 4-6 patches of 8 px across at 64 px, "
                        "data spec scenes:N,object_size=large) or default (scenes' own, 2-4 patches)")
    add_jobs_argument(p)
    p.add_argument("--quick", action="store_true", help="32 px, a few images, one epoch: a smoke test, no verdict")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..errors import VitlabError
    from ..registry import create_model, default_config
    from ..train import TrainConfig

    if args.quick:
        args = quick_args(args, NAME, add_arguments)           # --jobs 1
    dino_name = "dino_vit_micro_patch4_32" if args.quick else args.model
    dino_args = parse_model_args(args.model_arg)
    cfg = default_config(dino_name)
    if "backbone" not in cfg:
        raise_not_dino(dino_name)
    try:                                     # a bad --model-arg is refused before anything is written
        create_model(dino_name, **dino_args)
    except VitlabError as e:
        raise VitlabError(f"--model-arg: {e}") from None
    cfg.update(dino_args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    supervised_name, size = cfg["backbone"], cfg["img_size"]
    # the supervised model starts from the same init as DINO's backbone (a fair comparison of what each learns)
    supervised_args = {"weight_init": cfg["backbone_weight_init"]} if cfg.get("backbone_weight_init") else {}
    n_train = 32 if args.quick else args.train_images
    epochs, batch = (1, 16) if args.quick else (args.epochs, args.batch_size)
    data = scenes_spec(n_train, args.background, args.objects)
    seeds = [args.seed + i for i in range(args.seeds or (2 if args.quick else 4))]
    configs = {}
    for seed in seeds:
        common = dict(data=data, epochs=epochs, batch_size=batch, lr=args.lr, seed=seed, img_size=size,
                      warmup_epochs=min(1.0, epochs / 5))
        configs["dino", seed] = dict(model=dino_name, out=str(out / f"dino-seed{seed}"), model_args=dino_args,
                                     **common)
        configs["supervised", seed] = dict(model=supervised_name, out=str(out / f"supervised-seed{seed}"),
                                           model_args=supervised_args, **common)
    TrainConfig(**configs["dino", seeds[0]])       # a bad setting is refused before anything trains
    order = sorted(configs, key=lambda k: (k[0] != "dino", k[1]))    # the long DINO runs first
    log.info("%s: seeds %s: DINO (%s) and supervised (%s), %d epochs each, %d at a time", NAME, seeds, dino_name,
             supervised_name, epochs, args.jobs)
    trained = dict(zip(order, train_all([configs[k] for k in order], jobs=args.jobs,
                                        fn=train_config)))
    per_seed = []
    for seed in seeds:
        dino_metrics, sup_metrics = trained["dino", seed], trained["supervised", seed]
        row = {"seed": seed, "collapsed": dino_metrics["collapsed"],
               "teacher_entropy": dino_metrics["teacher_entropy"], "supervised_val_top1": sup_metrics["val_top1"],
               "dino_train_s": dino_metrics["wall_time_s"], "supervised_train_s": sup_metrics["wall_time_s"]}
        row.update(measure(configs["dino", seed]["out"], configs["supervised", seed]["out"], data, size, seed,
                           untrained=(supervised_name, supervised_args)))
        per_seed.append(row)
        log.info("%s: seed %d: k-NN DINO %.1f%% vs supervised %.1f%%; Jaccard DINO %.3f vs supervised %.3f",
                 NAME, seed, row["dino"]["knn_top1"], row["supervised"]["knn_top1"],
                 row["dino"]["jaccard_best_head"], row["supervised"]["jaccard_best_head"])
    results = summarize(per_seed, args, dino_name, supervised_name, data, epochs, batch, dino_args)
    finish(results, out, NAME, log=log, plots={
        "dino.png": lambda path: plot(per_seed, path, quick=args.quick),
        "dino_attention.png": lambda path: attention_figure(out / f"dino-seed{seeds[0]}",
                                                            out / f"supervised-seed{seeds[0]}", data, size, seeds[0],
                                                            path)})
    log.info("%s: k-NN DINO %s, supervised %s, untrained backbone %s", NAME, results["table"]["dino"]["knn_top1"],
             results["table"]["supervised"]["knn_top1"], results["table"]["untrained"]["knn_top1"])
    log.info("%s: Jaccard DINO - supervised %+.3f (se %s): %s; k-NN ratio %.2f (target >= %.1f)", NAME,
             results["claim"]["difference"],
             "n/a" if results["claim"]["standard_error"] is None else f"{results['claim']['standard_error']:.3f}",
             results["claim"]["verdict"], results["knn_ratio"], KNN_TARGET)
    return results


def scenes_spec(n_train: int, background: str, objects: str) -> str:
    """The data spec of single-object scenes: scenes:N[,background=plain][,object_size=large]."""
    return (f"scenes:{n_train}" + (",background=plain" if background == "plain" else "")
            + (",object_size=large" if objects == "large" else ""))


def train_config(**fields: Any) -> dict[str, Any]:
    """run_training(TrainConfig(**fields)): one of the study's runs (module level, for train_all's processes)."""
    from ..train import TrainConfig, run_training

    return run_training(TrainConfig(**fields), overwrite=True)


def raise_not_dino(name: str) -> None:
    from ..errors import VitlabError

    raise VitlabError(f"--model {name}: not a DINO model (expected one of vitlab models 'dino_*')")


def measure(dino_dir: str, sup_dir: str, data: str, size: int, seed: int,
            untrained: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """k-NN top-1 and attention-mask Jaccard of both trained models on the seed's data, and of `untrained` =
    (registered backbone, its arguments) at its initialisation under torch.manual_seed(seed)."""
    import torch

    from ..checkpoint import load_model
    from ..data import build_data
    from ..eval_protocols import extract_features, knn_top1
    from ..explain.cls_attention import attention_jaccard
    from ..registry import create_model

    bundle = build_data(data, size, seed=seed)
    result = {}
    models = [("dino", lambda: load_model(dino_dir)), ("supervised", lambda: load_model(sup_dir))]
    if untrained is not None:
        def at_init() -> torch.nn.Module:
            torch.manual_seed(seed)
            return create_model(untrained[0], num_classes=len(bundle.classes), **untrained[1])
        models.append(("untrained", at_init))
    for label, build in models:
        model = build()
        bank, val = extract_features(model, bundle.train), extract_features(model, bundle.val)
        knn = knn_top1(bank, bundle.train.labels, val, bundle.val.labels, len(bundle.classes))
        result[label] = {"knn_top1": knn, **attention_jaccard(model, bundle.val.images, bundle.val.masks)}
    return result


def summarize(per_seed: list[dict[str, Any]], args: argparse.Namespace, dino_name: str, supervised_name: str,
              data: str, epochs: int, batch: int, dino_args: dict[str, Any] | None = None) -> dict[str, Any]:
    def values(model: str, key: str) -> list[float]:
        return [r[model][key] for r in per_seed]

    table = {}
    for model in ("dino", "supervised", "untrained"):
        table[model] = {key: format_mean_std(values(model, key), 3 if "jaccard" in key else 2)
                        for key in ("knn_top1", "jaccard_best_head", "jaccard_mean_head")}
        table[model].update({f"{key}_mean": mean_std(values(model, key))[0]
                             for key in ("knn_top1", "jaccard_best_head", "jaccard_mean_head")})
    claim = compare(values("dino", "jaccard_best_head"), values("supervised", "jaccard_best_head"), paired=True,
                    quick=args.quick)
    claim_mean_head = compare(values("dino", "jaccard_mean_head"), values("supervised", "jaccard_mean_head"),
                              paired=True, quick=args.quick)
    sup_knn = table["supervised"]["knn_top1_mean"]
    ratio = table["dino"]["knn_top1_mean"] / sup_knn if sup_knn > 0 else float("nan")
    extra = "".join(f" --model-arg {item}" for item in args.model_arg)
    extra += " --background plain" if args.background == "plain" else ""
    extra += " --objects default" if args.objects == "default" else ""
    command = ("vitlab study dino --quick" + (f" --seeds {len(per_seed)}" if len(per_seed) != 2 else "") + extra
               if args.quick else
               f"vitlab study dino --model {dino_name} --train-images {args.train_images} --epochs {epochs} "
               f"--batch-size {batch} --lr {args.lr:g} --seeds {len(per_seed)}" + extra)
    untrained_knn = table["untrained"]["knn_top1_mean"]
    return {"command": command, "quick": args.quick, "data": data, "dino_model": dino_name,
            "dino_model_args": dict(dino_args or {}),
            # the architecture's k-NN with no training: a DINO ratio is only learning where DINO beats it
            "knn_ratio_untrained": untrained_knn / sup_knn if sup_knn > 0 else float("nan"),
            "dino_above_untrained": compare(values("dino", "knn_top1"), values("untrained", "knn_top1"),
                                            paired=True, quick=args.quick),
            "supervised_model": supervised_name, "epochs": epochs, "seeds": [r["seed"] for r in per_seed],
            "claim": {"statement": "Jaccard(60%-mass [CLS] attention mask, object mask): DINO > supervised "
                                   "(Caron et al. 2021, Table 8), best head", **claim},
            "claim_mean_head": claim_mean_head, "knn_ratio": ratio, "knn_target": KNN_TARGET,
            "knn_target_met": bool(ratio >= KNN_TARGET), "any_collapse": any(r["collapsed"] for r in per_seed),
            # the target is both: a k-NN ratio from a collapsed (chance-level) model means nothing
            "targets_met": bool(ratio >= KNN_TARGET and not any(r["collapsed"] for r in per_seed)),
            "table": table, "per_seed": per_seed}


def plot(per_seed: list[dict[str, Any]], path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, label in ((axes[0], "knn_top1", "k-NN top-1 (%)"),
                           (axes[1], "jaccard_best_head", "Jaccard of 60%-mass mask (best head)")):
        models = [m for m in ("dino", "supervised", "untrained") if m in per_seed[0]]
        for i, model in enumerate(models):
            vals = [r[model][key] for r in per_seed]
            mean, std = mean_std(vals)
            ax.bar(i, mean, yerr=std or 0.0, capsize=4, color=("tab:orange", "tab:blue", "tab:gray")[i], alpha=0.8)
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(models)), ["DINO", "supervised", "untrained"][:len(models)])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("DINO vs supervised ViT on single-object scenes" + (" (quick: smoke test)" if quick else ""),
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def attention_figure(dino_dir: Path, sup_dir: Path, data: str, size: int, seed: int, path: Path,
                     n: int = 4) -> Path:
    """Both models' per-head [CLS] attention and 60%-mass masks on n val images (the README picture)."""
    import torch

    from ..checkpoint import load_model
    from ..data import build_data
    from ..explain.cls_attention import plot_cls_attention

    val = build_data(data, size, seed=seed).val
    idx = torch.linspace(0, len(val) - 1, min(n, len(val))).round().long()
    models = [("DINO", load_model(dino_dir)), ("supervised", load_model(sup_dir))]
    return plot_cls_attention(models, val.images[idx], path, masks=val.masks[idx])
