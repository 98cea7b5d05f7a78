"""The package's imports only go down the floors (DESIGN.md), with no circles, and modules stay small.

base (errors, registry, utils, config, dist, data.schema) < data < models < losses < recipes
< train, eval, api < index < serve, experiments < cli (cli.py, demo.py, every ``commands.py``).
Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "medalign"

FLOORS: dict[str, int] = {
    "medalign": 0, "medalign.errors": 0, "medalign.registry": 0, "medalign.utils": 0,
    "medalign.config": 0, "medalign.dist": 0, "medalign.data.schema": 0,
    "medalign.data": 1, "medalign.models": 2, "medalign.losses": 3, "medalign.recipes": 4,
    "medalign.train": 5, "medalign.eval": 5, "medalign.api": 5,
    "medalign.index": 6, "medalign.serve": 7, "medalign.experiments": 7,
    "medalign.cli": 8, "medalign.demo": 8,
}
MAX_LINES = 500
# The package's own __init__ re-exports ``medalign.load`` lazily (inside a function): a facade, not a dependency.
FACADE = {("medalign", "medalign.api")}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def floor(module: str) -> int:
    """The floor of a module: the longest matching prefix in FLOORS; any ``*commands`` module is CLI."""
    if module.rsplit(".", 1)[-1].endswith("commands"):
        return FLOORS["medalign.cli"]
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in FLOORS:
            return FLOORS[key]
    raise KeyError(f"{module} has no floor in tests/core/test_layering.py: add it")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported medalign module) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("medalign")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("medalign"):
                continue
            # `from medalign.data import cache` imports the submodule medalign.data.cache
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else mod))
    return out


def _is_module(name: str) -> bool:
    p = SRC.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_imports_only_go_down():
    bad = []
    for path in _sources():
        me = module_name(path)
        for line, target in imports_of(path):
            if floor(target) > floor(me) and (me, target) not in FACADE:
                bad.append(f"{path.relative_to(SRC)}:{line} ({me}, floor {floor(me)}) imports {target} (floor {floor(target)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    for path in _sources():
        me = module_name(path)
        # a package and its own submodules (``recipes/__init__`` <-> ``recipes/base``) are one unit
        graph[me] = {t for _, t in imports_of(path)
                     if t != me and not me.startswith(t + ".") and not t.startswith(me + ".")
                     and (me, t) not in FACADE}
    # Tarjan-free check: DFS for a back edge, report the first circle found
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m not in graph:
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cyc = visit(m)
                if cyc:
                    return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n)
            assert cyc is None, "import circle: " + " -> ".join(cyc)


def test_modules_stay_small():
    big = [f"{p.relative_to(SRC)}: {n}" for p in _sources()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines:\n" + "\n".join(big)


def test_functions_stay_short():
    """No function over 120 lines unless a comment on its first lines says why (``# long:``)."""
    long = []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1: node.lineno + 3])
                if n > 120 and "# long:" not in head:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "functions over 120 lines:\n" + "\n".join(long)


def test_optimiser_steps_only_in_train():
    """One training loop: nothing outside medalign.train calls ``.step()`` on an optimiser."""
    bad = []
    for path in _sources():
        if module_name(path).startswith("medalign.train"):
            continue
        for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            s = ln.strip()
            if s.startswith("#"):
                continue
            if any(f"{o}.step(" in s for o in ("opt", "optimizer", "optimiser", "scaler")):
                bad.append(f"{path.relative_to(SRC)}:{i}: {s}")
    assert not bad, "optimiser steps outside train/:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,expected", [("medalign.recipes.clip", 4), ("medalign.eval.commands", 8),
                                             ("medalign.dist", 0), ("medalign.data.schema", 0)])
def test_floor_table(module, expected):
    assert floor(module) == expected


def test_tests_mirror_the_package():
    """tests/<area>/ for each package area (core = the base floor, api = api.py); no stray folders."""
    tests = Path(__file__).resolve().parents[1]
    areas = {p.relative_to(SRC).as_posix() for p in SRC.rglob("__init__.py")}
    areas = {a.rsplit("/", 1)[0] for a in areas if "/" in a}
    dirs = {p.parent.relative_to(tests).as_posix() for p in tests.rglob("test_*.py")}
    stray = sorted(dirs - areas - {"core", "api", "reliability"})
    assert not stray, f"test folders with no matching package under src/medalign: {stray}"
