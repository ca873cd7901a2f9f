"""Imports flow one way: the three adapters (``classification``, ``d2_plugin``, ``seg_plugin``) use the core
``fec_backbone`` and never each other, the core uses none of them, and no module imports itself back
through others, neither at module level nor inside a function (where a cycle would only be hidden)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fec_backbone", "classification", "d2_plugin", "seg_plugin")
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> Tuple[Dict[str, Set[str]], List[Tuple[str, str, int]]]:
    """Project module -> project modules it imports (anywhere in the file), and the imports made inside
    functions as ``(module, imported, line)``."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    deferred: List[Tuple[str, str, int]] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for name in names:
                target = next((m for m in (name, name.rsplit(".", 1)[0]) if m in modules), None)
                if target is None or target == module:
                    continue
                graph[module].add(target)
                if id(node) in in_function:
                    deferred.append((module, target, node.lineno))
    return graph, deferred


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected group of more than one module (each holds an import cycle)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_imports_flow_from_the_adapters_to_the_core():
    graph, _ = import_graph()
    wrong = sorted((m, t) for m, targets in graph.items() for t in targets
                   if t.split(".")[0] != m.split(".")[0] and t.split(".")[0] != "fec_backbone")
    assert wrong == []


def test_no_project_module_is_imported_inside_a_function():
    _, deferred = import_graph()
    assert deferred == []


def test_the_checks_see_a_cycle_and_a_wrong_way_import():
    """The graph walk itself: a made-up cycle and an adapter-to-adapter edge are found."""
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "b": set()}
    assert cycles(graph) == [["a.x", "a.y", "a.z"]]
    real, _ = import_graph()
    assert "fec_backbone.fec" in real["fec_backbone"] and "fec_backbone.checkpoint" in real["fec_backbone.fec"]
