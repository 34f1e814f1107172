"""`vitlab predict --checkpoint RUN_DIR IMAGE...`: top-k classes with probabilities for each image."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint, or .onnx file (--runtime onnx)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="onnx: run RUN_DIR/model.onnx or a .onnx file (vitlab export --onnx) in ONNX Runtime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast (CPU included; fused oneDNN kernels there)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..predict import Predictor

    pred = Predictor.load(args.checkpoint, args.device, runtime=args.runtime, precision=args.precision)
    for path, top in zip(args.images, pred.predict(args.images, args.top_k)):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    return 0
