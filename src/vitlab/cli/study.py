"""`vitlab study NAME [options]`: run one of the lectures' claims as an experiment (plot + JSON)."""
from __future__ import annotations

import argparse

from ..checks import text_arg


def register(sub: argparse._SubParsersAction) -> None:
    from ..studies import available_studies

    p = sub.add_parser("study", help="run a study: the lectures' claims as experiments")
    studies = p.add_subparsers(dest="study", metavar="NAME", required=True, parser_class=type(p))
    for name, module in available_studies().items():
        sp = studies.add_parser(name, help=getattr(module, "HELP", ""))
        sp.add_argument("--out", default=f"runs/study-{name}", type=text_arg, help="output directory (plot + JSON)")
        if hasattr(module, "add_arguments"):
            module.add_arguments(sp)
        sp.set_defaults(func=module.run)
