"""Which third-party libraries the pipeline imports, read from its own import statements, and
whether this Python has them.

Nothing here is a hand-kept list of dependencies: :func:`third_party_imports` reads the import
statements of every module an entry point can reach (function bodies included), so a library a
stage starts to use is checked without anyone remembering to add it. ``prepare`` checks the
stages' libraries (:func:`missing_libraries`) so that a missing one stops the run before any
training, not at ``tune`` hours later; ``package`` and ``kaggle-code`` read the same imports.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the ``pipeline`` folder
STAGES = "stages"  # the folder of stage modules, relative to PACKAGE_ROOT
# Import names whose distribution is named otherwise, for a library that is not installed (an
# installed one is looked up in its metadata): the error must name what to install.
DIST_OF_IMPORT = {
    "faiss": "faiss-cpu",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "PIL": "pillow",
}
# The PyTorch and scientific stack that Kaggle's Python image brings (its docker-python build) and
# that requirements.txt installs elsewhere: libraries built and tested together, so finding them is
# enough. Any other library (the ones a Kaggle user adds as wheels) is imported, so that a
# dependency it lacks (imagehash's PyWavelets, say) shows now too.
KAGGLE_IMAGE = frozenset(
    {
        "numpy",
        "pandas",
        "scipy",
        "scikit-learn",
        "torch",
        "torchvision",
        "timm",
        "transformers",
        "tokenizers",
        "safetensors",
        "huggingface-hub",
        "sentence-transformers",
        "pillow",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "albumentations",
        "opencv-python",
        "opencv-python-headless",
        "psutil",
        "lightgbm",
        "xgboost",
        "threadpoolctl",
        "packaging",
        "typing-extensions",
    }
)


@dataclass(frozen=True)
class MissingLibrary:
    """A library some stage imports that this Python cannot import.

    Attributes:
        dist: the distribution to install (``sparse-dot-topn``).
        module: the top-level import name (``sparse_dot_topn``).
        reason: the import's error, e.g. ``ModuleNotFoundError: No module named 'pywt'``.
        used_by: the pipeline modules that import it directly.
    """

    dist: str
    module: str
    reason: str
    used_by: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.dist} (import {self.module}, in {', '.join(self.used_by)}): {self.reason}"


def stage_modules() -> list[str]:
    """Every module of the stages folder: the entry points whose imports a run needs."""
    return sorted(f"pipeline.{STAGES}.{p.stem}" for p in (PACKAGE_ROOT / STAGES).glob("*.py") if p.stem != "__init__")


def third_party_imports(*entries: str) -> dict[str, set[str]]:
    """Top-level third-party module -> the pipeline modules importing it, over ``entries`` and every
    pipeline module they reach (lazy imports inside functions included)."""
    seen, todo, out = set(), list(entries), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports_of(name):
            top = imported.split(".")[0]
            if top == "pipeline":
                todo.extend(m for m in _pipeline_modules(imported) if m not in seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                out.setdefault(top, set()).add(name)
    return out


def stage_imports() -> dict[str, set[str]]:
    """What the stages import (:func:`third_party_imports` over :func:`stage_modules`)."""
    return third_party_imports(*stage_modules())


def distribution(module: str) -> str:
    """The distribution that provides a top-level module (``faiss`` -> ``faiss-cpu``)."""
    owners = _owners().get(module)
    return owners[0] if owners else DIST_OF_IMPORT.get(module, module.replace("_", "-"))


def missing_libraries(
    imports: dict[str, set[str]], found_is_enough: Iterable[str] = KAGGLE_IMAGE
) -> list[MissingLibrary]:
    """The libraries of ``imports`` (from :func:`third_party_imports`) that this Python cannot import.

    A library of ``found_is_enough`` is only looked up (importing torch would cost seconds, and a
    TF-IDF run never loads it); any other is imported, which runs its own imports too.
    """
    stack = {norm(d) for d in found_is_enough}
    out = []
    for module in sorted(imports):
        dist = distribution(module)
        try:
            if norm(dist) in stack and module not in sys.modules:
                if importlib.util.find_spec(module) is None:
                    raise ModuleNotFoundError(f"No module named {module!r}")
            else:
                importlib.import_module(module)
        except Exception as e:  # noqa: BLE001  absent, or present with a dependency of its own absent
            out.append(MissingLibrary(dist, module, f"{type(e).__name__}: {e}", tuple(sorted(imports[module]))))
    return out


def modules_of(dist: str) -> list[str]:
    """The top-level modules an installed distribution provides (``PyWavelets`` -> ``['pywt']``)."""
    key = norm(dist)
    return sorted(m for m, dists in _owners().items() if key in {norm(d) for d in dists} and not m.startswith("_"))


def forget_installed() -> None:
    """Read the installed distributions again (after a ``pip install`` in this process)."""
    _owners.cache_clear()


@lru_cache(maxsize=1)
def _owners() -> dict[str, list[str]]:
    # Scans every installed distribution's file list: a second or more in a large environment.
    return md.packages_distributions()


def version(dist: str) -> str:
    """The installed version of a distribution, or ``unknown``."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


def norm(name: str) -> str:
    """A distribution name as pip compares them (``Sparse_Dot.TopN`` -> ``sparse-dot-topn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def imports_of(module: str) -> frozenset[str]:
    """Absolute module names imported anywhere in a pipeline module (function bodies included)."""
    path = module_path(module)
    if path is None:
        return frozenset()
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module.split(".")[0] == "pipeline":
                out |= {f"{node.module}.{a.name}" for a in node.names}
    return frozenset(out)


def module_path(module: str) -> Path | None:
    """The source file of a pipeline module, or None for anything else."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return None
    if len(parts) == 1:
        return PACKAGE_ROOT / "__init__.py"
    rel = Path(*parts[1:])
    for candidate in (PACKAGE_ROOT / rel.with_suffix(".py"), PACKAGE_ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _pipeline_modules(name: str) -> list[str]:
    """``name`` and its parent packages, those that are modules of this project."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_path(".".join(parts[:i]))]
