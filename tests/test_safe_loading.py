"""No code is loaded from files. Every ``torch.load`` in the project passes
``weights_only=True``, so a crafted checkpoint is refused instead of run."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("pipeline", "benchmarks", "notebooks", "tests") for p in (ROOT / d).rglob("*.py"))


def torch_loads(tree: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "load"
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "torch"
    ]


def test_every_torch_load_keeps_weights_only():
    unsafe = []
    for path in SOURCES:
        for call in torch_loads(ast.parse(path.read_text())):
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_the_audit_sees_the_loads_it_checks():
    assert sum(len(torch_loads(ast.parse(p.read_text()))) for p in SOURCES if "pipeline" in p.parts) >= 3


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_crafted_checkpoint_is_refused_not_run(tmp_path, capsys):
    from pipeline.models.weights import read_state_dict
    from pipeline.paths import ModelPaths
    from pipeline.training.checkpoint import existing_run

    path = tmp_path / "last.pt"
    torch.save({"run": {}, "x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        existing_run(ModelPaths(tmp_path), {}, resume=True, overwrite=False)
    with pytest.raises(ValueError, match="could not be read as a plain state dict"):
        read_state_dict(path)
    assert "code ran" not in capsys.readouterr().out
