"""The lectures' claims as runnable experiments: `vitlab study NAME`.

Each module here defines NAME (the CLI name), HELP (one line), `add_arguments(parser)` and
`run(args: argparse.Namespace) -> dict` which writes its plot + JSON under args.out and returns the numbers.
Modules are discovered automatically.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available_studies() -> dict[str, ModuleType]:
    studies = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            studies[module.NAME] = module
    return dict(sorted(studies.items()))
