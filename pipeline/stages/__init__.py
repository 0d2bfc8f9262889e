"""The stages of a run. Each reads files in the run folder, calls the library and writes files.

``prepare`` -> ``train-image`` / ``train-text`` -> ``embed`` -> ``tune`` -> ``predict``; ``run`` does
them all and writes ``report.json``; ``ensemble`` makes a run of several trained ones. Every stage
can be rerun on its own (from the CLI or a notebook), and the unsupervised signals (TF-IDF, phash)
need no training stage at all.

One module a stage (``preparation``, ``training``, ``embedding``, ``tuning``, ``prediction``, ``run``,
``ensemble``). ``from pipeline import stages`` gives every stage function, each module loaded when
first used, so a TF-IDF-only run never loads torch. Module names differ from the functions they
hold: importing a submodule binds its name on this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "prepare": "preparation",
    "train": "training",
    "embed": "embedding",
    "tune_stage": "tuning",
    "predict": "prediction",
    "run_all": "run",
    "make_ensemble": "ensemble",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
