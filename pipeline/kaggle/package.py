"""``pipeline package``: a folder to upload as a Kaggle dataset for internet-off inference.

Layout of the folder::

    wheels/                          this project's wheel, plus extra wheels (e.g. faiss-cpu, imagehash),
                                     for ``pip install --no-index``
    models/<modality>/member<i>/     each member's encoder: model.pt, or fold<f>.pt for a fold average;
                                     a title encoder's backbone/ (tokenizer and transformer config)
    encoders.json                    per modality, the members: weight, model files, flip TTA
    config.yaml                      the run's resolved config
    thresholds.json                  the tuned match settings
    pair_model.json                  the learned pair score (LightGBM's text model), when the settings use it
    manifest.json                    code version, source run, F1, the libraries the inference needs
                                     (with their versions and where each comes from)
    dataset-metadata.json            what the Kaggle CLI needs to create the dataset

``package`` refuses a run whose inference would fail on Kaggle: every library the inference imports
must come from a wheel in the folder, Kaggle's image, or ``assume_installed``; the pair model's
library at the version that saved it.
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pipeline import io
from pipeline.config import Config, load_config
from pipeline.ensemble.members import EnsembleError, Member, test_members
from pipeline.kaggle.requirements import missing_message, requirements
from pipeline.matching.decide import MatchSettings
from pipeline.matching.predict import uses_pair_model
from pipeline.paths import PROJECT_ROOT, PackagePaths, RunPaths

# Development tooling that the Kaggle wheel leaves out (it needs nothing of it).
DEV_ONLY = ("synth",)


class PackageError(RuntimeError):
    """A run that cannot be packaged, or a package folder that cannot be written."""


def package_run(
    run_dir: str | Path,
    out_dir: str | Path,
    wheels: str | Path | None = None,
    title: str = "shopee-pipeline-package",
    fp16: bool = False,
    assume_installed: Sequence[str] = (),
) -> Path:
    """Write the package folder for a trained and tuned run; the folder appears complete or not at all.

    Args:
        wheels: a folder of extra wheels to include (e.g. ``pip download faiss-cpu --no-deps -d DIR``);
            when it holds the project's own ``shopee_pipeline`` wheel, that one is used instead of
            building one (a Kaggle notebook that installed the project from it has no source to build from).
        fp16: store the encoders' floating-point weights in half precision (about half the size);
            :func:`pipeline.models.encoders.load_encoder` casts them back to float32.
        assume_installed: distributions the inference notebook has without a wheel here.

    Raises:
        PackageError: the run is not tuned or lacks a model, or a library the inference imports
            would be missing on Kaggle (the message gives the ``pip download`` command).
    """
    run = RunPaths(Path(run_dir))
    if not run.thresholds.exists() or not run.config.exists():
        raise PackageError(f"{run.thresholds} missing: tune the run before packaging it")
    cfg = load_config(run.config)
    try:
        members = test_members(run.root, cfg)
    except EnsembleError as e:
        raise PackageError(f"{e}; nothing to package") from e
    settings = MatchSettings.from_dict(io.read_json(run.thresholds)["settings"])
    extra = sorted(Path(wheels).glob("*.whl")) if wheels is not None else []
    found, missing = requirements(uses_pair_model(settings), [w.name for w in extra], assume_installed)
    if missing:
        raise PackageError(missing_message(missing))
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PackageError(f"{out_dir} exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        package = PackagePaths(staging)
        package.wheels.mkdir()
        if not any(w.name.startswith("shopee_pipeline-") for w in extra):
            build_wheel(package.wheels)  # else the project's own wheel came with --wheels (an installed copy)
        for whl in extra:
            shutil.copy2(whl, package.wheels / whl.name)
        recipe = {
            m: [_copy_member(package, m, i, member, fp16) for i, member in enumerate(ms)] for m, ms in members.items()
        }
        io.write_json(recipe, package.encoders)
        _copy_run_files(run, package)
        _write_metadata(
            run,
            cfg,
            package,
            title,
            {"requires": [r.to_dict() for r in found], "fp16": fp16, "python": sys.version.split()[0]},
        )
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _copy_member(package: PackagePaths, modality: str, index: int, member: Member, fp16: bool) -> dict:
    """Copy one member's encoder files (and a title encoder's backbone files); its encoders.json entry."""
    from pipeline.models.encoders import load_encoder  # torch: only runs with a learned modality

    folds = [None] if len(member.models) == 1 else list(range(len(member.models)))
    files = []
    for fold, src in zip(folds, member.models):
        dst = package.member_model(modality, index, fold)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if fp16:
            write_half(src, dst)
        else:
            shutil.copy2(src, dst)
        files.append(dst.relative_to(package.root).as_posix())
    backbone = None
    if modality == "text":
        load_encoder(member.models[0]).save_pretrained_files(package.text_backbone(index))
        backbone = package.text_backbone(index).relative_to(package.root).as_posix()
    return {
        "weight": member.weight,
        "models": files,
        "tta_flip": member.tta_flip,
        "text_backbone": backbone,
        "source_run": str(member.run.resolve()) if member.run else None,
    }


def read_recipe(package: PackagePaths) -> dict[str, list[tuple[Member, Path | None]]]:
    """The package's members per modality, with absolute paths: (member, its text backbone dir)."""
    recipe = io.read_json(package.encoders)
    out = {}
    for modality, members in recipe.items():
        out[modality] = [
            (
                Member(m["weight"], [package.root / f for f in m["models"]], m["tta_flip"]),
                package.root / m["text_backbone"] if m.get("text_backbone") else None,
            )
            for m in members
        ]
    return out


