"""``pipeline package``: a folder to upload as a Kaggle dataset for internet-off inference.

Layout of the folder::

    wheels/                      this project's wheel, plus extra wheels (e.g. faiss-cpu, imagehash),
                                 for ``pip install --no-index``
    models/<modality>/model.pt   the encoders that embed test.csv (see ``train.final``)
    models/text/backbone/        tokenizer and transformer config, so no hub is needed
    config.yaml                  the run's resolved config
    thresholds.json              the tuned match settings
    pair_model.pkl               the learned pair score, when the settings use it
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
from pipeline.paths import PROJECT_ROOT

PACKAGE_FILES = ("config.yaml", "thresholds.json", "manifest.json", "dataset-metadata.json")


def package_run(run_dir: str | Path, out_dir: str | Path, wheels: str | Path | None = None,
                title: str = "shopee-pipeline-package") -> Path:
    """Write the package folder for a trained and tuned run; the folder appears complete or not at all."""
    from pipeline.encoders import load_encoder
    from pipeline.stages import StageError, open_run, test_model_file

    run = open_run(run_dir)
    if not run.paths.thresholds.exists():
        raise StageError(f"{run.paths.thresholds} missing: tune the run before packaging it")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise StageError(f"{out_dir} exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / "wheels").mkdir()
        build_wheel(staging / "wheels")
        if wheels is not None:
            for whl in sorted(Path(wheels).glob("*.whl")):
                shutil.copy2(whl, staging / "wheels" / whl.name)
        for m in run.cfg.learned:
            src = test_model_file(run, m)
            dst = staging / "models" / m
            dst.mkdir(parents=True)
            shutil.copy2(src, dst / "model.pt")
            if m == "text":
                load_encoder(src).save_pretrained_files(dst / "backbone")
        shutil.copy2(run.paths.config, staging / "config.yaml")
        shutil.copy2(run.paths.thresholds, staging / "thresholds.json")
        if run.paths.pair_model.exists():
            shutil.copy2(run.paths.pair_model, staging / "pair_model.pkl")
        io.write_json({
            "code_version": io.code_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source_run": str(run.paths.root.resolve()),
            "modalities": run.cfg.modalities,
            "oof_f1": io.read_json(run.paths.thresholds).get("oof_f1"),
        }, staging / "manifest.json")
        slug = re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-") or "shopee-pipeline-package"
        io.write_json({"title": title, "id": f"YOUR_KAGGLE_USERNAME/{slug}", "licenses": [{"name": "CC0-1.0"}]},
                      staging / "dataset-metadata.json")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def build_wheel(out_dir: Path) -> Path:
    """Build this project's wheel offline, from a copy of the source so the checkout stays clean."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copytree(PROJECT_ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PROJECT_ROOT / name, src / name)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(out_dir), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            from pipeline.stages import StageError

            raise StageError(
                "could not build the project's wheel offline (is setuptools installed? "
                f"`pip install setuptools`):\n{done.stderr.strip()[-2000:]}"
            )
    wheels = sorted(out_dir.glob("shopee_pipeline-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel reported success but wrote no wheel into {out_dir}")
    return wheels[-1]
