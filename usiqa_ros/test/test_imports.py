"""Imports inside usiqa_ros go one way: no cycles (type-only or deferred imports count too), and the layers
core <- ros, tools <- nodes are kept (core is ROS-free, message and bag I/O included: core.convert, core.bagio).

Read from the source with ast, so every import counts, also one inside a function or under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parents[1] / "usiqa_ros"
# layer -> the layers it may import (besides its own)
ALLOWED = {
    "core": set(),
    "ros": {"core"},
    "tools": {"core"},
    "nodes": {"core", "ros", "tools"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG_DIR.rglob("*.py"):
        parts = list(f.relative_to(PKG_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """usiqa_ros modules that `name` imports; `from pkg import sub` counts as the submodule pkg.sub."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            found |= {s for s in subs if s in modules} or {base}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_graph_sees_the_package():
    graph = _graph()
    assert {"usiqa_ros.ros.iqa_node", "usiqa_ros.core.engine", "usiqa_ros.tools.bag_eval"} <= set(graph)
    assert "usiqa_ros.core.engine" in graph["usiqa_ros.ros.iqa_node"]
    assert "usiqa_ros.tools.bag_report" in graph["usiqa_ros.tools.bag_eval"]  # `from pkg import sub` is seen


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_usiqa_ros():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_one_way():
    bad = []
    for m, deps in _graph().items():
        layer = m.split(".")[1] if m.count(".") >= 1 else ""
        if layer not in ALLOWED:
            continue
        for d in deps:
            other = d.split(".")[1] if d.count(".") >= 1 else ""
            ok = other == layer or other in ALLOWED[layer] or other not in ALLOWED
            if not ok:
                bad.append(f"{m} imports {d}")
    assert not bad, bad