def write_half(src: Path, dst: Path) -> Path:
    """Copy an encoder file with its floating-point tensors in float16 (``stored_dtype`` records it)."""
    import torch

    blob = torch.load(src, map_location="cpu", weights_only=True)
    blob["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    blob["stored_dtype"] = "float16"
    return io.save_torch(blob, dst)


def _copy_run_files(run: RunPaths, package: PackagePaths) -> None:
    shutil.copy2(run.config, package.config)
    shutil.copy2(run.thresholds, package.thresholds)
    if run.pair_model.exists():
        shutil.copy2(run.pair_model, package.pair_model)


def _write_metadata(run: RunPaths, cfg: Config, package: PackagePaths, title: str, extra: dict) -> None:
    report = io.read_json(run.report) if run.report.exists() else {}
    io.write_json(
        {
            "code_version": io.code_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source_run": str(run.root.resolve()),
            "modalities": cfg.modalities,
            "f1_cross_validated": report.get("f1_cross_validated"),
            "oof_f1": io.read_json(run.thresholds).get("oof_f1"),
            **extra,
        },
        package.manifest,
    )
    slug = re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-") or "shopee-pipeline-package"
    io.write_json(
        {"title": title, "id": f"YOUR_KAGGLE_USERNAME/{slug}", "licenses": [{"name": "CC0-1.0"}]},
        package.kaggle_metadata,
    )


def build_wheel(out_dir: Path) -> Path:
    """Build this project's wheel offline, from a copy of the source so the checkout stays clean."""
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        raise PackageError(
            f"{PROJECT_ROOT} is not a source checkout, so the project's wheel cannot be built here: "
            "pass --wheels DIR with the shopee_pipeline wheel it was installed from"
        )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copytree(
            PROJECT_ROOT / "pipeline",
            src / "pipeline",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *DEV_ONLY),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PROJECT_ROOT / name, src / name)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--wheel-dir",
            str(out_dir),
            str(src),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise PackageError(
                "could not build the project's wheel offline (is setuptools installed? "
                f"`pip install setuptools`):\n{done.stderr.strip()[-2000:]}"
            )
    wheels = sorted(out_dir.glob("shopee_pipeline-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel reported success but wrote no wheel into {out_dir}")
    return wheels[-1]
