"""Study: do ViTs decide by shape more often than CNNs when shape and texture disagree? (Geirhos et al. 2019's
cue-conflict test; Tuli et al. 2021: ViTs have a higher shape bias than CNNs.)

Geirhos et al. (ICLR 2019) showed ImageNet CNNs a texture image, a content image and a cue conflict (a cat's
shape with elephant skin) and found that they mostly answer with the texture, where people answer with the
shape. Tuli, Dasgupta, Grant and Griffiths (CogSci 2021, "Are Convolutional Neural Networks or Transformers more
like human vision?") and Naseer et al. (NeurIPS 2021) measured a higher shape bias for ViTs than for ResNets.
Those models were trained on ImageNet, whose labels follow shape; here both models learn from scratch on
generated images (vitlab.data.cue_conflict) where shape and texture predict the label equally well: class k
is shape k (circle, square, ...) filled with texture k (stripes, checker, dots, ...). A ViT (vit_micro_patch4_32)
and a ResNet (resnet_micro_32) train on the same images with the same recipe, seeds and epochs. On held-out
images we measure
  content      top-1 on images like the training ones (both cues agree): did the model learn the task?
  texture      top-1 on full-frame textures (no shape), against the texture's class
  shape        top-1 on flat-coloured silhouettes (no texture), against the shape's class
  shape bias   on cue conflicts (shape i, texture j != i): shape decisions / (shape + texture decisions),
               Geirhos' definition (decisions matching neither cue are left out; 0.5 if there are none)
The verdict (vitlab.studies.verdict, paired over seeds) is on "ViT shape bias > ResNet shape bias". The data
are drawn once (data seed 0); the seeds vary the models' initialisation and batch order.

    vitlab study shape-texture                # 4 classes, 32 px, 1200 images, 2 models x 3 seeds x 30 epochs:
                                              # ~9.5 min of one quiet core (3 min CPU per seed, measured)
    vitlab study shape-texture --classes 6    # all six shape-texture pairs
    vitlab study shape-texture --quick        # 16 px, a few images, one epoch: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import load_model
from ..checks import int_arg, text_arg
from ..data import cue_conflict
from ..errors import VitlabError
from . import _common as common
from .robustness import pixel_space
from .verdict import compare, undertrained

log = logging.getLogger(__name__)

NAME = "shape-texture"
HELP = "ViT vs ResNet trained where shape and texture both give the class: whose decisions follow shape in conflicts"
CLAIM = ("CNNs decide by texture where people decide by shape (cue-conflict images); ViTs have a higher shape "
         "bias than CNNs")
PAPER = ("Geirhos et al., ImageNet-trained CNNs are biased towards texture, ICLR 2019 (Fig. 1: texture, content, "
         "cue conflict); Tuli et al., Are Convolutional Neural Networks or Transformers more like human vision?, "
         "CogSci 2021; Naseer et al., Intriguing Properties of Vision Transformers, NeurIPS 2021")
MODELS = ("ViT", "ResNet")
TESTS = {"content": "content\n(both cues)", "shape": "shape only\n(silhouette)",
         "texture": "texture only\n(no shape)"}        # the accuracy panels, beside the cue-conflict shape bias
DATA_SEED = 0
QUICK_TRAIN_IMAGES = 36
_STREAMS = {"train": 0, "val": 1, "conflict": 2, "texture": 3, "shape": 4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=int_arg(at_least=2, at_most=cue_conflict.MAX_CLASSES), default=4,
                   help=f"shape-texture pairs (2-{cue_conflict.MAX_CLASSES}; default 4)")
    p.add_argument("--img-size", type=int_arg(at_least=8), default=32)
    p.add_argument("--train-per-class", type=int_arg(at_least=1), default=300, help="training images per class")
    p.add_argument("--test-per-class", type=int_arg(at_least=1), default=100,
                   help="held-out images per class in each test (content, texture, shape), and per ordered pair "
                        "in the cue conflicts")
    p.add_argument("--vit", type=text_arg, default="vit_micro_patch4_32", help="ViT model name")
    p.add_argument("--resnet", type=text_arg, default="resnet_micro_32", help="ResNet model name")
    # 30: the ViT reaches 94% content top-1 (15 epochs: 77%, still learning); the ResNet ~98% by epoch 10
    p.add_argument("--epochs", type=int_arg(at_least=1), default=30, help="training epochs of each model")
    common.add_seed_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        quick_train = -(-QUICK_TRAIN_IMAGES // args.classes)                   # at least one batch of 32
        args = common.quick_args(args, NAME, add_arguments, img_size=common.QUICK_SIZE, epochs=1,
                                 train_per_class=quick_train, test_per_class=common.QUICK_VAL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    folder = out / (f"quick-data-k{args.classes}" if args.quick else
                    f"data-cue{args.img_size}-k{args.classes}-{args.train_per_class}-{args.test_per_class}")
    data = cue_folder(folder, args.classes, args.img_size, args.train_per_class, args.test_per_class)
    tests = held_out_sets(args.classes, args.img_size, args.test_per_class)
    names = {"ViT": args.vit, "ResNet": args.resnet}
    per_seed = []
    for seed in seeds:
        models: dict[str, Any] = {}
        for label, name in names.items():
            run_dir = out / f"{label.lower()}-seed{seed}"
            metrics = common.train(name, data, run_dir, epochs=args.epochs, seed=seed, img_size=args.img_size,
                                   quick=args.quick, hflip=True)     # every texture and shape is mirror-symmetric
            model = load_model(run_dir).eval()
            order = class_order(model.vitlab_meta.get("classes") or [], cue_conflict.class_names(args.classes))
            models[label] = {"name": name, "train_val_top1": metrics["val_top1"],
                             **evaluate(pixel_space(model), tests, order)}
            log.info("%s: %s seed %d content %.1f%%, shape bias %.3f", NAME, label, seed,
                     models[label]["content"], models[label]["shape_bias"])
        per_seed.append({"seed": seed, "models": models})
    results = summarize(per_seed, args, seeds)
    return common.finish(results, out, NAME, log=log, difference="%+.3f",
                         plots={"shape_texture.png": lambda path: plot(results, tests, path)})


# --- data --------------------------------------------------------------------------------------------------------
def cue_folder(root: Path, num_classes: int, size: int, per_class: int, val_per_class: int) -> str:
    """An ImageFolder (train/<class>/, val/<class>/) of content images, for the library's trainer; kept when
    complete. Both splits agree in shape and texture: val top-1 says whether a model learned the task."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file():
        return str(root)
    names = cue_conflict.class_names(num_classes)
    for split, n in (("train", per_class), ("val", val_per_class)):
        rng = np.random.default_rng([DATA_SEED, _STREAMS[split]])
        cues = cue_conflict.generate("content", n, num_classes, size, rng)
        for i in range(len(cues)):
            folder = root / split / names[int(cues.shape[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(cues.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    done.write_text("")
    return str(root)


def held_out_sets(num_classes: int, size: int, per_class: int) -> dict[str, cue_conflict.CueImages]:
    """The held-out content images (the val split's stream) and the conflict, texture-only and shape-only sets."""
    streams = {"content": _STREAMS["val"], "conflict": _STREAMS["conflict"], "texture": _STREAMS["texture"],
               "shape": _STREAMS["shape"]}
    return {kind: cue_conflict.generate(kind, per_class, num_classes, size,
                                        np.random.default_rng([DATA_SEED, stream]))
            for kind, stream in streams.items()}


# --- measures ----------------------------------------------------------------------------------------------------
def class_order(model_classes: list[str], names: list[str]) -> Tensor:
    """(num_classes,) int64: our class index of each model output (the ImageFolder sorts its class names)."""
    if sorted(model_classes) != sorted(names):
        raise VitlabError(f"the trained model's classes {model_classes} are not the study's {names}")
    return torch.tensor([names.index(c) for c in model_classes])


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, order: Tensor, batch: int = 256) -> Tensor:
    """Predicted classes (n,), in our class order, of uint8 images (n, 3, S, S); model takes [0, 1] pixels
    (robustness.pixel_space) and its output j is our class order[j]."""
    return order[torch.cat([model(images[i:i + batch].float() / 255.0).argmax(-1)
                            for i in range(0, len(images), batch)])]


def shape_bias(pred: Tensor, shape: Tensor, texture: Tensor) -> dict[str, float]:
    """Geirhos et al.'s measure on cue conflicts: shape decisions / (shape + texture decisions); decisions that
    match neither cue are left out (0.5, no preference, if there are none). Also both hit rates in percent."""
    by_shape, by_texture = int((pred == shape).sum()), int((pred == texture).sum())
    total = by_shape + by_texture
    return {"shape_bias": by_shape / total if total else 0.5, "conflict_shape_%": 100.0 * by_shape / len(pred),
            "conflict_texture_%": 100.0 * by_texture / len(pred)}


def evaluate(model: nn.Module, tests: dict[str, cue_conflict.CueImages], order: Tensor) -> dict[str, float]:
    """Top-1 (percent) on the content, texture-only (vs the texture) and shape-only (vs the shape) images, and the
    shape bias on the cue conflicts."""
    def top1(kind: str, truth: str) -> float:
        cues = tests[kind]
        return 100.0 * float((predict(model, cues.images, order) == getattr(cues, truth)).float().mean())

    conflict = tests["conflict"]
    return {"content": top1("content", "shape"), "texture": top1("texture", "texture"),
            "shape": top1("shape", "shape"), **shape_bias(predict(model, conflict.images, order), conflict.shape,
                                                          conflict.texture)}


def values(per_seed: list[dict[str, Any]], model: str, key: str) -> list[float]:
    return [float(s["models"][model][key]) for s in per_seed]


def summarize(per_seed: list[dict[str, Any]], args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    table, measures = [], {}
    for label in MODELS:
        cells = {key: common.summary(values(per_seed, label, key), 3 if key == "shape_bias" else 1)
                 for key in ("shape_bias", "conflict_shape_%", "conflict_texture_%", *TESTS)}
        measures[label] = cells
        table.append({"model": label, "name": per_seed[0]["models"][label]["name"],
                      "shape bias": cells["shape_bias"]["text"], "content top-1 %": cells["content"]["text"],
                      "shape-only top-1 %": cells["shape"]["text"], "texture-only top-1 %": cells["texture"]["text"],
                      "conflict: by shape %": cells["conflict_shape_%"]["text"],
                      "conflict: by texture %": cells["conflict_texture_%"]["text"]})
    claims = [common.claim("the ViT's shape bias on cue conflicts is higher than the ResNet's",
                           "Tuli et al. 2021, Fig. 3 (ViT-B/16 vs ResNet-50 on Geirhos' cue conflicts)",
                           compare(values(per_seed, "ViT", "shape_bias"), values(per_seed, "ResNet", "shape_bias"),
                                   paired=True, quick=args.quick,
                                   undertrained=undertrained({m: values(per_seed, m, "content") for m in MODELS},
                                                             len(cue_conflict.class_names(args.classes)))),
                           measure="shape / (shape + texture) decisions on cue-conflict images",
                           caveat=_content_caveat(measures))]
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds,
            "classes": cue_conflict.class_names(args.classes), "img_size": args.img_size,
            "train_per_class": args.train_per_class, "test_per_class": args.test_per_class, "epochs": args.epochs,
            "claims": claims, "table": table, "measures": measures, "per_seed": per_seed}


def _content_caveat(measures: dict[str, Any], threshold: float = 90.0) -> str | None:
    """A note when a model did not learn the task (content top-1 below threshold): its cue preference is then
    the preference of a half-trained model."""
    low = [f"{label} {measures[label]['content']['mean']:.1f}%" for label in MODELS
           if measures[label]["content"]["mean"] < threshold]
    return f"content top-1 below {threshold:.0f}%: {', '.join(low)}" if low else None


# --- figure ------------------------------------------------------------------------------------------------------
def plot(results: dict[str, Any], tests: dict[str, cue_conflict.CueImages], path: Path) -> None:
    """Left: examples (texture, content, shape-only, cue conflict) as in Geirhos et al.'s Fig. 1; middle: shape
    bias per model (mean ± std, seeds as dots); right: the three accuracy panels."""
    from ..explain.plots import new_figure

    fig = new_figure(13.0, 4.2)
    grid = fig.add_gridspec(2, 6, width_ratios=[1, 1, 1, 1, 2.6, 3.6], wspace=0.35)
    _examples(fig, grid, tests, results["classes"])
    measures, k = results["measures"], len(results["classes"])
    ax = fig.add_subplot(grid[:, 4])
    for x, label in enumerate(MODELS):
        cell = measures[label]["shape_bias"]
        ax.bar(x, cell["mean"], yerr=cell["std"] or 0.0, capsize=4, color=f"C{x}", alpha=0.8)
        ax.plot([x] * len(cell["per_seed"]), cell["per_seed"], "k.", markersize=4)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(MODELS)), MODELS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("shape bias (mean ± std over seeds)")
    ax.set_title("cue conflict: shape / (shape + texture)", fontsize=9)
    ax = fig.add_subplot(grid[:, 5])
    width = 0.38
    for m, label in enumerate(MODELS):
        xs = [t + (m - 0.5) * width for t in range(len(TESTS))]
        cells = [measures[label][key] for key in TESTS]
        ax.bar(xs, [c["mean"] for c in cells], width, yerr=[c["std"] or 0.0 for c in cells], capsize=3,
               color=f"C{m}", alpha=0.8, label=label)
    ax.axhline(100.0 / k, color="gray", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xticks(range(len(TESTS)), list(TESTS.values()))
    ax.set_ylim(0, 118)                                  # room for the legend above the 100% bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("top-1 % (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(common.quick_title(f"Shape vs texture: {k} classes at {results['img_size']} px, "
                                    f"{len(results['seeds'])} seed(s), {results['epochs']} epochs", results["quick"]),
                 fontsize=10)
    common.save(fig, path)


def _examples(fig: Any, grid: Any, tests: dict[str, cue_conflict.CueImages], classes: list[str]) -> None:
    """Two rows of Geirhos' panels: texture j alone, content i, shape i alone, shape i with texture j."""
    conflict = tests["conflict"]
    later = (conflict.texture != conflict.texture[0]).nonzero()        # the second example: another texture
    for row, c in enumerate([0, int(later[0]) if len(later) else 0]):
        i, j = int(conflict.shape[c]), int(conflict.texture[c])
        shape_name, texture_name = classes[i].split("-")[0], classes[j].split("-")[1]
        panels = [(_first(tests["texture"], "texture", j), f"texture:\n{texture_name}"),
                  (_first(tests["content"], "shape", i), f"content:\n{classes[i]}"),
                  (_first(tests["shape"], "shape", i), f"shape:\n{shape_name}"),
                  (conflict.images[c], f"conflict:\n{shape_name}+{texture_name}")]
        for col, (image, title) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])


def _first(cues: cue_conflict.CueImages, cue: str, k: int) -> Tensor:
    """The first image whose `cue` label is k (the first image if none is)."""
    hits = (getattr(cues, cue) == k).nonzero()
    return cues.images[int(hits[0]) if len(hits) else 0]
