"""``pipeline kaggle-code``: the code dataset a Kaggle notebook installs the project from, in one command.

The folder holds this project's wheel and one wheel for every distribution of
:func:`~pipeline.kaggle.requirements.kaggle_wheels`: what the stages and the offline inference
import that Kaggle's image lacks, the pair model's library (the version that trains the model is
the one that loads it) and what those require in turn. That is the list ``prepare`` checks in the
notebook and ``package`` checks for the inference, read from the same import statements, so a
notebook installed from this folder has every library of every stage. The wheels are downloaded
with pip for Kaggle's Python and platform (``--python-version``, ``--platform``), at the versions
installed here, and installed there with ``pip install --no-index --no-deps``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pipeline import io
from pipeline.kaggle.package import PackageError, build_wheel
from pipeline.kaggle.requirements import Requirement, kaggle_wheels, wheel_key
from pipeline.runs.libraries import norm

KAGGLE_PYTHON = "3.11"  # the Python of Kaggle's notebook image
# Kaggle's image runs Ubuntu 22.04 (glibc 2.35): wheels for manylinux_2_28 and older run there.
KAGGLE_PLATFORM = "manylinux_2_28_x86_64"
RECORD = "kaggle-code.json"  # what the folder holds and why, beside the wheels


def write_code_dataset(
    out_dir: str | Path,
    python_version: str = KAGGLE_PYTHON,
    platform: str = KAGGLE_PLATFORM,
    title: str = "shopee-pipeline-code",
) -> dict:
    """Write the code dataset: the project's wheel, the wheels Kaggle's image lacks, the metadata.

    The folder appears complete or not at all.

    Returns:
        What was written: the folder, and per wheel its distribution, version and why it is there.

    Raises:
        PackageError: a library is not installed here (its version is unknown), pip cannot download
            a wheel for Kaggle's Python and platform, or ``out_dir`` is not empty.
    """
    needed = kaggle_wheels()
    unknown = [r.dist for r in needed if r.version == "unknown"]
    if unknown:
        raise PackageError(
            f"{', '.join(unknown)} not installed here, so there is no version to download for Kaggle: "
            "install the project's requirements first (`pip install -r requirements.txt`)"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PackageError(f"{out_dir} exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        project = build_wheel(staging)
        download_wheels(needed, staging, python_version, platform)
        record = {
            "python_version": python_version,
            "platform": platform,
            "project_wheel": project.name,
            "wheels": [{**r.to_dict(), "why": _why(r)} for r in needed],
        }
        io.write_json(record, staging / RECORD)
        slug = re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-") or "shopee-pipeline-code"
        io.write_json(
            {"title": title, "id": f"YOUR_KAGGLE_USERNAME/{slug}", "licenses": [{"name": "CC0-1.0"}]},
            staging / "dataset-metadata.json",
        )
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {"folder": str(out_dir), **record}


def download_wheels(needed: Sequence[Requirement], dest: Path, python_version: str, platform: str) -> list[Path]:
    """``pip download`` each requirement at its version, binary only, for the given Python and platform.

    Raises:
        PackageError: pip failed, or a requirement has no wheel in ``dest`` afterwards.
    """
    if not needed:
        return []
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        *(f"{r.dist}=={r.version}" for r in needed),
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--platform",
        platform,
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PackageError(
            f"pip could not download the wheels for Python {python_version} on {platform} "
            f"(`{' '.join(cmd[1:])}`):\n{done.stderr.strip()[-2000:]}"
        )
    wheels = {wheel_key(w.name): w for w in dest.glob("*.whl")}
    absent = [f"{r.dist}=={r.version}" for r in needed if (norm(r.dist), r.version) not in wheels]
    if absent:
        raise PackageError(f"pip reported success but wrote no wheel for {', '.join(absent)} into {dest}")
    return [wheels[norm(r.dist), r.version] for r in needed]


def _why(r: Requirement) -> str:
    if r.required_by:
        return f"required by {r.required_by}"
    if r.exact:
        return "the pair model's library: the version that trains it must load it"
    return "imported by the pipeline; not in Kaggle's image"
