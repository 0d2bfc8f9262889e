"""The one place that knows where things live: the environment (local or Kaggle) and a run folder.

No other module spells out a Kaggle path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_COMPETITION = "shopee-product-matching"


def on_kaggle() -> bool:
    """True inside a Kaggle notebook (Kaggle sets this variable in every kernel)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def default_data_dir() -> Path:
    """Where the competition data is: Kaggle's input mount, else ``data/`` in the project."""
    if on_kaggle():
        return KAGGLE_INPUT / KAGGLE_COMPETITION
    return PROJECT_ROOT / "data"


def working_dir() -> Path:
    """Where outputs go: Kaggle's writable working folder, else the project root."""
    return KAGGLE_WORKING if on_kaggle() else PROJECT_ROOT


def kaggle_dataset_dir(name: str) -> Path:
    """An attached Kaggle dataset (for example the folder written by ``pipeline package``)."""
    return KAGGLE_INPUT / name


@dataclass(frozen=True)
class RunPaths:
    """Layout of a run folder; every stage reads and writes only through these names."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

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

    def model_dir(self, modality: str, fold: int | None) -> Path:
        return self.root / "models" / modality / ("full" if fold is None else f"fold{fold}")

    def embeddings(self, modality: str, name: str) -> tuple[Path, Path]:
        """(vectors .npy, ids .csv) for ``name`` in ``oof_fold{f}``, ``untrained``, ``test``."""
        base = self.root / "embeddings" / modality
        return base / f"{name}.npy", base / f"{name}_ids.csv"

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def pair_model(self) -> Path:
        return self.root / "pair_model.pkl"

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
