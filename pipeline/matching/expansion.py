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

Each round gives every row of each signal these candidates, scores exactly in that signal those
its list lacks and it was not offered in the round before, and keeps the best k (a second round
took two thirds of the first's scoring time at 200,000 bench postings). Lists are updated in
place, a block of rows at a time, so memory stays at the lists' own; a later block (and a later
signal) already reads the improved lists, which speeds the rounds up without making them depend
on anything but the order of the rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.matching.neighbours import PHASH_BITS, Neighbours, faiss_threads, rescore
from pipeline.matching.ranking import best_k, best_k_order


def expand_lists(
    vectors: Mapping[str, Any],
    lists: Mapping[str, Neighbours],
    rounds: int,
    sources: int,
    threads: int = 1,
    block: int = 8192,
    width: int | None = None,
) -> None:
    """Pool ``lists`` and grow each from its neighbours' lists, ``rounds`` times, in place.

    Args:
        vectors: per signal in ``lists``, the searched vectors: (N, D) L2-normalised float32 rows
            (inner product is cosine), or ``phash``'s (N, 8) packed 64-bit hashes.
        lists: per signal, its top-k lists over the same N rows; each row's candidates are the
            union of all of them.
        rounds: passes over every signal.
        sources: listed neighbours (best first) whose own lists each row is offered.
        width: the best entries of each such list offered (default: all k).
        threads: FAISS's threads for the exact scores.
        block: rows scored at a time.
    """
    if rounds > 255:
        raise ValueError(f"expansion rounds {rounds}: at most 255 (each entry's round is one byte)")
    scorers = {name: _scorer(name, vectors[name]) for name in lists}
    stamps = {name: np.zeros(nb.idx.shape, dtype=np.uint8) for name, nb in lists.items()}
    n = len(next(iter(lists.values())))
    with faiss_threads(threads):
        for round_ in range(1, rounds + 1):
            for name, nb in lists.items():
                fresh = _Fresh(stamps[name], round_)
                listed_by = _Reverse(nb, fresh)
                for start in range(0, n, block):
                    rows = slice(start, min(start + block, n))
                    cand = _candidates(lists, name, fresh, listed_by, rows, sources, width or nb.k)
                    _merge(nb, stamps[name], rows, scorers[name](cand, nb.k, start), round_)


class _Fresh:
    """Which list entries a round has not offered yet: NN-descent's "new" flags.

    ``stamp`` holds each entry's round (0: listed by the search). An entry listed before the previous
    round began was there all through that round, so every row that had it among its ``sources``
    was offered it then: ranks only fall, as a list only takes better entries. Offering only the
    rest keeps a later round's exact scores to pairs it has not scored.
    """

    def __init__(self, stamp: np.ndarray, round_: int):
        self.stamp, self.since = stamp, round_ - 1  # the first round offers everything

    def __call__(self, rows: Any, cols: slice = slice(None)) -> np.ndarray:
        return self.stamp[rows, cols] >= self.since


class _Reverse:
    """Who lists each row in a fresh entry: an approximate search misses a pair from one side more
    often than from both, and the rows that list i are candidates for i's list (at most k offered)."""

    def __init__(self, nb: Neighbours, fresh: _Fresh):
        n, self.k = nb.idx.shape
        if n >= 2**32 - 1:
            raise ValueError("rows past 2**32 - 2 do not fit the reverse lists' sort keys")
        listed = np.where(fresh(slice(None)), nb.idx, -1).ravel()
        # one key per entry, the listed row above the listing one: one vectorised sort groups the
        # listing rows by listed row, in row order (numpy's stable argsort took 7 times as long)
        key = listed.astype(np.uint64) << np.uint64(32)  # -1 wraps above every row: last
        key |= np.arange(len(listed), dtype=np.uint64) // np.uint64(self.k)
        key.sort()
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(listed[listed >= 0], minlength=n))])
        key = key[: self.indptr[-1]]
        key &= np.uint64(2**32 - 1)
        self.rows = key.astype(np.int32 if n < 2**31 else np.int64)

    def block(self, rows: slice) -> np.ndarray:
        """(B, W) rows listing each of ``rows`` (a slice), -1 padded, W at most k."""
        lo, hi = self.indptr[rows.start], self.indptr[rows.stop]
        counts = np.diff(self.indptr[rows.start : rows.stop + 1])
        owner = np.repeat(np.arange(len(counts)), counts)
        rank = np.arange(hi - lo) - np.repeat(self.indptr[rows] - lo, counts)
        keep = rank < self.k
        out = np.full((len(counts), max(1, min(self.k, int(counts.max(initial=0))))), -1, dtype=np.int64)
        out[owner[keep], rank[keep]] = self.rows[lo:hi][keep]
        return out


