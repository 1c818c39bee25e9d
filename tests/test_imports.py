"""No import cycles among pyfundus's modules, read from the source with ``ast`` (not by eye).

Every import counts, at module level or inside a function: a lazy import that closes a
loop is still a loop a reader has to untangle. ``pyfundus.daemon`` and ``pyfundus.export``
are the top-level daemon/ and export/ folders, reached through the symlinks in pyfundus/.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pyfundus"


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    files = [
        Path(folder, file)
        for folder, _, names in os.walk(PACKAGE_ROOT, followlinks=True)  # into the daemon/ and export/ links
        for file in names
        if file.endswith(".py")
    ]
    for path in sorted(files):
        parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("pyfundus", *parts))] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import sub`` counts as importing pkg.sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names]
            targets = [target if target in known else source for target in targets]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_whole_package():
    graph = import_graph()
    assert {"pyfundus.api", "pyfundus.daemon.cli", "pyfundus.export.runtimes", "pyfundus.models.fthnet"} <= set(graph)
    assert "pyfundus.verdicts" in graph["pyfundus.api"]  # module level
    assert "pyfundus.daemon.cli" in graph["pyfundus.cli"]  # inside a function


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(component) for component in found)


def test_the_version_module_matches_pyproject():
    import re

    from pyfundus import __version__

    pyproject = (PACKAGE_ROOT.parent / "pyproject.toml").read_text()
    assert re.search(r'^version = "(.+)"$', pyproject, re.M).group(1) == __version__
