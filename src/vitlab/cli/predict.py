"""`vitlab predict --checkpoint RUN_DIR IMAGE...`: what the checkpoint's task predicts for each image: top-k classes
with probabilities (classification), labelled boxes as PNGs + detections.json (detection), a palette mask PNG and an
overlay per image or a slice montage per volume (segmentation)."""
from __future__ import annotations

import argparse

from ..checks import device_arg, float_arg, int_arg, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files, or detect objects in them")
    p.add_argument("--checkpoint", required=True, type=text_arg,
                   help="run directory, checkpoint, or .onnx file (--runtime onnx)")
    p.add_argument("images", nargs="+", metavar="IMAGE", type=text_arg,
                   help="image files; for a translation model, the sentences to translate")
    p.add_argument("--top-k", type=int_arg(at_least=1), default=5, help="classification: classes shown per image")
    p.add_argument("--threshold", type=float_arg(at_least=0.0, at_most=1.0), default=0.5,
                   help="detection: lowest score kept (0-1)")
    p.add_argument("--text", action="append", default=None, type=text_arg,
                   help="CLIP: a text prompt to score each image against (repeat; default: the class prompts)")
    p.add_argument("--beam-size", type=int_arg(at_least=1), default=None,
                   help="captioning/translation: beam width (1 = greedy; default: captioning greedy, translation "
                        "the model's)")
    p.add_argument("--length-penalty", type=float_arg(at_least=0.0), default=None,
                   help="captioning/translation beam search: GNMT length penalty alpha (default 0.6)")
    p.add_argument("--out", default=None, type=text_arg,
                   help="detection/segmentation: where the PNGs (and detections.json, masks) go (default runs/predict)")
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="onnx: run RUN_DIR/model.onnx or a .onnx file (vitlab export --onnx) in ONNX Runtime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast (CPU included; fused oneDNN kernels there)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import VitlabError
    from ..predict import Predictor
    from ..tasks import get_task, task_of
    from ..tasks.base import decoding_options

    if args.top_k < 1:
        raise VitlabError(f"--top-k must be at least 1, got {args.top_k}")
    if args.runtime == "onnx":
        from ..export import OnnxPredictor

        pred = OnnxPredictor.load(args.checkpoint, args.device, precision=args.precision)
    else:
        pred = Predictor.load(args.checkpoint, args.device, precision=args.precision)
    task = task_of(pred.model) if args.runtime == "torch" else get_task("classification")
    texts = {}
    if getattr(args, "text", None):
        if task.name != "contrastive":
            raise VitlabError(f"--text: only for CLIP (contrastive) checkpoints; this one is {task.name}")
        texts = {"texts": args.text}
    decoding = decoding_options(task, getattr(args, "beam_size", None), getattr(args, "length_penalty", None))
    for line in task.predict(pred, args.images, out=args.out, top_k=args.top_k, threshold=args.threshold,
                             **texts, **decoding):
        print(line)
    return 0
