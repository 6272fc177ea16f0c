"""The package's imports form no cycle (a circle would make import order matter) and point down its layers (base <
core < methods/datasets < eval < run < output < studies < cli < perf): no module imports one of a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bench": "bench", "bench.methods": "methods", "bench.datasets": "datasets"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for p in (ROOT / folder).rglob("*.py"):
            parts = [x for x in p.relative_to(ROOT / folder).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


def _imports(path: Path, known: set[str], nested: bool) -> set[str]:
    """The package modules ``path`` imports: at module level, or (``nested``) anywhere, inside functions too."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree) if nested else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def _assert_no_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_import_cycle_at_module_level():
    mods = _modules()
    graph = {m: _imports(p, set(mods), nested=False) - {m} for m, p in mods.items()}
    _assert_no_cycle(graph)
    assert len(graph) > 30  # the walk saw the package


LAYERS = [
    ("bench", "bench.errors", "bench.registry", "bench.pixels"),  # the public base
    ("bench.core",),
    ("bench.methods", "bench.datasets"),
    ("bench.eval",),
    ("bench.run",),
    ("bench.output",),
    ("bench.studies",),
    ("bench.cli",),
    ("bench.perf",),
]


def layer(module: str) -> int:
    """The layer of ``module``: the one whose longest prefix names it."""
    hits = [
        (len(p), i) for i, prefixes in enumerate(LAYERS) for p in prefixes if module == p or module.startswith(p + ".")
    ]
    assert hits, f"{module} is in no layer: add it to LAYERS"
    return max(hits)[1]


def test_imports_point_down_the_layers_and_close_no_cycle():
    """Imports at module level and inside functions alike: none goes up a layer, none closes a circle."""
    mods = _modules()
    graph = {m: _imports(p, set(mods), nested=True) - {m} for m, p in mods.items()}
    up = [f"{a} -> {b}" for a, deps in sorted(graph.items()) for b in sorted(deps) if layer(b) > layer(a)]
    assert not up, "imports going up a layer: " + "; ".join(up)
    _assert_no_cycle(graph)
    assert {layer(m) for m in mods} == set(range(len(LAYERS)))  # every layer holds something


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_used_across_modules():
    """``from m import _x`` and ``m._x`` (``m`` an imported package module) stay inside their own module: what
    another module needs is public, so a refactor of one file cannot silently break another."""
    mods = _modules()
    bad = []
    for name, path in sorted(mods.items()):
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    if node.module in mods and _private(a.name) and node.module != name:
                        bad.append(f"{name}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                target = aliases.get(node.value.id)
                if target and target != name:
                    bad.append(f"{name}: {node.value.id}.{node.attr} ({target})")
    assert not bad, "private names used across modules: " + "; ".join(bad)
