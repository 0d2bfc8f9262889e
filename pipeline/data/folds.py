"""GroupKFold over ``label_group``: a group never straddles folds, so out-of-fold is honest."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold

from pipeline.config import ConfigError


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
