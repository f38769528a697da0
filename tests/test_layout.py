"""The shape the code keeps (STYLE.md): thin entry points, short runner and planner functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEG = REPO / "seg"
MAX_CLI_LINES = 90
MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("path", sorted((SEG / "cli").glob("*.py")), ids=lambda p: p.name)
def test_every_entry_point_is_thin(path):
    assert len(path.read_text().splitlines()) <= MAX_CLI_LINES


def _long_functions(room: str, seg: Path = SEG) -> list[str]:
    out = []
    for path in sorted((seg / room).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(seg)}:{node.name} {n} lines")
    return out


@pytest.mark.parametrize("room", ["plan", "run"])
def test_no_long_function_in_the_planner_and_the_runners(room):
    assert not _long_functions(room)


def test_the_rule_finds_a_long_function(tmp_path):
    """The scan itself: a 70-line function is found, a 60-line one is not."""
    room = tmp_path / "x"
    room.mkdir()
    (room / "m.py").write_text("def f():\n" + "    a = 1\n" * 69 + "\n\ndef g():\n" + "    a = 1\n" * 59)
    assert _long_functions("x", tmp_path) == ["x/m.py:f 70 lines"]


def test_the_wheel_lists_every_package_and_the_configs():
    """pyproject.toml lists the packages (discovery would miss seg.conf): a new subpackage must be added."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "seg").rglob("__init__.py")}
    assert set(listed) == found | {"seg.conf", "seg.docs", "seg.requirements"} and len(listed) == len(set(listed))
