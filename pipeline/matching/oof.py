"""Out-of-fold galleries: what tuning searches, one gallery per held-out fold.

Fold f's held-out postings are the queries of a gallery embedded by the model that never saw
them. With ``folds.gallery=all`` that gallery is every train posting, and the unsupervised
signals (fitted once on all of train) are the same in every fold, so their searches and blends
are shared through the galleries' caches; with ``fold`` it is the fold's own postings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.data.folds import gallery_rows
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import NeighbourCache, SignalNeighbours, gallery_neighbours

# Loads a fold's learned embeddings for the gallery's rows: (fold, rows) -> {modality: (G, D)}.
LearnedFn = Callable[[int, np.ndarray], Mapping[str, np.ndarray]]
# The unsupervised vectors (TF-IDF fitted on the given rows, phash) of some train rows.
UnsupervisedFn = Callable[[np.ndarray], dict[str, Any]]


@dataclass
class OofGalleries:
    """The out-of-fold galleries of a train set and their neighbour caches.

    Attributes:
        galleries: one per held-out fold (or a single one when nothing is learned and every fold
            would search the same vectors).
        caches: one per gallery, kept across :meth:`candidates` calls.
        n: number of train postings.
        search: keyword arguments of :func:`~pipeline.matching.fusion.gallery_neighbours`
            (``k``, ``batch_size``, ``index``, ``blend_method``).
    """

    galleries: list[Gallery]
    caches: list[NeighbourCache]
    n: int
    search: dict[str, Any]

    def candidates(self, settings: MatchSettings) -> Candidates:
        """Every out-of-fold candidate pair under ``settings`` (fusion weights and blending)."""
        return Candidates.concat([
            build_candidates(g, gallery_neighbours(g, settings, cache=c, **self.search), self.n)
            for g, c in zip(self.galleries, self.caches)
        ])


def oof_galleries(fold_of: np.ndarray, mode: str, unsupervised: UnsupervisedFn, learned: LearnedFn | None,
                  search: Mapping[str, Any]) -> OofGalleries:
    """Build the galleries of every held-out fold.

    Args:
        fold_of: (N,) fold of each train posting.
        mode: ``all`` or ``fold``, see :func:`pipeline.data.folds.gallery_rows`.
        unsupervised: the unsupervised vectors of given train rows.
        learned: the learned embeddings of a fold's gallery; None when no modality is learned.
        search: settings of the neighbour search (see :class:`OofGalleries`).
    """
    n = len(fold_of)
    everything = np.arange(n)
    shared_vectors = unsupervised(everything) if mode == "all" else {}
    if learned is None and mode == "all":
        return OofGalleries([Gallery(everything, everything, shared_vectors)], [NeighbourCache()], n, dict(search))
    # Unsupervised signals of an all-train gallery are the same in every fold: one search each.
    shared = {name: SignalNeighbours() for name in shared_vectors}
    galleries, caches = [], []
    for fold in np.unique(fold_of):
        rows = gallery_rows(mode, fold_of, int(fold))
        queries = np.flatnonzero(fold_of[rows] == fold)
        vectors = dict(shared_vectors) if mode == "all" else unsupervised(rows)
        if learned is not None:
            vectors.update(learned(int(fold), rows))
        galleries.append(Gallery(rows, queries, vectors))
        caches.append(NeighbourCache(shared if mode == "all" else None))
    return OofGalleries(galleries, caches, n, dict(search))
