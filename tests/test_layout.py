"""The layout the README promises: library code never reaches up into the stages, and no module or
function grows past what a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))
# The layers above the library: the stages and the command line over them.
UPPER = {PACKAGE / "stages", PACKAGE / "cli.py", PACKAGE / "__main__.py"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def is_upper(path: Path) -> bool:
    return any(path == u or u in path.parents for u in UPPER)


def imported_modules(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("path", [p for p in MODULES if not is_upper(p)], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_modules_never_import_the_stage_layer(path):
    imports = imported_modules(ast.parse(path.read_text()))
    assert not {m for m in imports if m == "pipeline.stages" or m.startswith("pipeline.stages.")
                or m in ("pipeline.cli",)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long
