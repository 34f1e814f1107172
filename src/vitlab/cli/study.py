"""`vitlab study NAME [options]`: run one of the lectures' claims as an experiment (plot + JSON)."""
from __future__ import annotations

import argparse

from ..checks import choice_list_arg, text_arg


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
    sp = studies.add_parser("all", help="run every study and write one offline HTML page (the course report)")
    sp.add_argument("--out", default="runs/study-all", type=text_arg, help="output directory (index.html + studies)")
    sp.add_argument("--quick", action="store_true", help="every study as a smoke test (seconds each; no verdicts)")
    sp.add_argument("--only", type=choice_list_arg(list(available_studies())), default=None,
                    help="comma-separated studies to run (default all)")
    sp.set_defaults(func=run_all)


def run_all(args: argparse.Namespace) -> int:
    """`vitlab study all`: the page is written even when a study fails; then the failure is the exit status."""
    from ..errors import VitlabError
    from ..studies.course import PAGE, run_all as run_studies

    summary = run_studies(args.out, quick=args.quick, only=args.only)
    for name, entry in summary.items():
        print(f"{name:20s} {entry['wall_s']:7.1f} s  {', '.join(entry['verdicts']) or entry['error'] or '-'}")
    print(f"report: {args.out}/{PAGE}")
    failed = [name for name, entry in summary.items() if entry["error"]]
    if failed:
        raise VitlabError(f"study all: {', '.join(failed)} failed (see the page)")
    return 0
