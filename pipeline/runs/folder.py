"""A run folder as the stages see it: its paths, resolved config and manifest, the one writer it
allows at a time, and the checks that say which stage to run when something a stage needs is
missing or was built from other data or config.

Every writing stage runs inside :func:`stage` (``prepare`` inside :func:`preparing`): it takes the
folder's lock, checks the provenance of what the stage reads, and records what it wrote (see
:mod:`pipeline.runs.provenance`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, ImageConfig, TextConfig, dump_config, load_config
from pipeline.data import Dataset
from pipeline.device import bound_threads
from pipeline.matching.decide import MatchSettings
from pipeline.matching.oof import OofGalleries, oof_galleries
from pipeline.matching.signals import unsupervised_vectors
from pipeline.paths import ModelPaths, RunPaths
from pipeline.runs import provenance
from pipeline.runs.lock import RunLockedError, exclusive

log = logging.getLogger("pipeline")


class StageError(RuntimeError):
    """A stage run out of order or on a run folder that lacks what it needs."""


@dataclass
class Run:
    """A run folder opened by a stage: its paths, resolved config and manifest."""

    paths: RunPaths
    cfg: Config
    manifest: dict[str, Any]
    # config.yaml as read, where cfg carries a stage's overrides (``tune --run R search.k=30``)
    read_cfg: Config | None = None

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
        if not is_writer():
            return
        self.manifest.setdefault("timings", {})[stage] = round(seconds, 2)
        io.write_json(self.manifest, self.paths.manifest)

    def check_folds(self, folds: Sequence[int | None]) -> None:
        """Refuse fold numbers the run does not have (None is the model trained on every row)."""
        n = self.cfg.folds.n_splits
        bad = [f for f in folds if f is not None and not 0 <= f < n]
        if bad:
            raise StageError(f"--fold {bad[0]}: this run has folds 0 to {n - 1} (folds.n_splits={n}) and 'full'")

    def rerun_commands(self) -> dict[str, str]:
        """The command that (re)builds each stage's outputs, for messages."""
        root = self.paths.root
        out = {"prepare": f"`python -m pipeline prepare --data {self.manifest.get('data_dir', 'DATA')} --out {root}`"}
        for s in provenance.STAGES[1:]:
            out[s] = f"`python -m pipeline {'tune' if s == 'report' else s} --run {root}`"
        return out

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
        if not model.model.exists() and self.paths.members.exists():
            raise StageError(
                f"{self.paths.root} is an ensemble: its models stay in its members' folders "
                f"({self.paths.members}); train and embed the members, then run `python -m pipeline "
                "ensemble` again"
            )
        if not model.model.exists():
            raise StageError(
                f"{model.model} missing: run `python -m pipeline train-{modality} --run {self.paths.root}` first"
            )
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

        search = {"search": self.cfg.search, "blend_method": self.cfg.fusion.blend_method}
        return oof_galleries(
            fold_of,
            self.cfg.folds.gallery,
            unsupervised,
            learned if self.cfg.learned else None,
            search,
            titles=df["title"].to_numpy(),
        )

    def tuned_settings(self) -> MatchSettings:
        for path in (self.paths.thresholds, self.paths.tune_report):
            if not path.exists():
                raise StageError(f"{path} missing: run `python -m pipeline tune --run {self.paths.root}` first")
        return MatchSettings.from_dict(io.read_json(self.paths.thresholds)["settings"])


def open_run(run_dir: str | Path) -> Run:
    paths = RunPaths(Path(run_dir))
    if not paths.manifest.exists() or not paths.config.exists():
        raise StageError(f"{paths.root} is not a prepared run folder: run `python -m pipeline prepare` first")
    try:
        manifest = io.read_json(paths.manifest)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageError(f"{paths.manifest} is not readable JSON ({e}): rerun `python -m pipeline prepare`") from None
    return Run(paths, load_config(paths.config), manifest)


def modality_cfg(cfg: Config, modality: str) -> ImageConfig | TextConfig:
    if modality not in ("image", "text"):
        raise ConfigError(f"no encoder for modality {modality!r}; learned modalities are image and text")
    return cfg.image if modality == "image" else cfg.text


@contextmanager
def writing(run_dir: str | Path) -> Iterator[RunPaths]:
    """Hold the run folder's lock (re-entrant in this process).

    A folder this call creates is removed again if the block fails before ``prepare`` has
    recorded it, so a refused ``prepare`` or ``run`` leaves no folder behind.

    Raises:
        StageError: another process holds the folder, naming its pid and start time.
    """
    paths = RunPaths(Path(run_dir))
    created = not paths.root.exists()
    try:
        with exclusive(paths.lock, str(paths.root)):
            try:
                yield paths
            except BaseException:
                if created and "prepare" not in _read_provenance(paths):
                    shutil.rmtree(paths.root, ignore_errors=True)
                raise
    except RunLockedError as e:
        raise StageError(str(e)) from None