def _candidates(
    lists: Mapping[str, Neighbours],
    name: str,
    fresh: _Fresh,
    listed_by: _Reverse,
    rows: slice,
    sources: int,
    width: int,
) -> np.ndarray:
    """(B, C) each row's candidates that its own list lacks, every posting once, -1s last: the
    other signals' lists, the rows that list it, and the best ``width`` of its ``sources`` nearest
    neighbours' lists (of a neighbour listed before the previous round, only the fresh ones)."""
    nb = lists[name]
    own = nb.idx[rows]
    near = np.maximum(own[:, :sources], 0)
    grown = nb.idx[near, :width]  # (B, sources, width)
    offered_before = ~fresh(near)[:, :, :width] & ~fresh(rows, slice(0, sources))[:, :, None]
    grown[offered_before | (own[:, :sources] < 0)[:, :, None]] = -1
    parts = [own]
    parts += [other.idx[rows] for other_name, other in lists.items() if other_name != name]
    parts += [listed_by.block(rows), grown.reshape(len(own), -1)]
    # twice the posting, plus 1 when offered: sorted, a listed posting's key comes just before its
    # offers, and an offer within 1 of the key before it is listed already or offered twice
    key = np.empty((len(own), sum(p.shape[1] for p in parts)), dtype=np.int32 if len(nb) < 2**30 else np.int64)
    at = 0
    for i, part in enumerate(parts):
        out = key[:, at : at + part.shape[1]]
        np.multiply(part, 2, out=out, casting="unsafe")
        out += i > 0
        at += part.shape[1]
    key.sort(axis=1)
    gone = np.empty(key.shape, dtype=bool)
    gone[:, 0] = False
    np.less_equal(np.diff(key, axis=1), 1, out=gone[:, 1:])
    gone |= (key & 1) == 0  # listed
    gone |= key < 0  # no posting
    key[gone] = np.iinfo(key.dtype).max
    key.sort(axis=1)  # the candidates first
    width = max(1, int((~gone).sum(1).max(initial=0)))
    cand = key[:, :width] >> 1
    cand[cand == np.iinfo(key.dtype).max >> 1] = -1  # a FAISS list ends at its first -1
    return cand.astype(np.int64)


def _merge(nb: Neighbours, stamp: np.ndarray, rows: slice, new: tuple[np.ndarray, np.ndarray], round_: int) -> None:
    """``rows`` of ``nb`` become the best k of their own entries and the ``new`` ones (which their
    lists lack), and ``stamp`` marks the entries taken from ``new`` with ``round_``."""
    idx = np.concatenate([nb.idx[rows], new[0]], 1)
    sim = np.concatenate([nb.sim[rows], new[1]], 1)
    came = np.concatenate([stamp[rows], np.full(new[0].shape, round_, dtype=stamp.dtype)], 1)
    order = best_k_order(idx, sim, nb.k)
    nb.idx[rows] = np.take_along_axis(idx, order, 1)
    nb.sim[rows] = np.take_along_axis(sim, order, 1)
    stamp[rows] = np.take_along_axis(came, order, 1)


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
