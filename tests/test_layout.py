"""The layout holds: imports point one way (data <- model <- explain <- views/app), streamlit only in the views."""

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["data", "model", "explain", "views"]  # each may import only the ones before it
FORBIDDEN_BELOW_VIEWS = {"streamlit"}
# The browser's wire format, not the UI: a load test's client (bench.load_server) speaks it without the app.
WIRE_PROTOCOL = "streamlit.proto"


def _imports(path: Path, allowed_below: str | None = None) -> set[str]:
    """Top-level packages `path` imports; `allowed_below` (a dotted prefix such as WIRE_PROTOCOL) left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    if allowed_below:
        modules = {m for m in modules if m != allowed_below and not m.startswith(allowed_below + ".")}
    return {m.split(".")[0] for m in modules}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_one_way(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    forbidden = set(LAYERS) - allowed
    offenders = {str(path.relative_to(ROOT)): sorted(_imports(path) & forbidden) for path in _modules(package)}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package", ["data", "model", "explain", "bench"])
def test_no_streamlit_below_the_views(package):
    allowed = WIRE_PROTOCOL if package == "bench" else None
    offenders = [str(p.relative_to(ROOT)) for p in _modules(package) if _imports(p, allowed) & FORBIDDEN_BELOW_VIEWS]
    assert offenders == []


def test_the_layout_exists():
    for name in ["app.py", "data", "model", "explain", "views", "bench", "tests", "requirements.txt", "README.md"]:
        assert (ROOT / name).exists(), name


def test_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import streamlit as st\nfrom explain.base import Explanation\n")
    assert _imports(bad) == {"streamlit", "explain"}
    assert _imports(bad, WIRE_PROTOCOL) == {"streamlit", "explain"}  # the protocol exception is not the UI
    wire = tmp_path / "wire.py"
    wire.write_text("from streamlit.proto.BackMsg_pb2 import BackMsg\nimport streamlit.proto.ForwardMsg_pb2\n")
    assert _imports(wire) == {"streamlit"} and _imports(wire, WIRE_PROTOCOL) == set()


# ---- no import circles -------------------------------------------------------------------------------------------

PROJECT = ["data", "model", "explain", "views", "bench"]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The project modules a file imports anywhere in it (inside functions and TYPE_CHECKING blocks too): for
    `from package import name` the submodule package.name where there is one, else the package."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {name for name in found if name in known} - {here}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [root / "app.py", *(p for package in PROJECT for p in sorted((root / package).rglob("*.py")))]
    files = [f for f in files if f.exists()]
    known = {_module_name(f, root) for f in files}
    return {_module_name(f, root): _imported_modules(f, known, root) for f in files}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per group of modules that import each other, in
    Tarjan's strongly connected components."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph.get(node, ())):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_cycle_through(min(group), graph, group) for group in groups)


def _cycle_through(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path from `start` back to it inside the group (breadth first)."""
    came_from, queue = {start: None}, deque([start])
    while queue:
        node = queue.popleft()
        for following in sorted(graph[node] & group):
            if following == start:
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if following not in came_from:
                came_from[following] = node
                queue.append(following)
    raise ValueError(f"{start} is on no cycle of its group")


def test_no_import_circles():
    cycles = import_cycles(import_graph())
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_circle_finder_sees_one_hidden_in_a_function(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("")
    (tmp_path / "data" / "io.py").write_text("def adapters():\n    from data.adapters import amazon\n")
    (tmp_path / "data" / "adapters").mkdir()
    (tmp_path / "data" / "adapters" / "__init__.py").write_text("")
    (tmp_path / "data" / "adapters" / "amazon.py").write_text("from data.io import open_text\n")
    (tmp_path / "data" / "schema.py").write_text("from . import io\n")
    graph = import_graph(tmp_path)
    assert graph["data.io"] == {"data.adapters.amazon"} and graph["data.schema"] == {"data.io"}
    assert import_cycles(graph) == [["data.adapters.amazon", "data.io", "data.adapters.amazon"]]


def test_the_user_or_query_chooser_is_written_once():
    drawn_in = [p.name for p in _modules("views") if '["User", "Query"]' in p.read_text()]
    assert drawn_in == ["pickers.py"]  # Recommend, Compare and Report call views.pickers.audience_picker
