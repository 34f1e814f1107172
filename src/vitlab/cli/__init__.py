"""The `vitlab` command. Each module of this package is one sub-command: it defines
`register(subparsers)`, which adds its parser and sets `func`, a thin shell over a library function.
A VitlabError (bad input) becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from ..errors import VitlabError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2, as argparse does)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineParser(prog="vitlab", description="Vision transformers as taught: train, evaluate, explain, "
                                                       "convert, benchmark.")
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s")
    from ..runtime import keep_freed_memory

    keep_freed_memory()      # glibc: reuse freed activations instead of faulting fresh pages in every step
    try:
        from .. import cpu_policy

        cpu_policy.start()   # torch threads = the cores other processes leave free (VITLAB_CPU_POLICY=off: not)
        rc = args.func(args)
        return rc if isinstance(rc, int) else 0
    except VitlabError as e:
        print(f"vitlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitlab {args.command}: interrupted", file=sys.stderr)
        return 130
