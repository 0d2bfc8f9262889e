"""Out-of-fold galleries: what tuning searches, one gallery per held-out fold.

Fold f's held-out postings are the queries of a gallery embedded by the model that never saw
them. With ``folds.gallery=all`` that gallery is every train posting, and the unsupervised
signals (fitted once on all of train) are the same in every fold, so their searches and blends
are shared through the galleries' caches; with ``fold`` it is the fold's own postings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.folds import gallery_rows
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import NeighbourCache, SignalNeighbours, gallery_neighbours
from pipeline.matching.pair_features import PairContext, TitleQuantities

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
            (``search``, ``blend_method``).
        titles: (N,) every train posting's title, for the pair model's title features.
    """

    galleries: list[Gallery]
    caches: list[NeighbourCache]
    n: int
    search: dict[str, Any]
    titles: np.ndarray | None = None
    _title_tables: TitleQuantities | None = field(default=None, repr=False)

    def candidates(self, settings: MatchSettings) -> Candidates:
        """Every out-of-fold candidate pair under ``settings`` (fusion weights and blending)."""
        return Candidates.concat(
            [
                build_candidates(g, gallery_neighbours(g, settings, cache=c, **self.search), self.n)
                for g, c in zip(self.galleries, self.caches)
            ]
        )

    @property
    def gallery_size(self) -> int:
        """Postings each out-of-fold query is searched among (the mean over galleries)."""
        return int(round(np.mean([len(g.rows) for g in self.galleries])))

    def context(self, settings: MatchSettings) -> PairContext:
        """What the pair model reads about the candidates of :meth:`candidates` (same settings)."""
        gallery_of = np.full(self.n, -1, np.int64)
        for i, g in enumerate(self.galleries):
            gallery_of[g.rows[g.queries]] = i
        neighbours = [
            gallery_neighbours(g, settings, cache=c, **self.search) for g, c in zip(self.galleries, self.caches)
        ]
        context = PairContext(self.galleries, neighbours, gallery_of, self.titles)
        # The titles' token and quantity tables do not depend on the settings: build them once.
        if self.titles is not None:
            if self._title_tables is None:
                self._title_tables = context.title_quantities
            context.adopt_titles(self._title_tables)
        return context


def oof_galleries(
    fold_of: np.ndarray,
    mode: str,
    unsupervised: UnsupervisedFn,
    learned: LearnedFn | None,
    search: Mapping[str, Any],
    titles: Sequence[str] | None = None,
) -> OofGalleries:
    """Build the galleries of every held-out fold.

    Args:
        fold_of: (N,) fold of each train posting.
        mode: ``all`` or ``fold``, see :func:`pipeline.data.folds.gallery_rows`.
        unsupervised: the unsupervised vectors of given train rows.
        learned: the learned embeddings of a fold's gallery; None when no modality is learned.
        search: settings of the neighbour search (see :class:`OofGalleries`).
        titles: (N,) the train postings' titles (for the pair model).
    """
    n = len(fold_of)
    titles = None if titles is None else np.asarray(titles, dtype=object)
    everything = np.arange(n)
    shared_vectors = unsupervised(everything) if mode == "all" else {}
    if learned is None and mode == "all":
        return OofGalleries(
            [Gallery(everything, everything, shared_vectors)], [NeighbourCache()], n, dict(search), titles
        )
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
    return OofGalleries(galleries, caches, n, dict(search), titles)
