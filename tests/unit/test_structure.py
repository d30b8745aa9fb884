"""The tree keeps its shape: no import cycles (imports inside functions count), no module
over 400 lines, no imports of another module's private names, no `importorskip` of our own code.

Every check reads the source with `ast` (nothing is imported), so it is fast and sees the
imports that only run inside a function body.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "feature_store", "experiments", "federation", "serving", "platform_api")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    """One import of a project module: who imports it, where, and the names it takes."""

    source: str
    target: str
    line: int
    names: tuple[str, ...] = ()


def parse(path: Path) -> ast.Module:
    """The file's syntax tree (warnings about its string escapes are ruff's business)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(path.read_text(), str(path))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    """Every module of the six packages, by dotted name."""
    files = (p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    return {_module_name(p): p for p in sorted(files)}


def _base(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    anchor = module.split(".")
    anchor = anchor if is_package else anchor[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import in the file (module level, functions, classes, TYPE_CHECKING blocks)
    that lands on a project module; `from pkg import sub` counts as importing `pkg.sub`."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = _base(module, node, path.name == "__init__.py")
            names = tuple(a.name for a in node.names)
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            for sub in subs:
                yield Import(module, sub, node.lineno)
            if base in known and len(subs) < len(names):
                yield Import(module, base, node.lineno, tuple(n for n in names if f"{base}.{n}" not in known))


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Edges between project modules, and the line of one import behind each edge."""
    files = project_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    lines: dict[tuple[str, str], int] = {}
    for module, path in files.items():
        for imp in imports_of(module, path, set(files)):
            if imp.target != module:
                graph[module].add(imp.target)
                lines.setdefault((module, imp.target), imp.line)
    return graph, lines


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest path from the component's first module back to itself (breadth first)."""
    members, start = set(component), component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return component


def test_the_checker_sees_imports_inside_functions_and_finds_cycles(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pkg import sub, name\n    import pkg.other\n")
    found = {(i.target, i.names) for i in imports_of("pkg.m", source, {"pkg", "pkg.m", "pkg.sub", "pkg.other"})}
    assert found == {("pkg.sub", ()), ("pkg", ("name",)), ("pkg.other", ())}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_project_modules() -> None:
    graph, lines = import_graph()
    cycles = []
    for component in strongly_connected(graph):
        path = a_cycle(graph, component)
        steps = " -> ".join(f"{a} (line {lines[a, b]})" for a, b in zip(path, path[1:]))
        cycles.append(f"{len(component)} modules: {', '.join(component)}\n    e.g. {steps} -> {path[-1]}")
    assert not cycles, "import cycles (imports inside functions count):\n  " + "\n  ".join(cycles)


def test_no_module_over_400_lines() -> None:
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in project_files().values()}
    too_long = [f"{path}: {n}" for path, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not too_long, f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(too_long)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_another_modules_private_names() -> None:
    files = project_files()
    offences = [f"{files[imp.source].relative_to(ROOT)}:{imp.line}: from {imp.target} import {', '.join(private)}"
                for module, path in files.items()
                for imp in imports_of(module, path, set(files))
                if (private := [n for n in imp.names if _is_private(n)])]
    assert not offences, "private names imported across modules:\n  " + "\n  ".join(offences)


def test_no_test_skips_on_a_project_module() -> None:
    offences = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(parse(path)):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "importorskip"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).split(".")[0] in PACKAGES):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: importorskip({node.args[0].value!r})")
    assert not offences, "our own modules must import (a plain import, not a skip):\n  " + "\n  ".join(offences)
