"""Imports point one way: variants <- convert <- checkpoint <- registry, and export <- predict never back.

The graph is read off the source (every `import` statement, at module level or inside a function), so a lazy
import that closes a cycle fails here as well as one at the top of a file. Plugin discovery through importlib
(vitlab.variants loading the model files, vitlab.convert loading its format modules) is not a static import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import vitlab

ROOT = Path(vitlab.__file__).parent
LAYERED = ("vitlab.variants", "vitlab.checkpoint_files", "vitlab.convert", "vitlab.checkpoint", "vitlab.registry",
           "vitlab.predict", "vitlab.export")


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _import_graph() -> dict[str, set[str]]:
    """module -> the vitlab modules its import statements name (parent packages' own imports not followed)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:                 # `from . import x` may name a submodule
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _in_layers(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in LAYERED)


def test_no_import_cycle_through_registry_checkpoint_convert_predict_export():
    cycles = [sorted(c) for c in _cycles(_import_graph()) if any(_in_layers(m) for m in c)]
    assert cycles == []


def test_each_layer_imports_only_the_layers_below_it():
    graph = _import_graph()
    below = {"vitlab.variants": ("vitlab.registry", "vitlab.checkpoint", "vitlab.convert"),
             "vitlab.checkpoint_files": ("vitlab.registry", "vitlab.checkpoint", "vitlab.convert", "vitlab.variants"),
             "vitlab.convert": ("vitlab.registry", "vitlab.checkpoint", "vitlab.predict", "vitlab.export"),
             "vitlab.checkpoint": ("vitlab.registry", "vitlab.predict", "vitlab.export"),
             "vitlab.predict": ("vitlab.export",)}
    wrong = {m: sorted(d for d in deps if d in below[layer] or any(d.startswith(f + ".") for f in below[layer]))
             for layer in below for m, deps in graph.items() if m == layer or m.startswith(layer + ".")}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_group_keys_has_one_home():
    graph = _import_graph()
    users = sorted(m for m, deps in graph.items() if "vitlab.convert._keymap" in deps)
    assert "vitlab.checkpoint" in users
    sources = [p for p in ROOT.rglob("*.py") if "def group_keys(" in p.read_text()]
    assert [p.relative_to(ROOT).as_posix() for p in sources] == ["convert/_keymap.py"]
