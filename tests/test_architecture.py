"""The modules of `hivemind/` import each other without cycles.

A cycle means neither module can be read (or loaded, or tested) without the other; it is how
`scan.py` once reached up into the service's job runner. Every import counts, module-level,
function-level and `TYPE_CHECKING`-only alike: an edge is "module A names module B in an import"
(a package's own `__init__` is a module; importing `a.b` is not counted as importing `a`).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_EDGES: set[tuple[str, str]] = set()
"""(importer, imported) patterns a cycle may use. Empty: the provider contract (providers/base.py)
no longer imports the implementations; providers/registry.py imports them lazily, by name."""


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the hivemind modules it imports, from the source (nothing is imported)."""
    files = {}
    for path in (root / "hivemind").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"  # `from pkg import submodule`
                    if target in files:
                        edges.add(target)
                    elif base in files:
                        edges.add(base)
        graph[name] = edges - {name}
    return graph


def _allowed(a: str, b: str) -> bool:
    return any(fnmatch.fnmatchcase(a, x) and fnmatch.fnmatchcase(b, y) for x, y in ALLOWED_EDGES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, allowed edges left out)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if _allowed(node, nxt):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = module_graph()
    assert "hivemind.scan" in graph and "hivemind.service.workers" in graph  # the walk saw the tree
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_scans_do_not_reach_into_the_service() -> None:
    graph = module_graph()
    for module in ("hivemind.scan", "hivemind.drift", "hivemind.jobs"):
        assert not {m for m in graph[module] if m.startswith("hivemind.service")}, module


def test_the_check_finds_a_cycle_and_honours_only_the_allowed_edge(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by a function-level, relative import is found and named."""
    package = tmp_path / "hivemind"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from hivemind.sub import b\n")
    (package / "sub" / "b.py").write_text("import json\n\ndef f():\n    from ..a import x\n    return x\n")
    graph = module_graph(tmp_path)
    assert graph["hivemind.a"] == {"hivemind.sub.b"} and graph["hivemind.sub.b"] == {"hivemind.a"}
    assert find_cycle(graph) == ["hivemind.a", "hivemind.sub.b", "hivemind.a"]
    providers = {
        "hivemind.providers.base": {"hivemind.providers.mock"},
        "hivemind.providers.mock": {"hivemind.providers.base"},
    }
    assert find_cycle(providers) == ["hivemind.providers.base", "hivemind.providers.mock", "hivemind.providers.base"]
    ALLOWED_EDGES.add(("hivemind.providers.base", "hivemind.providers.*"))
    try:
        assert find_cycle(providers) is None  # an allowed edge pattern breaks exactly that cycle
    finally:
        ALLOWED_EDGES.clear()
