"""`vitlab info MODEL`: parameters, GFLOPs at its input size, tokens."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, GFLOPs and tokens of a model")
    p.add_argument("model", help="registered model name")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.flops import model_summary

    s = model_summary(args.model, img_size=args.img_size, num_classes=args.num_classes)
    print(f"model        {s['name']}")
    print(f"input        {s['input'][1]}x{s['input'][2]}x{s['input'][0]}")
    print(f"parameters   {s['params']:,} ({s['params'] / 1e6:.2f}M)")
    print(f"GFLOPs       {s['gflops']:.3f} (multiply-adds per image, as papers count them)")
    if s.get("tokens") is not None:
        print(f"tokens       {s['tokens']} ({s['prefix_tokens']} prefix + {s['tokens'] - s['prefix_tokens']} patches)")
    return 0
