"""`vitlab info MODEL|CHECKPOINT|RUN_DIR`: parameters, GFLOPs at its input size, tokens, classes."""
from __future__ import annotations

import argparse

from ..checks import int_arg, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, GFLOPs, tokens and classes of a model, checkpoint or run")
    p.add_argument("model", type=text_arg, help="registered model name, checkpoint or run directory")
    p.add_argument("--img-size", type=int_arg(at_least=1), default=None,
                   help="input side in pixels (default: the model's)")
    p.add_argument("--num-classes", type=int_arg(at_least=1), default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.flops import model_summary

    name, model_args, classes, where = describe_source(args.model)
    img_size = args.img_size or model_args.pop("img_size", None)
    num_classes = args.num_classes or model_args.pop("num_classes", None) or (len(classes) if classes else None)
    model_args.pop("img_size", None)
    model_args.pop("num_classes", None)
    s = model_summary(name, img_size=img_size, num_classes=num_classes, **model_args)
    print(f"model        {s['name']}" + (f" ({where})" if where else ""))
    changed = changed_settings(name, model_args)
    if changed:
        print(f"config       {changed} (the checkpoint's; the registered {name} differs)")
    print(f"input        {s['input'][1]}x{s['input'][2]}x{s['input'][0]}")
    print(f"parameters   {s['params']:,} ({s['params'] / 1e6:.2f}M)")
    print(f"GFLOPs       {s['gflops']:.3f} (multiply-adds per image, as papers count them)")
    if s.get("tokens") is not None:
        print(f"tokens       {s['tokens']} ({s['prefix_tokens']} prefix + {s['tokens'] - s['prefix_tokens']} patches)")
    print(f"classes      {class_line(name, num_classes, classes, args.num_classes is not None, model_args)}")
    return 0


def describe_source(text: str) -> tuple[str, dict, list[str] | None, str]:
    """(model name, constructor arguments, class names or None, where they came from) of a registered name,
    or of a checkpoint / run directory (its config; the weights are not needed)."""
    from pathlib import Path

    if not Path(text).exists():
        return text, {}, None, ""
    from ..checkpoint_files import CONFIG_NAME, is_vitlab_dir, read_config

    if is_vitlab_dir(text):          # config.json is enough: no weights read
        cfg = read_config(text)
        return cfg["model"], dict(cfg.get("model_args", {})), cfg.get("classes"), f"{Path(text) / CONFIG_NAME}"
    from ..convert import read_checkpoint

    ckpt = read_checkpoint(text)
    return ckpt.model, dict(ckpt.model_args), ckpt.meta.get("classes"), f"{ckpt.meta.get('source_format', '')} "\
        f"checkpoint {text}".strip()


def changed_settings(name: str, model_args: dict) -> str:
    """The settings in which a checkpoint's model differs from the registered variant of its name, "k=v, ..."."""
    from ..registry import default_config

    if not model_args:
        return ""
    base, built = default_config(name), default_config(name, **model_args)
    return ", ".join(f"{k}={v}" for k, v in built.items() if k in base and base[k] != v)


def class_line(name: str, num_classes: int | None, classes: list[str] | None, given: bool, model_args: dict) -> str:
    """How many classes the model has and where that number comes from."""
    if given:
        return f"{num_classes} (--num-classes)"
    if classes:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        return f"{len(classes)} (the checkpoint's: {shown})"
    if num_classes:
        return f"{num_classes} (the checkpoint's head)"
    from ..registry import default_config

    default = default_config(name, **model_args).get("num_classes")
    return f"{default} (the variant's default; --num-classes N for another head)"
