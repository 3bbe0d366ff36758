"""The layout holds: imports point one way (data <- model <- explain <- views/app), streamlit only in the views."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["data", "model", "explain", "views"]  # each may import only the ones before it
FORBIDDEN_BELOW_VIEWS = {"streamlit"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


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
    offenders = [str(p.relative_to(ROOT)) for p in _modules(package) if _imports(p) & FORBIDDEN_BELOW_VIEWS]
    assert offenders == []


def test_the_layout_exists():
    for name in ["app.py", "data", "model", "explain", "views", "bench", "tests", "requirements.txt", "README.md"]:
        assert (ROOT / name).exists(), name


def test_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import streamlit as st\nfrom explain.base import Explanation\n")
    assert _imports(bad) == {"streamlit", "explain"}
