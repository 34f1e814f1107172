"""`vitlab data export scenes DIR [--n N] [--n-val M] [--size S] [--seed K]`: write generated data in standard formats.

DIR gets a COCO folder (annotations/instances_{train,val}.json, train/ and val/ PNG images), semantic index masks
(masks/{train,val}/) and COCO captions (annotations/captions_{train,val}.json); `--data DIR` reads it back.
"""
from __future__ import annotations

import argparse

from ..checks import int_arg, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="export generated data sets (scenes) in standard formats")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    export = actions.add_parser("export", help="write a generated data set to a folder (COCO + masks + captions)")
    export.add_argument("source", choices=["scenes"], help="the generated data set to write")
    export.add_argument("dir", type=text_arg, help="output folder (created; files in it are overwritten)")
    export.add_argument("--n", type=int_arg(at_least=1), default=2000,
                        help="train images (default 2000, as --data scenes)")
    export.add_argument("--n-val", type=int_arg(at_least=1), default=None,
                        help="val images (default N // 4, at least 1)")
    export.add_argument("--size", type=int_arg(at_least=16), default=64,
                        help="image side in pixels (default 64, at least 16)")
    export.add_argument("--seed", type=int_arg(at_least=0), default=0, help="generator seed (default 0)")
    export.add_argument("--max-objects", type=int_arg(at_least=1), default=3,
                        help="objects per image, 1 to this (default 3)")
    export.set_defaults(func=run_export)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def run_export(args: argparse.Namespace) -> int:
    from ..data.coco import export_scenes
    from ..errors import VitlabError

    if args.n < 1:
        raise VitlabError(f"--n must be at least 1, got {args.n}")
    n_val = max(1, args.n // 4) if args.n_val is None else args.n_val
    result = export_scenes(args.dir, n_train=args.n, n_val=n_val, size=args.size, seed=args.seed,
                           max_objects=args.max_objects)
    print(f"wrote {result['train']} train + {result['val']} val scenes ({result['size']}x{result['size']} px, "
          f"seed {args.seed}, {result['objects']} objects) to {result['out']}: COCO annotations/instances_*.json "
          f"with train/ val/ images, masks/, annotations/captions_*.json")
    return 0
