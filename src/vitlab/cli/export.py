"""`vitlab export CHECKPOINT --onnx [--out FILE]`: an ONNX graph ONNX Runtime runs (`vitlab predict --runtime onnx`)."""
from __future__ import annotations

import argparse

from ..checks import int_arg, text_arg

MIN_OPSET, MAX_OPSET = 9, 20       # what torch's ONNX exporters write (TorchScript: up to 20)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (run with vitlab predict --runtime onnx)")
    p.add_argument("checkpoint", type=text_arg, help="run directory, checkpoint, or model name (fresh weights)")
    p.add_argument("--onnx", action="store_true", required=True, help="write an ONNX graph (the only format so far)")
    p.add_argument("--out", default=None, type=text_arg,
                   help="output file (default RUN_DIR/model.onnx, or ./MODEL.onnx)")
    p.add_argument("--opset", type=int_arg(at_least=MIN_OPSET, at_most=MAX_OPSET), default=17,
                   help="ONNX opset (default 17)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing ONNX Runtime's logits with PyTorch's (batch 1 and 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    from ..export.onnx import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, opset=args.opset, dynamo=args.dynamo,
                               check=not args.no_check)
    print(f"wrote {result['path']} ({result['bytes'] / 2**20:.1f} MB)")
    for batch, diff in result.get("max_abs_diff", {}).items():
        print(f"batch {batch}: max |onnxruntime - torch| logit difference {diff:.2e}")
    return result
