"""`vitlab explain --checkpoint RUN_DIR_OR_MODEL IMAGE... --out DIR`: attention maps, rollout, attention distance,
position-embedding similarity, patch-embedding filters, per-patch logits and Itti-Koch saliency as an HTML report;
for a DETR detector, each detected object's decoder cross-attention and the encoder's self-attention instead; for a
CLIP model, the image tower's rollout, a text-conditioned map per --text prompt and the images x prompts similarity."""
from __future__ import annotations

import argparse

from ..checks import float_arg, int_arg, text_arg


def _layers(text: str) -> list[int]:
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None
    if not layers or min(layers) < 1:
        raise argparse.ArgumentTypeError(f"layers are numbered from 1, got {text!r}")
    return layers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="attention maps, rollout, saliency and more as an HTML report")
    p.add_argument("images", nargs="*", metavar="IMAGE", type=text_arg,
                   help="image files (resized to the model's input); for a translation model, sentences")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_MODEL", type=text_arg,
                   help="run directory / checkpoint, or a registered model name (fresh weights)")
    p.add_argument("--out", default="runs/explain", type=text_arg, help="report directory (index.html + PNGs)")
    p.add_argument("--data", default=None, metavar="SPEC", type=text_arg,
                   help="validation images of this data spec (digits, shapes, or a path; scenes or a COCO "
                        "folder for a detector); default: the run directory's own data when no image is given")
    p.add_argument("--samples", type=int_arg(at_least=1), default=4, help="how many validation images with --data")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME", type=text_arg,
                   help="class for the per-patch logits (default: each image's prediction)")
    p.add_argument("--layers", type=_layers, default=None,
                   help="1-based layers whose [CLS] attention is drawn (default: first, middle and last; every layer "
                        "of a model with at most 6)")
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean", help="rollout head fusion")
    p.add_argument("--discard-ratio", type=float_arg(at_least=0.0, below=1.0), default=0.0,
                   help="rollout: fraction of the lowest attention weights zeroed per layer (default 0)")
    p.add_argument("--text", action="append", default=None, type=text_arg, metavar="PROMPT",
                   help="CLIP: a prompt for the text-conditioned map and the similarity matrix (repeat; default: "
                        "the checkpoint's class prompts)")
    p.add_argument("--threshold", type=float_arg(at_least=0.0, at_most=1.0), default=0.5,
                   help="detection: score above which a query is a detected object whose attention is drawn")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain.run import explain_checkpoint

    summary = explain_checkpoint(args.checkpoint, args.images, args.out, data=args.data, samples=args.samples,
                                 class_name=args.class_name, layers=args.layers, head_fusion=args.head_fusion,
                                 discard_ratio=args.discard_ratio, threshold=args.threshold, texts=args.text)
    for line in summary.get("lines", []):                   # a task's own explanation (translation)
        print(line)
    for p in summary.get("predictions", []):
        wrong = f"  WRONG (true {p['true']})" if p.get("correct") is False else ""
        print(f"{p['image']:<40} {p['class']:<16} {p['probability'] * 100:5.1f}%{wrong}")
    for d in summary.get("detections", []):                 # a detector's report
        found = ", ".join(f"{o['class']} {o['score']:.2f}" for o in d["objects"])
        print(f"{d['image']:<40} {len(d['objects'])} objects above {summary['threshold']:g}" + (f": {found}" if found
                                                                                               else ""))
    files = summary.get("files") or [name for f in summary["figures"] if f["file"]
                                      for name in (f["file"], *f.get("more", []))]
    print(f"{len(files)} figures -> {summary['report']}")
    return 0
