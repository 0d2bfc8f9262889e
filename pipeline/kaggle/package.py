"""``pipeline package``: a folder to upload as a Kaggle dataset for internet-off inference.

Layout of the folder::

    wheels/                      this project's wheel, plus extra wheels (e.g. faiss-cpu, imagehash),
                                 for ``pip install --no-index``
    models/<modality>/model.pt   the encoders that embed test.csv (see ``train.final``)
    models/text/backbone/        tokenizer and transformer config, so no hub is needed
    config.yaml                  the run's resolved config
    thresholds.json              the tuned match settings
    pair_model.json              the learned pair score, when the settings use it
    manifest.json                code version, source run, out-of-fold F1
    dataset-metadata.json        what the Kaggle CLI needs to create the dataset
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline import io
from pipeline.config import Config, load_config
from pipeline.paths import PROJECT_ROOT, PackagePaths, RunPaths

# Development tooling that the Kaggle wheel leaves out (it needs nothing of it).
DEV_ONLY = ("synth",)


class PackageError(RuntimeError):
    """A run that cannot be packaged, or a package folder that cannot be written."""


def package_run(run_dir: str | Path, out_dir: str | Path, wheels: str | Path | None = None,
                title: str = "shopee-pipeline-package") -> Path:
    """Write the package folder for a trained and tuned run; the folder appears complete or not at all."""
    run = RunPaths(Path(run_dir))
    if not run.thresholds.exists() or not run.config.exists():
        raise PackageError(f"{run.thresholds} missing: tune the run before packaging it")
    cfg = load_config(run.config)
    models = {m: _test_model(run, cfg, m) for m in cfg.learned}
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PackageError(f"{out_dir} exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        package = PackagePaths(staging)
        package.wheels.mkdir()
        build_wheel(package.wheels)
        if wheels is not None:
            for whl in sorted(Path(wheels).glob("*.whl")):
                shutil.copy2(whl, package.wheels / whl.name)
        for m, src in models.items():
            package.model(m).parent.mkdir(parents=True)
            shutil.copy2(src, package.model(m))
            if m == "text":
                from pipeline.models.encoders import load_encoder  # torch and transformers: text runs only

                load_encoder(src).save_pretrained_files(package.text_backbone())
        _copy_run_files(run, package)
        _write_metadata(run, cfg, package, title)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _test_model(run: RunPaths, cfg: Config, modality: str) -> Path:
    model = run.test_model(modality, getattr(cfg, modality).train.final)
    if model is None:
        raise PackageError(f"{modality}.train.final is none: no model embeds test.csv, so there is nothing to package")
    if not model.model.exists():
        raise PackageError(f"{model.model} missing: train the {modality} encoder before packaging the run")
    return model.model


def _copy_run_files(run: RunPaths, package: PackagePaths) -> None:
    shutil.copy2(run.config, package.config)
    shutil.copy2(run.thresholds, package.thresholds)
    if run.pair_model.exists():
        shutil.copy2(run.pair_model, package.pair_model)


def _write_metadata(run: RunPaths, cfg: Config, package: PackagePaths, title: str) -> None:
    io.write_json({
        "code_version": io.code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run.root.resolve()),
        "modalities": cfg.modalities,
        "oof_f1": io.read_json(run.thresholds).get("oof_f1"),
    }, package.manifest)
    slug = re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-") or "shopee-pipeline-package"
    io.write_json({"title": title, "id": f"YOUR_KAGGLE_USERNAME/{slug}", "licenses": [{"name": "CC0-1.0"}]},
                  package.kaggle_metadata)


def build_wheel(out_dir: Path) -> Path:
    """Build this project's wheel offline, from a copy of the source so the checkout stays clean."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copytree(PROJECT_ROOT / "pipeline", src / "pipeline",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *DEV_ONLY))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PROJECT_ROOT / name, src / name)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(out_dir), str(src)]
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
