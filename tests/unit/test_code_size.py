"""Size limits that keep the code readable (issue 15): no function over 60 lines in
service/ or export/, no service module over 400 lines, the registry under 250."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.serving import REPO_ROOT

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
LIMITS = {"repository.py": 250}


def sources(package: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / package).rglob("*.py") if "_pb2" not in p.name)


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("package", ["service", "export"])
def test_no_function_is_longer_than_60_lines(package: str) -> None:
    assert [f for path in sources(package) for f in long_functions(path)] == []


def test_no_service_module_is_longer_than_its_limit() -> None:
    too_long = []
    for path in sources("service"):
        lines = len(path.read_text().splitlines())
        if lines > LIMITS.get(path.name, MAX_MODULE_LINES):
            too_long.append(f"{path.name} ({lines} lines)")
    assert too_long == []
