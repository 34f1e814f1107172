"""`vitlab convert SRC DST`: a timm / HF transformers / Google .npz / vitlab checkpoint to a vitlab or HF directory."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a timm, HF transformers or Google .npz checkpoint",
                       description="Read a checkpoint (format detected from the file(s): HF transformers directory, "
                                   "timm .pth/.pt/.safetensors, Google .npz, vitlab directory) and write a vitlab "
                                   "directory, or an HF transformers directory with --to hf. Output is safetensors.")
    p.add_argument("src", help="checkpoint file or directory")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=("vitlab", "hf"), default="vitlab", help="output format (default: vitlab)")
    p.add_argument("--model", default=None,
                   help="vitlab model name (timm state dicts do not record their architecture; e.g. "
                        "deit_small_distilled_patch16_224)")
    p.add_argument("--num-classes", type=int, default=None, help="new classifier size (fresh head)")
    p.add_argument("--img-size", type=int, default=None, help="new input size (position embeddings resampled)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of .pth/.bin files that need it (runs code from the file: only for "
                        "sources you trust)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert.export_hf import convert_checkpoint

    model = convert_checkpoint(args.src, args.dst, to=args.to, model=args.model, num_classes=args.num_classes,
                               img_size=args.img_size, trust_pickle=args.trust_pickle)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.src} -> {args.dst} ({args.to}): {model.vitlab_name}, {params / 1e6:.2f}M parameters")
    return 0
