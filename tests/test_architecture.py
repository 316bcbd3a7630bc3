"""The package's shape: its own imports form no circle, and no module grows past the size one can read.

The imports are read from the source with `ast` (nothing is imported): every `import` and `from ... import`
of a `tinystories` module anywhere in a file, inside functions too, except under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "tinystories"
MAX_LINES = 700
MAX_LINES_OF = {"model.py": 600}
"""Tighter limits for single modules (path relative to the package)."""
LARGE_DATA = {"synth/templates.py"}
"""Modules that are data written as Python (story templates), not logic: no line limit."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """All import statements of a module, at any depth, leaving out the body of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and is_type_checking(node.test) and child in node.body:
                continue
            visit(child)

    visit(tree)
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` (at `path`) imports.

    `from a import b` imports `a.b` when that is a module, and `a` otherwise (b is a name in a); importing
    `a.b` also runs `a/__init__.py`, so the package `a` counts as imported too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` names a module; a name inside one stops at it
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
            # the packages on the way run first, unless they already run around the importer itself
            parent = target.rpartition(".")[0]
            while parent and not (name == parent or name.startswith(parent + ".")):
                out.add(parent)
                parent = parent.rpartition(".")[0]
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), each as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [circle_in(graph, set(g)) for g in sorted(groups)]


def circle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest circle through the group's first module (breadth-first, inside the group)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    for v in queue:
        for w in sorted(graph[v] & group):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no circle through {start}")


def test_the_graph_reader_on_a_made_up_package():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"g2"}, "g2": set()}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    code = ast.parse("import x\nif TYPE_CHECKING:\n    import y\nelse:\n    import z\ndef f():\n    from . import w\n"
                     "if typing.TYPE_CHECKING:\n    import v\n")
    assert sorted(n.names[0].name for n in import_nodes(code)) == ["w", "x", "z"]


def test_imports_are_resolved_to_modules_of_the_package(tmp_path):
    source = tmp_path / "shards.py"
    source.write_text("from . import tokenizer\nfrom .stories import iter_stories\nfrom ..errors import UserError\n"
                      "import tinystories.eval.loss\nimport torch\nfrom tinystories.report.plots import pyplot\n"
                      "def f():\n    from tinystories import model\n")
    known = {"tinystories", "tinystories.data", "tinystories.data.shards", "tinystories.data.tokenizer",
             "tinystories.data.stories", "tinystories.errors", "tinystories.eval", "tinystories.eval.loss",
             "tinystories.report", "tinystories.report.plots", "tinystories.model"}
    # packages on the way count (their __init__ runs), but not the importer's own packages
    assert imported("tinystories.data.shards", source, known) == {
        "tinystories.data.tokenizer", "tinystories.data.stories", "tinystories.errors", "tinystories.eval",
        "tinystories.eval.loss", "tinystories.report", "tinystories.report.plots", "tinystories.model"}
    graph = import_graph()
    assert "tinystories.model" in graph["tinystories.sample"] and "tinystories.data" in graph
    assert all(m in graph for deps in graph.values() for m in deps)


def test_no_import_circles():
    found = cycles(import_graph())
    if found:
        pytest.fail(f"{len(found)} import circle(s) in src/tinystories:\n"
                    + "\n".join("  " + " -> ".join(c) for c in found), pytrace=False)


def test_no_module_is_too_long():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in LARGE_DATA:
            continue
        limit = MAX_LINES_OF.get(rel, MAX_LINES)
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            too_long.append(f"  {rel}: {lines} lines (at most {limit})")
    if too_long:
        pytest.fail("modules too long to read in one sitting:\n" + "\n".join(too_long), pytrace=False)
