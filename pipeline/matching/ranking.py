"""Ranking candidate lists by one packed sort key per entry: score first, then index.

numpy's lexsort sorts once per key, and a float score with an index tie-break is two keys. Packed
into one uint64, the score's order-preserving bits above the index's, one vectorised sort ranks
both, and the top of each row decodes back to (index, score).
"""

from __future__ import annotations

import numpy as np


def best_k(cand: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` best by ``score`` (-inf: none), equal scores by index, as (idx, sim).

    Each entry becomes one uint64 key, its score's :func:`descending_keys` above its
    :func:`index_keys`, and the keys are sorted, then decoded: numpy's vectorised sort of 70,000 x
    300 keys takes 0.1 s, where a two-key lexsort took 3.8 s.
    """
    key = _packed_keys(cand, score)
    key.sort(axis=1)
    key = key[:, :k]
    idx = (key & np.uint64(2**32 - 1)).astype(np.int64)
    sim = _score_of_key((key >> np.uint64(32)).astype(np.uint32))
    if key.shape[1] < k:
        pad = ((0, 0), (0, k - key.shape[1]))
        idx, sim = np.pad(idx, pad, constant_values=-1), np.pad(sim, pad, constant_values=-np.inf)
    idx[(idx == 2**32 - 1) | ~np.isfinite(sim)] = -1
    sim[idx < 0] = -np.inf
    return idx, sim


def best_k_order(cand: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """(B, k) positions of each row's ``k`` best entries, in :func:`best_k`'s order, for when other
    per-entry arrays ride along with the lists (its packed keys argsorted instead of sorted)."""
    return np.argsort(_packed_keys(cand, score), axis=1)[:, :k]


def _packed_keys(cand: np.ndarray, score: np.ndarray) -> np.ndarray:
    """One uint64 per entry: its score's :func:`descending_keys` above its :func:`index_keys`
    (-inf for a -1 entry)."""
    score = np.array(score, dtype=np.float32)
    score[cand < 0] = -np.inf
    key = descending_keys(score)
    del score
    key <<= np.uint64(32)
    key |= index_keys(cand)
    return key


def descending_keys(sims: np.ndarray) -> np.ndarray:
    """uint64 keys (below 2**32) that sort float32 ``sims`` largest first, -inf and NaN last.

    The float's bits of -s, with the sign bit flipped for positive values and every bit for
    negative ones, order as unsigned integers as -s does. Built in place: the keys of a big
    catalogue's lists are hundreds of MB, and each temporary is as many fresh pages.
    """
    negated = np.subtract(np.float32(0), sims, dtype=np.float32)  # 0 - s: no -0.0 apart from 0.0
    negated[np.isnan(negated)] = np.inf
    bits = negated.view(np.uint32)
    flip = bits >> np.uint32(31)  # 1 where negative
    flip *= np.uint32(2**31 - 1)
    flip |= np.uint32(2**31)
    flip ^= bits
    return flip.astype(np.uint64)


def index_keys(ids: np.ndarray) -> np.ndarray:
    """uint64 keys (below 2**32) that sort ids ascending, -1 last. Shifted above
    :func:`descending_keys`, one sort ranks by score, then index: numpy's lexsort sorts once per key."""
    if ids.size and ids.max() >= 2**32 - 1:
        raise ValueError("indices past 2**32 - 2 do not fit the sort keys")
    keys = ids.astype(np.uint64)  # a negative id wraps past 2**32 and is clipped to 2**32 - 1 below
    np.minimum(keys, np.uint64(2**32 - 1), out=keys)
    return keys


def _score_of_key(flipped: np.ndarray) -> np.ndarray:
    """float32 scores of :func:`descending_keys`' (uint32) keys."""
    bits = np.where(flipped >> np.uint32(31), flipped & np.uint32(2**31 - 1), ~flipped)
    return np.float32(0) - bits.view(np.float32)
