"""GroupKFold over ``label_group``: a group never straddles folds, so out-of-fold is honest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold

from pipeline.settings import ConfigError, require


@dataclass
class FoldsConfig:
    n_splits: int = 5
    seed: int = 42
    # Out-of-fold search space. "all": each held-out fold's postings are searched among every train
    # posting (embedded by that fold's model), close to the test set's size. "fold": only among the
    # held-out fold itself, the usual Kaggle CV, smaller and so more optimistic.
    gallery: str = "all"

    def __post_init__(self) -> None:
        require(self.gallery in ("all", "fold"), "gallery", "'all' or 'fold'", self.gallery)
        require(self.n_splits >= 2, "n_splits", "at least 2", self.n_splits)


def make_folds(labels: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """(N,) fold number of each posting, shuffled deterministically by ``seed``."""
    n_groups = len(np.unique(labels))
    if n_groups < n_splits:
        raise ConfigError(f"folds.n_splits={n_splits} needs at least that many label groups; train.csv has {n_groups}")
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), groups=labels)):
        folds[held_out] = fold
    return folds


def gallery_rows(mode: str, fold_of: np.ndarray, fold: int) -> np.ndarray:
    """The train rows that fold ``fold``'s held-out postings are searched among: every row
    (``all``, close to the test set's size) or the fold's own rows (``fold``)."""
    return np.arange(len(fold_of)) if mode == "all" else np.flatnonzero(fold_of == fold)
