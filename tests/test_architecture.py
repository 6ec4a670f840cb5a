"""ARCHITECTURE.md matches the code: every module is named in its layer table, every module it
names exists, the import graph (read statically with ast) has no cycles, and no module imports
from a layer above its own."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "functrain"
DOC = ROOT / "ARCHITECTURE.md"
SPAN = re.compile(r"`([a-z_][\w/]*(?:\.py|/))`")  # module names: `tree.py`, `random/`


def _rel(path: pathlib.Path) -> str:
    """How ARCHITECTURE.md names the module in ``path``: ``random/`` for a package's
    ``__init__.py``, ``random/_keys.py`` for a submodule, ``__init__.py`` for functrain's."""
    rel = path.relative_to(PACKAGE).as_posix()
    if rel != "__init__.py" and rel.endswith("/__init__.py"):
        return rel.removesuffix("__init__.py")
    return rel


def _modules() -> dict[str, pathlib.Path]:
    return {_rel(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _dotted(rel: str) -> str:
    """``random/_keys.py`` -> ``functrain.random._keys``; ``random/`` -> ``functrain.random``."""
    parts = [p for p in rel.removesuffix(".py").removesuffix("/").split("/") if p]
    return ".".join(["functrain", *parts]) if rel != "__init__.py" else "functrain"


def _layers() -> dict[str, int]:
    """Module name -> layer index (0 = bottom), from the rows of the layer table."""
    layers = {}
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| layer ")]
    for index, row in enumerate(rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        for name in SPAN.findall(cells[1]):
            layers[name] = index
    return layers


def _imports() -> dict[str, set[str]]:
    """functrain module -> the functrain modules it imports (anywhere in it, lazy ones too)."""
    by_dotted = {_dotted(rel): rel for rel in _modules()}
    graph: dict[str, set[str]] = {}
    for rel, path in _modules().items():
        me = _dotted(rel)
        package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the submodule if there is one
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in by_dotted else mod
                           for a in node.names]
            else:
                continue
            found.update(by_dotted[t] for t in targets if t in by_dotted and t != me)
        graph[rel] = found
    return graph


def test_every_module_is_named():
    named = set(SPAN.findall(DOC.read_text()))
    missing = sorted(set(_modules()) - named)
    assert not missing, f"modules missing from ARCHITECTURE.md: {missing}"


def test_every_named_module_exists():
    modules = set(_modules())
    unknown = sorted(set(SPAN.findall(DOC.read_text())) - modules)
    assert not unknown, f"ARCHITECTURE.md names modules that do not exist: {unknown}"


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(_layers()))
    assert not missing, f"modules in no row of ARCHITECTURE.md's layer table: {missing}"


def test_import_graph_has_no_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_module_imports_from_a_layer_above():
    layers, graph = _layers(), _imports()
    upward = [f"{m} ({layers[m]}) -> {t} ({layers[t]})"
              for m, targets in sorted(graph.items()) for t in sorted(targets)
              if m in layers and t in layers and layers[t] > layers[m]]
    assert not upward, f"imports from a higher layer: {upward}"


def test_the_checks_see_real_edges():
    graph, layers = _imports(), _layers()
    assert "random/_keys.py" in graph["random/_draws.py"]  # relative import
    assert "tree.py" in graph["precision/_policy.py"]  # `from .. import tree`
    assert "checkpoint/" in graph["_fit.py"]  # a lazy import inside a function
    assert layers["tree.py"] < layers["random/"] < layers["_runner.py"] < layers["_fit.py"]


def _code_lines(path: pathlib.Path) -> int:
    """Lines of code in ``path``: not blank, not a comment, not part of a docstring."""
    src = path.read_text()
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                docs.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for i, line in enumerate(src.splitlines(), 1)
               if i not in docs and line.strip() and not line.lstrip().startswith("#"))


def test_no_module_is_over_400_lines_of_code():
    # ARCHITECTURE.md's rule: a module over ~400 lines of code (docstrings and comments
    # excluded) is split by concept.
    sizes = {rel: _code_lines(path) for rel, path in _modules().items()}
    assert max(sizes.values()) > 100  # the count sees real code
    big = {rel: n for rel, n in sizes.items() if n > 400}
    assert not big, f"modules over 400 lines of code: {big}"