def _read_provenance(paths: RunPaths) -> dict[str, Any]:
    try:
        return io.read_json(paths.manifest).get("provenance") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def is_writer() -> bool:
    """Whether this process writes the run's files: under torchrun rank 0 alone does (the other
    ranks train and embed their share, and neither lock the folder nor record anything)."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def stage(run: Run, name: str, data: Dataset | None = None, record: bool = True) -> Iterator[None]:
    """Run a stage as the folder's one writer, on inputs whose provenance holds, its log lines
    also appended to the run's run.log.

    On entry: take the lock, bound the threads (``cfg.threads``), and refuse (naming the stage to
    rerun) if what the stage reads is missing or was built from other config or data. On success:
    record the stage's provenance and its seconds, and drop every record built on its earlier
    outputs. On failure: if the stage had already replaced some of its files, drop its record and
    everything built on it, so no stage trusts a half-written set.

    Args:
        data: the dataset the stage reads, when not the run's own (``predict --data``).
        record: False for a stage whose outputs go outside the folder (``predict --out``): it is
            checked and timed, and leaves the records as they are.
    """
    if not is_writer():
        bound_threads(run.cfg.threads)
        yield
        return
    with writing(run.paths.root), run_log(run.paths):
        bound_threads(run.cfg.threads)
        _reload(run)
        prov = run.manifest.get("provenance") if record else None
        if not run.data.train_csv.is_file():
            raise StageError(f"{run.data.train_csv}: file not found (has the run's data folder moved?)")
        run_fp = provenance.data_fingerprint(run.data, run.cfg.needs_images)
        data_fp = run_fp if data is None else provenance.data_fingerprint(data, run.cfg.needs_images)
        if "provenance" not in run.manifest:
            log.warning("[%s] %s predates provenance records: its inputs are not checked", name, run.paths.manifest)
        else:
            why = provenance.problem(run.manifest["provenance"], run.paths, run.cfg, name, run_fp, run.rerun_commands())
            if why:
                raise StageError(f"{name}: {why}")
        before = provenance.snapshot(run.paths, name)
        log.info("[%s] started", name)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            if prov is not None and provenance.snapshot(run.paths, name) != before:
                _forget(run, name)
            raise
        seconds = time.perf_counter() - t0
        if prov is not None:
            prov[name] = provenance.build_record(name, run.cfg, data_fp, prov, run.paths)
            provenance.sweep(prov, run.paths, run.cfg)
        run.record_timing(name, seconds)
        log.info("[%s] done in %.1fs", name, seconds)


def _reload(run: Run) -> None:
    """Re-read the manifest under the lock, and check config.yaml is still what the stage read."""
    if dump_config(load_config(run.paths.config)) != dump_config(run.read_cfg or run.cfg):
        raise StageError(f"{run.paths.config} changed after this stage read it: run the stage again")
    run.manifest = io.read_json(run.paths.manifest)


def _forget(run: Run, name: str) -> None:
    """A failed attempt changed the stage's files: nothing built on them, nor they, can be trusted."""
    prov = run.manifest["provenance"]
    provenance.invalidate(prov, run.paths, name)
    removed = provenance.sweep(prov, run.paths, run.cfg)
    log.warning(
        "[%s] failed after changing its outputs: removed them%s",
        name,
        f" and those of {', '.join(removed)}" if removed else "",
    )
    try:
        io.write_json(run.manifest, run.paths.manifest)
    except OSError as e:  # the stage's own error is the one to report
        log.warning("[%s] could not record that: %s", name, e)


_RUN_LOGS: dict[Path, list] = {}  # run.log path -> [handler, how many open blocks use it]


@contextmanager
def run_log(paths: RunPaths) -> Iterator[None]:
    """Append every ``pipeline`` log line emitted in the block to the run folder's run.log.

    The logger passes INFO lines for the block's length (a notebook that configured no logging
    still gets its run.log); nested blocks on one folder share one handler.
    """
    path = paths.run_log.resolve()
    entry = _RUN_LOGS.get(path)
    if entry is None:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handler.setLevel(logging.INFO)
        entry = _RUN_LOGS[path] = [handler, 0, log.level]
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
    entry[1] += 1
    try:
        yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            log.removeHandler(entry[0])
            entry[0].close()
            log.setLevel(entry[2])
            del _RUN_LOGS[path]
