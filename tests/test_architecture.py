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
    assert "hivemind.scans.scan" in graph and "hivemind.service.workers" in graph  # the walk saw the tree
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_scans_do_not_reach_into_the_service() -> None:
    graph = module_graph()
    for module in ("hivemind.scans.scan", "hivemind.scans.drift", "hivemind.store.jobs"):
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


STAGES: list[tuple[str, ...]] = [
    # foundations: import nothing of a stage; every stage may build on them
    ("hivemind", "hivemind.errors", "hivemind.parallel", "hivemind.layout", "hivemind.migrations"),
    ("hivemind.metrics",),
    ("hivemind.inputs",),
    ("hivemind.store",),
    ("hivemind.vectors",),
    ("hivemind.providers",),
    ("hivemind.executors",),
    ("hivemind.sampling",),
    ("hivemind.imports",),
    ("hivemind.analysis",),
    ("hivemind.report",),
    ("hivemind.pipeline",),
    ("hivemind.study", "hivemind.frames"),  # doors onto the pipeline, above it
    ("hivemind.scans",),
    ("hivemind.service",),
    ("hivemind.cli",),
    ("hivemind.testing",),  # loopback servers and simulated data for tests and benches
]
"""The top floor in the order of the data flow: inputs -> store -> vectors and providers ->
sampling or import -> analysis -> report -> the pipeline, then its doors. A module may import its
own stage and earlier ones, never a later one. (`hivemind` itself is the lazy public API: it names
its modules in strings and imports none.)"""


def stage_of(module: str) -> int:
    """The stage index of a module: the longest prefix (a module or a package) that names it."""
    best, rank = "", -1
    for i, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    return rank


def test_every_module_has_a_stage() -> None:
    graph = module_graph()
    assert len(graph) > 80
    assert not [m for m in graph if stage_of(m) < 0 or (stage_of(m) == 0 and m.count(".") > 1)]
    top_floor = sorted(m for m in graph if m.count(".") == 1 and not (ROOT / m.replace(".", "/")).is_dir())
    assert top_floor == sorted(
        f"hivemind.{n}" for n in ("errors", "parallel", "layout", "migrations", "pipeline", "study", "frames")
    )


def test_no_stage_imports_a_later_one() -> None:
    graph = module_graph()
    upward = sorted(
        f"{a} ({STAGES[stage_of(a)][0]}) imports {b} ({STAGES[stage_of(b)][0]})"
        for a, imported in graph.items()
        for b in imported
        if stage_of(b) > stage_of(a)
    )
    assert not upward, "\n".join(upward)


def test_the_layering_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an inputs module that reaches into sampling, even inside a function."""
    package = tmp_path / "hivemind"
    for sub in ("inputs", "sampling"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "sampling" / "sampler.py").write_text("from hivemind.inputs.spec import X\n")
    (package / "inputs" / "spec.py").write_text("def f():\n    from ..sampling import sampler\n")
    graph = module_graph(tmp_path)
    assert graph["hivemind.inputs.spec"] == {"hivemind.sampling.sampler"}
    assert [(a, b) for a, bs in graph.items() for b in bs if stage_of(b) > stage_of(a)] == [
        ("hivemind.inputs.spec", "hivemind.sampling.sampler")
    ]


PUBLIC_API = (
    "Condition Deployment Query QuerySet SamplingParams StudySpec Store Provider register load_zoo "
    "load_query_set load_spec run_study sample_study run_pipeline analyze_store write_report "
    "import_responses analyze"
).split()
"""The names `from hivemind import ...` promises (0.x: a removal is a decision, not a side effect)."""


def test_every_public_name_imports() -> None:
    """A fresh interpreter imports each public name through `hivemind` (the lazy table names real
    modules); the CLI's entry point resolves too."""
    import subprocess
    import sys

    code = (
        "import hivemind, importlib\n"
        f"names = {PUBLIC_API!r}\n"
        "assert sorted(hivemind.__all__) == sorted(names), sorted(set(hivemind.__all__) ^ set(names))\n"
        "for n in names:\n"
        "    obj = getattr(hivemind, n)\n"
        "    assert obj is getattr(importlib.import_module(obj.__module__), n), n\n"
        "from hivemind.cli import app, main\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(len(PUBLIC_API))
