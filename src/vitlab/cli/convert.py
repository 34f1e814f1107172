"""`vitlab convert SRC DST`: a timm / HF transformers / Google .npz / vitlab checkpoint to a vitlab or HF directory."""
from __future__ import annotations

import argparse

from ..checks import int_arg, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a timm, HF transformers or Google .npz checkpoint",
                       description="Read a checkpoint (format detected from the file(s): HF transformers directory, "
                                   "timm .pth/.pt/.safetensors, Google .npz, vitlab directory) and write a vitlab "
                                   "directory, or an HF transformers directory with --to hf. Output is safetensors.")
    p.add_argument("src", type=text_arg, help="checkpoint file or directory")
    p.add_argument("dst", type=text_arg, help="output directory")
    p.add_argument("--to", choices=("vitlab", "hf"), default="vitlab", help="output format (default: vitlab)")
    p.add_argument("--model", default=None, type=text_arg,
                   help="vitlab model name (timm state dicts do not record their architecture; e.g. "
                        "deit_small_distilled_patch16_224)")
    p.add_argument("--num-classes", type=int_arg(at_least=1), default=None, help="new classifier size (fresh head)")
    p.add_argument("--img-size", type=int_arg(at_least=1), default=None,
                   help="new input size (position embeddings resampled)")
    p.add_argument("--num-heads", type=int_arg(at_least=1), default=None,
                   help="attention heads, for weights that do not record them (MONAI UNETR; its default 12)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of .pth/.bin files that need it (runs code from the file: only for "
                        "sources you trust)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import convert_checkpoint

    model = convert_checkpoint(args.src, args.dst, to=args.to, model=args.model, num_classes=args.num_classes,
                               img_size=args.img_size, trust_pickle=args.trust_pickle,
                               num_heads=args.num_heads)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.src} -> {args.dst} ({args.to}): {built_description(model)}, {params / 1e6:.2f}M parameters")
    return 0


def built_description(model) -> str:
    """What was built: the registered name when the configuration is that variant's, else the model class and
    every setting that differs from the variant it was built from (a small custom model is not ViT-B)."""
    import dataclasses

    from ..registry import default_config

    name = model.vitlab_name
    cfg = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        return name
    base = default_config(name)
    changed = {k: v for k, v in dataclasses.asdict(cfg).items() if k in base and base[k] != v}
    if not changed:
        return name
    shown = ", ".join(f"{k}={_short(v)}" for k, v in changed.items())
    return f"{type(model).__name__}({shown}) (vitlab config of {name} with these changes)"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value) if isinstance(value, str) else str(value)
