"""The one place that knows where things live: the environment (local or Kaggle), a run folder, a
trained model's folder and a Kaggle package.

No other module spells out a Kaggle path or a file name inside these folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KAGGLE_WORKING = Path("/kaggle/working")


def on_kaggle() -> bool:
    """True inside a Kaggle notebook (Kaggle sets this variable in every kernel)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def working_dir() -> Path:
    """Where outputs go: Kaggle's writable working folder, else the project root."""
    return KAGGLE_WORKING if on_kaggle() else PROJECT_ROOT


@dataclass(frozen=True)
class _Folder:
    """A folder whose layout a subclass names; ``root`` may be given as a string."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))


@dataclass(frozen=True)
class ModelPaths(_Folder):
    """The files of one trained encoder's folder."""

    @property
    def last(self) -> Path:
        """Full training state after the last finished epoch (model, head, optimiser, RNGs ...)."""
        return self.root / "last.pt"

    @property
    def model(self) -> Path:
        """The trained encoder, weights only."""
        return self.root / "model.pt"

    @property
    def log_csv(self) -> Path:
        return self.root / "log.csv"

    @property
    def log_json(self) -> Path:
        return self.root / "log.json"

    def clear(self) -> None:
        for p in (self.last, self.model, self.log_csv, self.log_json):
            p.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunPaths(_Folder):
    """Layout of a run folder; every stage reads and writes only through these names."""

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        """Data location, code version and per-stage timings."""
        return self.root / "run.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    def models(self, modality: str) -> Path:
        """The folder holding every model of a modality, one sub-folder each."""
        return self.root / "models" / modality

    def model(self, modality: str, fold: int | None) -> ModelPaths:
        """The model trained without fold ``fold``, or on every row for None."""
        return ModelPaths(self.models(modality) / ("full" if fold is None else f"fold{fold}"))

    def test_model(self, modality: str, final: str) -> ModelPaths | None:
        """The model that embeds test.csv under ``train.final``: the full one, fold 0's, or none."""
        return None if final == "none" else self.model(modality, None if final == "full" else 0)

    def embeddings(self, modality: str, name: str) -> tuple[Path, Path]:
        """(vectors .npy, ids .csv) for ``name`` in ``oof_fold{f}``, ``untrained``, ``test``."""
        base = self.root / "embeddings" / modality
        return base / f"{name}.npy", base / f"{name}_ids.csv"

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def pair_model(self) -> Path:
        """The pair model as JSON (LightGBM's text trees inside; never a pickle)."""
        return self.root / "pair_model.json"

    @property
    def tune_report(self) -> Path:
        return self.root / "tune.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


@dataclass(frozen=True)
class PackagePaths(_Folder):
    """Layout of a Kaggle package folder (see :mod:`pipeline.kaggle.package`)."""

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    def model(self, modality: str) -> Path:
        return self.root / "models" / modality / "model.pt"

    def text_backbone(self) -> Path:
        """Tokenizer and transformer config of the title encoder, so no hub is needed."""
        return self.root / "models" / "text" / "backbone"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def pair_model(self) -> Path:
        """The pair model as JSON (LightGBM's text trees inside; never a pickle)."""
        return self.root / "pair_model.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def kaggle_metadata(self) -> Path:
        return self.root / "dataset-metadata.json"
