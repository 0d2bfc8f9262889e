"""Approximate neighbour lists brought close to exact ones: pooled across signals, then grown from
neighbours of neighbours, every candidate scored exactly.

An approximate index misses the pairs whose vectors land in cells it does not visit. On the bench's
noisy vectors at a million postings, IVF-PQ's lists held only 0.69 of the exact pairs above the
floors (docs/speed.md). Two facts recover most of the rest at a fraction of a search's cost:

- **The signals list the same products.** A pair the text search found is a candidate for the image
  list, and the other way round (pooling).
- **A neighbour's neighbour is likely a neighbour.** One step of NN-descent (Dong, Charikar and Li,
  WWW 2011) offers each row the lists of its ``sources`` nearest listed neighbours, and the rows
  whose lists hold it.

Each round gives every row of each signal these candidates, scores them exactly in that
signal and keeps the best k. Lists are updated in place, a block of rows at a time, so memory stays
at the lists' own; a later block (and a later signal) already reads the improved lists, which
speeds the rounds up without making them depend on anything but the order of the rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.matching.neighbours import PHASH_BITS, Neighbours, faiss_threads, rescore
from pipeline.matching.ranking import best_k


def expand_lists(
    vectors: Mapping[str, Any],
    lists: Mapping[str, Neighbours],
    rounds: int,
    sources: int,
    threads: int = 1,
    block: int = 8192,
) -> None:
    """Pool ``lists`` and grow each from its neighbours' lists, ``rounds`` times, in place.

    Args:
        vectors: per signal in ``lists``, the searched vectors: (N, D) L2-normalised float32 rows
            (inner product is cosine), or ``phash``'s (N, 8) packed 64-bit hashes.
        lists: per signal, its top-k lists over the same N rows; each row's candidates are the
            union of all of them.
        rounds: passes over every signal.
        sources: listed neighbours (best first) whose own lists each row is offered.
        threads: FAISS's threads for the exact scores.
        block: rows scored at a time.
    """
    scorers = {name: _scorer(name, vectors[name]) for name in lists}
    n = len(next(iter(lists.values())))
    with faiss_threads(threads):
        for _ in range(rounds):
            for name, nb in lists.items():
                listed_by = _Reverse(nb)
                for start in range(0, n, block):
                    stop = min(start + block, n)
                    cand = _candidates(lists, nb, listed_by, start, stop, sources)
                    nb.idx[start:stop], nb.sim[start:stop] = scorers[name](cand, nb.k, start)


class _Reverse:
    """Who lists each row: an approximate search misses a pair from one side more often than from
    both, and the rows that list i are candidates for i's list (at most k of them are offered)."""

    def __init__(self, nb: Neighbours):
        n, self.k = nb.idx.shape
        flat = nb.idx.ravel()
        order = np.argsort(flat, kind="stable")
        listed = np.bincount(flat[flat >= 0], minlength=n)
        self.indptr = np.concatenate([[0], np.cumsum(listed)]) + int((flat < 0).sum())  # the -1s sort first
        self.rows = (order // self.k).astype(np.int32 if n < 2**31 else np.int64)

    def block(self, start: int, stop: int) -> np.ndarray:
        """(B, W) rows listing each of rows start..stop, -1 padded, W at most k."""
        lo, hi = self.indptr[start], self.indptr[stop]
        counts = np.diff(self.indptr[start : stop + 1])
        owner = np.repeat(np.arange(stop - start), counts)
        rank = np.arange(hi - lo) - np.repeat(self.indptr[start:stop] - lo, counts)
        keep = rank < self.k
        out = np.full((stop - start, max(1, min(self.k, int(counts.max(initial=0))))), -1, dtype=np.int64)
        out[owner[keep], rank[keep]] = self.rows[lo:hi][keep]
        return out


def _candidates(
    lists: Mapping[str, Neighbours], nb: Neighbours, listed_by: _Reverse, start: int, stop: int, sources: int
) -> np.ndarray:
    """(B, C) each row's candidates, every posting once, -1s last: the pooled lists, the rows that
    list it, and its ``sources`` nearest neighbours' lists."""
    near = nb.idx[start:stop, :sources]
    grown = nb.idx[np.maximum(near, 0)]  # (B, sources, k)
    grown[near < 0] = -1
    parts = [other.idx[start:stop] for other in lists.values()]
    cand = np.concatenate(parts + [listed_by.block(start, stop), grown.reshape(stop - start, -1)], 1)
    cand.sort(axis=1)
    cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1
    cand.sort(axis=1)
    return cand[:, ::-1]  # descending: a FAISS list ends at its first -1


def _scorer(name: str, x: Any):
    """How ``name``'s candidates are scored exactly: ``(cand, k, start) -> (idx, sim)``, best ``k`` first."""
    if name == "phash":
        codes = np.ascontiguousarray(x, dtype=np.uint8).view(np.uint64).ravel()
        return lambda cand, k, start: _hamming_best(codes, cand, k, start)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return lambda cand, k, start: rescore(x, np.ascontiguousarray(cand), k, start)


def _hamming_best(codes: np.ndarray, cand: np.ndarray, k: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` candidates nearest in Hamming distance to rows ``start...`` (ties by posting index)."""
    dist = np.bitwise_count(codes[start : start + len(cand), None] ^ codes[np.maximum(cand, 0)])
    sim = np.where(cand >= 0, 1.0 - dist.astype(np.float32) / PHASH_BITS, -np.inf).astype(np.float32)
    return best_k(cand, sim, k)
