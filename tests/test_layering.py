"""The package's import structure: no import cycle, and a model library that knows nothing of runs.

Walks every module's ``import`` statements with ``ast`` (function-level imports too: an import
deferred into a function to dodge a cycle is still a cycle). A module depends on the modules it
imports and on their packages' ``__init__`` (which run first), except its own ancestors.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module under ``src/ivt``."""
    out = {}
    for path in (src / "ivt").rglob("*.py"):
        rel = path.relative_to(src).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the ivt modules it imports (anywhere in its body)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.split(".")[0] == "ivt":
                    targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "ivt"}
        deps = {".".join(t.split(".")[:i]) for t in targets for i in range(2, len(t.split(".")) + 1)}
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {d for d in deps if d in modules} - ancestors - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_the_walk_sees_real_imports(graph):
    assert "ivt.model.encoder" in graph["ivt.model.factory"]           # module level
    assert "ivt.model.official" in graph["ivt.train.encoder_from_config"]  # inside a function
    assert "ivt.model" not in graph["ivt.model.encoder"]                # own package: not a dependency
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_model_library_does_not_import_the_run(graph):
    for name in graph:
        if name == "ivt.model" or name.startswith("ivt.model."):
            bad = sorted(d for d in reachable(graph, name)
                         if d in ("ivt.config", "ivt.cli", "ivt.train") or d.startswith("ivt.train."))
            assert not bad, f"{name} imports {bad} (directly or through other modules)"
