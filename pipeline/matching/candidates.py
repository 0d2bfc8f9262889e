"""Galleries, candidate pairs, and the one per-query ranking everything else ranks with.

A *gallery* is a set of postings searched together (the test set, or one out-of-fold fold of
train) with the positions in it whose matches are predicted. Each signal's top-k lists become
*candidate pairs* (query, match) that carry one similarity per signal, -inf where a signal did not
list the pair. Memory stays O(N·k·S) for N postings, k neighbours and S signals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.matching.neighbours import Neighbours


@dataclass
class Gallery:
    """Postings searched together.

    Attributes:
        rows: (G,) global index of each gallery posting (into the labels, for out-of-fold tuning).
        queries: (Q,) positions within the gallery whose matches are predicted.
        vectors: per signal, G rows: dense (G, D) float32 for image/text, CSR (G, V) for tfidf,
            (G, 8) uint8 for phash.
    """

    rows: np.ndarray
    queries: np.ndarray
    vectors: dict[str, Any]

    def __post_init__(self) -> None:
        for name, v in self.vectors.items():
            if v.shape[0] != len(self.rows):
                raise ValueError(f"signal {name} has {v.shape[0]} rows for a gallery of {len(self.rows)}")


@dataclass
class Candidates:
    """Candidate pairs (query, match), each once, with one similarity per signal.

    Attributes:
        query: (P,) global index of the query posting.
        match: (P,) global index of the candidate, never equal to ``query``.
        sims: per signal, (P,) float32 similarity; -inf where the pair is not in its top-k.
        n: number of global postings (the length of the label array).
    """

    query: np.ndarray
    match: np.ndarray
    sims: dict[str, np.ndarray]
    n: int

    def __len__(self) -> int:
        return len(self.query)

    def take(self, rows: np.ndarray) -> Candidates:
        """The pairs at ``rows`` (an index or a (P,) bool mask)."""
        return Candidates(self.query[rows], self.match[rows], {k: v[rows] for k, v in self.sims.items()}, self.n)

    def subset(self, query_mask: np.ndarray) -> Candidates:
        """The pairs whose query is in ``query_mask`` ((n,) bool over global postings)."""
        return self.take(query_mask[self.query])

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        names = sorted(set().union(*(p.sims for p in parts)))
        return Candidates(
            query=np.concatenate([p.query for p in parts]),
            match=np.concatenate([p.match for p in parts]),
            sims={
                s: np.concatenate([p.sims.get(s, np.full(len(p), -np.inf, np.float32)) for p in parts]) for s in names
            },
            n=max(p.n for p in parts),
        )


def build_candidates(
    gallery: Gallery, neighbours: Mapping[str, Neighbours], n: int, floors: Mapping[str, float] | None = None
) -> Candidates:
    """Union of every signal's top-k pairs for the gallery's queries.

    Args:
        n: number of global postings.
        floors: per signal, drop that signal's pairs below this similarity first (prediction needs
            only pairs that can pass a threshold; tuning keeps them all).
    """
    qpos = np.asarray(gallery.queries)
    every_row = len(qpos) == len(next(iter(neighbours.values()), ())) and np.array_equal(qpos, np.arange(len(qpos)))
    keys, sims_per, names = [], [], []
    for name, nb in neighbours.items():
        idx = nb.idx if every_row else nb.idx[qpos]  # (Q, k) gallery positions
        sim = nb.sim if every_row else nb.sim[qpos]
        qrow = np.broadcast_to(qpos[:, None], idx.shape)
        keep = (idx >= 0) & (idx != qrow)
        if floors is not None:
            keep &= sim >= floors.get(name, math.inf)
        q_glob = gallery.rows[qrow[keep]].astype(np.int64)
        m_glob = gallery.rows[idx[keep]].astype(np.int64)
        keys.append(q_glob * n + m_glob)
        sims_per.append(sim[keep].astype(np.float32))
        names.append(name)
    all_keys = np.concatenate(keys) if keys else np.empty(0, np.int64)
    uniq, inverse = np.unique(all_keys, return_inverse=True)
    sims: dict[str, np.ndarray] = {}
    start = 0
    for name, k_arr, s_arr in zip(names, keys, sims_per):
        col = np.full(len(uniq), -np.inf, dtype=np.float32)
        # A signal can list a pair twice only through exact ties; keep the larger similarity.
        np.maximum.at(col, inverse[start : start + len(k_arr)], s_arr)
        sims[name] = col
        start += len(k_arr)
    return Candidates(query=uniq // n, match=uniq % n, sims=sims, n=n)


@dataclass
class Ranking:
    """Items ranked within their groups, best score first: the one per-query ranking.

    Attributes:
        order: (M,) item indices, sorted by group, then by score descending, then by ``tiebreak``
            (or by position).
        starts: (G',) position in ``order`` where each non-empty group starts.
        rank: (M,) rank of ``order[i]`` within its group, 0 = best.
    """

    order: np.ndarray
    starts: np.ndarray
    rank: np.ndarray

    @property
    def first(self) -> np.ndarray:
        """Each non-empty group's best item."""
        return self.order[self.starts]

    def rank_of_items(self) -> np.ndarray:
        """(M,) rank of each item, in item order."""
        out = np.empty(len(self.order), np.int64)
        out[self.order] = self.rank
        return out


def rank_within(group: np.ndarray, score: np.ndarray, tiebreak: np.ndarray | None = None) -> Ranking:
    """Rank items within their groups (queries) by ``score``, highest first.

    Args:
        group: (M,) group of each item (for candidate pairs, the query).
        score: (M,) the score to rank by.
        tiebreak: (M,) ranks equal scores by this, ascending; default: by position (a stable sort).
    """
    keys = (-score, group) if tiebreak is None else (tiebreak, -score, group)
    order = np.lexsort(keys)
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]]) if len(order) else np.empty(0, np.int64)
    lengths = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, lengths)
    return Ranking(order, starts, rank)


def best_pair_per_query(c: Candidates, signal: str) -> np.ndarray:
    """Index of each query's highest-``signal`` pair (queries whose pairs all lack it are skipped)."""
    listed = np.flatnonzero(np.isfinite(c.sims[signal]))
    return listed[rank_within(c.query[listed], c.sims[signal][listed]).first]
