"""Recall of the neighbour lists against exact search, on a sample of queries.

For each sampled query the exact similarities to every posting are computed, a chunk of queries
at a time (never N×N), and compared with what the searches listed:

- ``recall_at_k``: the share of the exact top-k that the list holds. Ties are counted by value,
  so a list holding another posting with the same similarity as the exact k-th is not penalised
  (phash distances tie a lot).
- ``recall_above_floor``: the same over the exact top-k pairs that reach the signal's floor, the
  lowest similarity the tuned rule can turn into a match: the pairs that decide F1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipeline.matching.fusion import DENSE_SIGNALS
from pipeline.matching.neighbours import PHASH_BITS, Neighbours

TOLERANCE = 1e-5  # FAISS and numpy round inner products differently


def search_recall(
    vectors: Mapping[str, Any],
    lists: Mapping[str, Neighbours],
    floors: Mapping[str, float],
    fusion_weights: Mapping[str, float] | None = None,
    sample: int = 1000,
    seed: int = 0,
    chunk: int = 100,
    queries: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Per listed signal (and ``candidates``, pooled over the signals with a floor), its recall.

    Args:
        vectors: per signal, the gallery's vectors (as searched).
        lists: per signal, the neighbour lists to check; ``concat`` is checked against the exact
            fused cosine; ``blend`` (not a search) is skipped.
        floors: per signal, the lowest similarity the decision uses.
        fusion_weights: the weights of ``concat`` (default 1 each).
        sample: queries checked.
        queries: the rows checked, when ``lists`` hold only theirs (row i of each list is query
            ``queries[i]``'s; see :func:`recall_queries`); default: ``sample`` rows drawn here.
    """
    whole = queries is None
    if whole:
        queries = recall_queries(len(next(iter(lists.values()))), sample, seed)
    names = [s for s in lists if s in vectors or s == "concat"]
    dense = [m for m in DENSE_SIGNALS if m in vectors]
    w = {m: float((fusion_weights or {}).get(m, 1.0)) for m in dense}
    counts = {s: np.zeros(4) for s in names}  # found@k, total@k, found above floor, total above floor
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        at = q if whole else np.arange(start, start + len(q))  # the rows of the lists
        exact = {s: exact_similarities(s, vectors[s], q) for s in names if s != "concat"}
        if "concat" in names:
            exact["concat"] = sum(
                w[m] * exact_similarities(m, vectors[m], q) if m not in exact else w[m] * exact[m] for m in dense
            ) / sum(w.values())
        for s in names:
            counts[s] += _counts(exact[s], lists[s].sim[at], lists[s].k, floors.get(s))
    out = {s: _ratios(c) for s, c in counts.items()}
    pooled = sum((counts[s] for s in names if s in floors), np.zeros(4))
    out["candidates"] = _ratios(pooled)
    return out


def recall_queries(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """The sorted rows :func:`search_recall` checks by default: ``sample`` of ``n``, drawn with ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))


def exact_similarities(name: str, x: Any, queries: np.ndarray) -> np.ndarray:
    """(Q, N) float32 similarities of the query rows to every row, for one signal's vectors."""
    if name == "phash":
        codes = np.ascontiguousarray(x, dtype=np.uint8).view(np.uint64).ravel()  # (N,) 64-bit hashes
        dist = np.bitwise_count(codes[queries, None] ^ codes[None, :])
        return (1.0 - dist.astype(np.float32) / PHASH_BITS).astype(np.float32)
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        return np.asarray((x[queries] @ x.T).toarray(), dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    return x[queries] @ x.T


def _counts(exact: np.ndarray, listed: np.ndarray, k: int, floor: float | None) -> np.ndarray:
    kth = np.partition(exact, exact.shape[1] - k, axis=1)[:, exact.shape[1] - k]  # (Q,) exact k-th best
    found_k = np.minimum(k, (listed >= kth[:, None] - TOLERANCE).sum(axis=1)).sum()
    if floor is None or not np.isfinite(floor):
        return np.array([found_k, k * len(exact), 0.0, 0.0])
    total_f = np.minimum(k, (exact >= floor).sum(axis=1))
    found_f = np.minimum(total_f, (listed >= floor - TOLERANCE).sum(axis=1))
    return np.array([found_k, k * len(exact), found_f.sum(), total_f.sum()], dtype=np.float64)


def _ratios(c: np.ndarray) -> dict[str, float]:
    out = {"recall_at_k": round(float(c[0] / c[1]), 4) if c[1] else float("nan")}
    if c[3]:
        out["recall_above_floor"] = round(float(c[2] / c[3]), 4)
        out["pairs_above_floor"] = int(c[3])
    return out
