"""A run folder as the stages see it: its paths, resolved config and manifest, and the checks that
say which stage to run when something a stage needs is missing."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, ImageConfig, TextConfig, load_config
from pipeline.data import Dataset
from pipeline.matching.decide import MatchSettings
from pipeline.matching.oof import OofGalleries, oof_galleries
from pipeline.matching.signals import unsupervised_vectors
from pipeline.paths import ModelPaths, RunPaths

log = logging.getLogger("pipeline")


class StageError(RuntimeError):
    """A stage run out of order or on a run folder that lacks what it needs."""


@dataclass
class Run:
    """A run folder opened by a stage: its paths, resolved config and manifest."""

    paths: RunPaths
    cfg: Config
    manifest: dict[str, Any]

    @property
    def data(self) -> Dataset:
        return Dataset(Path(self.manifest["data_dir"]))

    def train_df(self) -> pd.DataFrame:
        return self.data.read("train")

    def test_df(self) -> pd.DataFrame:
        return self.data.read("test")

    def folds(self, train: pd.DataFrame | None = None) -> np.ndarray:
        """(N,) fold of each train row; checked against train.csv, which must not change after prepare."""
        df = pd.read_csv(self.paths.folds, dtype={"posting_id": str})
        ids = (self.train_df() if train is None else train)["posting_id"].to_numpy()
        if len(ids) != len(df) or (df["posting_id"].to_numpy() != ids).any():
            raise StageError(
                f"{self.data.train_csv} no longer lists the postings of {self.paths.folds} in the same order; "
                f"rerun `python -m pipeline prepare` into a new run folder"
            )
        return df["fold"].to_numpy()

    def record_timing(self, stage: str, seconds: float) -> None:
        self.manifest.setdefault("timings", {})[stage] = round(seconds, 2)
        io.write_json(self.manifest, self.paths.manifest)

    def model_file(self, modality: str, fold: int | None) -> Path:
        """A trained encoder's ``model.pt``; says which stage to run when it is missing."""
        return self._trained(self.paths.model(modality, fold), modality)

    def test_model_file(self, modality: str) -> Path:
        """The model that embeds test.csv, as ``train.final`` says."""
        model = self.paths.test_model(modality, modality_cfg(self.cfg, modality).train.final)
        if model is None:
            raise StageError(f"{modality}.train.final is none: no model embeds test.csv")
        return self._trained(model, modality)

    def _trained(self, model: ModelPaths, modality: str) -> Path:
        if not model.model.exists():
            raise StageError(f"{model.model} missing: run `python -m pipeline train-{modality} --run {self.paths.root}` first")
        return model.model

    def embeddings(self, modality: str, name: str, expected_ids: np.ndarray) -> np.ndarray:
        """Saved embeddings (memory-mapped), checked to list ``expected_ids`` in order."""
        vec_path, ids_path = self.paths.embeddings(modality, name)
        for path in (vec_path, ids_path):
            if not path.exists():
                raise StageError(f"{path} missing: run `python -m pipeline embed --run {self.paths.root}` first")
        ids = pd.read_csv(ids_path, dtype=str)["posting_id"].to_numpy()
        if len(ids) != len(expected_ids) or (ids != expected_ids).any():
            raise StageError(f"{ids_path} does not list the expected postings; rerun the embed stage")
        return np.load(vec_path, mmap_mode="r")

    def oof_galleries(self, df: pd.DataFrame, fold_of: np.ndarray, variant: str = "oof") -> OofGalleries:
        """The run's out-of-fold galleries; ``variant`` picks the learned embeddings: ``oof`` (the
        fold models) or ``untrained``."""
        ids = df["posting_id"].to_numpy()
        images = self.data.images_dir("train")

        def unsupervised(rows: np.ndarray) -> dict[str, Any]:
            return unsupervised_vectors(self.cfg, df if len(rows) == len(df) else df.iloc[rows], images)

        def learned(fold: int, rows: np.ndarray) -> dict[str, np.ndarray]:
            if variant == "untrained":
                return {m: np.asarray(self.embeddings(m, "untrained", ids))[rows] for m in self.cfg.learned}
            return {m: np.asarray(self.embeddings(m, f"oof_fold{fold}", ids[rows])) for m in self.cfg.learned}

        m = self.cfg.match
        search = {"k": m.k, "batch_size": m.batch_size, "index": m.index, "blend_method": m.blend_method}
        return oof_galleries(fold_of, self.cfg.folds.gallery, unsupervised, learned if self.cfg.learned else None,
                             search, titles=df["title"].to_numpy())

    def tuned_settings(self) -> MatchSettings:
        for path in (self.paths.thresholds, self.paths.tune_report):
            if not path.exists():
                raise StageError(f"{path} missing: run `python -m pipeline tune --run {self.paths.root}` first")
        return MatchSettings.from_dict(io.read_json(self.paths.thresholds)["settings"])


def open_run(run_dir: str | Path) -> Run:
    paths = RunPaths(Path(run_dir))
    if not paths.manifest.exists() or not paths.config.exists():
        raise StageError(f"{paths.root} is not a prepared run folder: run `python -m pipeline prepare` first")
    return Run(paths, load_config(paths.config), io.read_json(paths.manifest))


def modality_cfg(cfg: Config, modality: str) -> ImageConfig | TextConfig:
    if modality not in ("image", "text"):
        raise ConfigError(f"no encoder for modality {modality!r}; learned modalities are image and text")
    return cfg.image if modality == "image" else cfg.text


@contextmanager
def stage(run: Run, name: str) -> Iterator[None]:
    """Log a stage's start and end, and record its seconds in the manifest."""
    log.info("[%s] started", name)
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    run.record_timing(name, seconds)
    log.info("[%s] done in %.1fs", name, seconds)
