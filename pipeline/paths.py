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
    """Where outputs go: Kaggle's writable working folder; else the project root of a source
    checkout; else (the project installed as a wheel, whose root is site-packages) the current folder."""
    if on_kaggle():
        return KAGGLE_WORKING
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


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
        """Data location, code version, per-stage timings and provenance."""
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        """Held by the one process writing the folder; names it (see :mod:`pipeline.runs.lock`)."""
        return self.root / "run.lock"

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
        base = self.embeddings_dir / modality
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
    def threshold_plot(self) -> Path:
        return self.plot("threshold_f1")

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        """The report in words, for a person."""
        return self.root / "report.md"

    @property
    def run_log(self) -> Path:
        """Every ``pipeline`` log line of every stage run on this folder, appended."""
        return self.root / "run.log"

    @property
    def leaderboard(self) -> Path:
        """Leaderboard scores the user recorded for this run (``compare --lb RUN=SCORE``)."""
        return self.root / "leaderboard.json"

    @property
    def members(self) -> Path:
        """An ensemble run's member runs and their weights (see ``pipeline ensemble``)."""
        return self.root / "members.json"

    def plot(self, name: str) -> Path:
        """A figure in the plots folder: ``threshold_f1``, ``training``, ``false_positives`` ..."""
        return self.plots / f"{name}.png"

    def stage_files(self, stage: str) -> list[Path]:
        """The files a stage leaves for later stages, as they are now: what its provenance
        fingerprints, and what a failed attempt may have half-replaced."""
        if stage == "prepare":
            return [self.folds]
        if stage.startswith("train-"):
            # The trained encoders; checkpoints and logs are the training's own business.
            return sorted(self.models(stage.removeprefix("train-")).glob("*/model.pt"))
        if stage == "embed":
            return sorted(p for p in self.embeddings_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        # tune: what predict reads (not tune.json, which names the overrides, nor plots), so a re-tune
        # to the same settings keeps the submission built on them.
        files = {
            "tune": [self.thresholds, self.pair_model],
            "predict": [self.submission],
            "report": [self.report, self.report_md],
        }[stage]
        return [p for p in files if p.exists()]

    def stage_outputs(self, stage: str) -> list[Path]:
        """What invalidating a stage removes: its files, except trained models (hours of work, and
        the training refuses a folder of another run by itself, offering --overwrite)."""
        if stage.startswith("train-") or stage == "prepare":
            return []
        if stage == "tune":
            return self.stage_files(stage) + [p for p in (self.tune_report, self.threshold_plot) if p.exists()]
        return [self.embeddings_dir] if stage == "embed" else self.stage_files(stage)


@dataclass(frozen=True)
class PackagePaths(_Folder):
    """Layout of a Kaggle package folder (see :mod:`pipeline.kaggle.package`)."""

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    def member_dir(self, modality: str, member: int) -> Path:
        """The encoder files of one member of a modality's ensemble (a plain run has member 0 only)."""
        return self.root / "models" / modality / f"member{member}"

    def member_model(self, modality: str, member: int, fold: int | None) -> Path:
        """A member's encoder: its one ``model.pt``, or ``fold{f}.pt`` of a fold average."""
        return self.member_dir(modality, member) / ("model.pt" if fold is None else f"fold{fold}.pt")

    def text_backbone(self, member: int) -> Path:
        """Tokenizer and transformer config of a title encoder member, so no hub is needed."""
        return self.member_dir("text", member) / "backbone"

    @property
    def encoders(self) -> Path:
        """Per modality, the members: weight, model files (relative), flip TTA, text backbone."""
        return self.root / "encoders.json"

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
