"""`vitlab models [PATTERN]`: registered model names with their parameter counts."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models (name, parameters)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'vit_*_224'")
    p.add_argument("--table", action="store_true", help="markdown table with GFLOPs and published figures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.flops import model_summary
    from ..errors import VitlabError
    from ..registry import list_models

    names = list_models(args.pattern)
    if not names:
        raise VitlabError(f"no model matches {args.pattern!r}; `vitlab models` lists them all")
    if args.table:
        from ..bench.table import models_table

        print(models_table(names))
        return 0
    for name in names:
        s = model_summary(name, flops=False)
        print(f"{name:<48} {s['params'] / 1e6:9.2f}M params")
    return 0
