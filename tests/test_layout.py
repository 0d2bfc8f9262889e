"""The layout the README promises: each module imports only its own layer and those below it, the
stages folder holds stages only, and no module or function grows past what a reader can hold."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# From the bottom up; a module belongs to the most specific entry that names it or a package above it.
LAYERS = [
    # "" is pipeline/__init__.py
    ["", "settings", "io", "metric", "device", "distributed", "paths", "machine", "memory"],
    ["data", "models.config", "training.config", "submission"],  # torch-free settings beside the data
    ["models"],
    ["inference", "ensemble.combine"],
    ["matching", "training"],
    ["config"],  # composes the sections defined in the layers below
    ["runs", "ensemble.members"],
    ["reporting"],
    ["stages"],
    ["tools", "kaggle", "catalogue"],
    ["cli", "__main__"],
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    """The layer of a module name relative to ``pipeline`` (``matching.tuning``)."""
    parts = name.split(".") if name else []
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in LAYER:
            return LAYER[key]
    raise AssertionError(f"pipeline.{name} is in no layer of tests/test_layout.py")


def imported_modules(tree: ast.AST) -> set[str]:
    """Every ``pipeline`` module a module imports (at the top or inside a function), relative to ``pipeline``."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "pipeline" or name.startswith("pipeline."):
                out.add(name.removeprefix("pipeline").removeprefix("."))
    return out


def _is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_their_layer_and_those_below(path):
    own = layer_of(module_name(path))
    # ``from pipeline.x import y`` names y too: only names that are modules count.
    imports = {name for name in imported_modules(ast.parse(path.read_text())) if _is_module(name)}
    upward = sorted(f"pipeline.{name} (layer {layer_of(name)})" for name in imports if layer_of(name) > own)
    assert not upward, f"layer {own} imports {upward}"


def test_the_stages_folder_holds_the_stage_functions_only():
    stages = importlib.import_module("pipeline.stages")
    homes = stages._HOMES
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        public = [
            node.name
            for node in ast.parse(path.read_text()).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
        ]
        assert public and all(homes.get(name) == path.stem for name in public), (path.name, public)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long
