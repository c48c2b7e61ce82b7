"""The package layout: no import cycles between skipenv's modules, and no module too long without a stated reason.

The import graph is read with :mod:`ast` from the source files (nothing is imported), so imports written inside
functions count like top-level ones: a cycle hidden behind a function-level import is still a cycle for a reader.
An edge ``a -> b`` is an ``import`` / ``from ... import`` statement in module ``a`` naming module ``b`` (or a name
defined in ``b``'s package ``__init__``); the implicit import of a parent package is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skipenv"

#: a module longer than this needs a docstring sentence saying why (containing "long" or "lines")
MAX_LINES = 500


def _modules() -> dict[str, tuple[Path, list[str]]]:
    """dotted module name -> (file, the package its relative imports resolve against, as name parts)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        else:
            package = parts[:-1]
        mods[".".join(parts)] = (path, package)
    return mods


def _owner(name: str, mods) -> str | None:
    """The module that ``name`` (a module or a name inside one) belongs to."""
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in mods else None


def import_graph() -> dict[str, set[str]]:
    """skipenv module -> the skipenv modules it imports (anywhere in the file)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, package) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "skipenv"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "skipenv":
                    full = node.module
                else:
                    continue
                for alias in node.names:  # `from .pkg import mod` names a module; `from .mod import name` a name
                    sub = f"{full}.{alias.name}"
                    targets.append(sub if sub in mods else full)
            for t in targets:
                owner = _owner(t, mods)
                if owner is not None and owner != mod:
                    graph[mod].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                scc = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    scc.append(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    found.append(sorted(scc))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself: a hand-made graph with one 3-cycle and a tail is reported as exactly that cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_reads_imports_inside_functions():
    """A function-level relative import is an edge (the cycles this test guards against hid behind those)."""
    graph = import_graph()
    assert "skipenv.plan" in graph["skipenv"]  # top-level `from .plan import ...`
    assert "skipenv.loading" in graph["skipenv.envs.switchdec"]  # `from ..loading import ...` inside a function


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles between skipenv modules (break each by moving the shared piece down): " + \
        "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why(path):
    lines = len(path.read_text().splitlines())
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Why this module is long" in doc, (
        f"{path.relative_to(PACKAGE.parent)} has {lines} lines (> {MAX_LINES}): split it, or state in its module "
        f"docstring, in a paragraph starting 'Why this module is long:', why its parts belong together")
