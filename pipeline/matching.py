"""From per-signal vectors to match sets: neighbours, fusion, neighbourhood blending, union, min-2.

The engine works on *galleries*: a set of postings searched together (the test set, or one
out-of-fold fold of train) and the positions in it whose matches are predicted. For each gallery it
finds the top-k neighbours of every signal, turns them into candidate pairs that carry one
similarity per signal, and decides each pair with :class:`MatchSettings`:

1. ``concat``: the weighted concatenation of the L2-normalised dense embeddings (image, text),
   searched with FAISS like any other signal;
2. ``blend``: iterative neighbourhood blending of one vector signal (tuning picks the best of
   ``concat``, image, text and TF-IDF): each vector becomes the similarity-weighted sum of its neighbours above a
   threshold, is re-normalised and searched again;
3. the union of the signals' matches, each with its own threshold;
4. min-2: a posting left alone gets its nearest neighbour by ``min2_signal`` unless that one is below
   ``min2_floor``.

Memory stays O(N·k·S) for N postings, k neighbours and S signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from pipeline.neighbours import Neighbours, dense_knn, hamming_knn, sparse_knn
from pipeline.signals import l2_rows

DENSE_SIGNALS = ("image", "text")
FUSED_SIGNALS = ("concat", "blend")


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
class MatchSettings:
    """Everything that decides a pair; tuned on out-of-fold predictions and saved to thresholds.json."""

    thresholds: dict[str, float] = field(default_factory=dict)  # signals in the union; absent = off
    min2_signal: str | None = None
    min2_floor: float = math.inf  # inf = min-2 off
    blend_signal: str | None = None  # the vectors refined by neighbourhood blending
    blend_rounds: int = 0
    blend_threshold: float = math.inf
    fusion_weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # JSON has no infinity: "off" is written as null.
        for key in ("min2_floor", "blend_threshold"):
            d[key] = None if math.isinf(d[key]) else d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MatchSettings":
        d = dict(d)
        for key in ("min2_floor", "blend_threshold"):
            d[key] = math.inf if d.get(key) is None else float(d[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown match settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Neighbours of every signal
# ---------------------------------------------------------------------------------------------


def search(name: str, vectors: Any, k: int, batch_size: int = 4096, index: str = "flat") -> Neighbours:
    """Top-k neighbours of every gallery row for one signal, dispatched on the vectors' kind."""
    if name == "phash":
        return hamming_knn(vectors, k)
    if sp.issparse(vectors):
        return sparse_knn(vectors, k, batch_size=min(batch_size, 1024))
    return dense_knn(vectors, k, batch_size=batch_size, index=index)


def concat_embeddings(vectors: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted concatenation whose inner product is the weighted mean of per-signal cosines.

    Each part is L2-normalised first (the winners found that order worth +0.03 F1), scaled by
    sqrt(w), and the whole is divided by sqrt(sum w) so it stays unit length.
    """
    names = [n for n in DENSE_SIGNALS if n in vectors]
    w = np.array([float(weights.get(n, 1.0)) for n in names], dtype=np.float32)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fusion weights {dict(zip(names, w))} must be non-negative with a positive sum")
    parts = [_l2(vectors[n]) * np.sqrt(wi / w.sum()) for n, wi in zip(names, w)]
    return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)


def blend(vectors: Any, nb: Neighbours, threshold: float) -> Any:
    """One round of neighbourhood blending: x_i <- normalise(sum_j s_ij x_j) over s_ij >= threshold.

    The posting's own row is always in its neighbour list (similarity 1), so an isolated posting
    keeps its vector. Works for dense arrays and sparse TF-IDF rows alike.
    """
    out = _blend_weights(nb, threshold) @ vectors
    if sp.issparse(out):
        return l2_rows(out)
    return _l2(np.asarray(out, dtype=np.float32))


def graph_blend(nb: Neighbours, threshold: float, block: int = 4096) -> Neighbours:
    """One round of neighbourhood blending and the search after it, computed on the top-k graph.

    Blending gives u_i = sum_j w_ij x_j, so u_i . u_j = (W S W^T)_ij with S = X X^T. Here S is
    read from the top-k lists instead (symmetrised, 1 on the diagonal), which keeps every
    similarity big enough to matter, and the new cosine is P_ij / sqrt(P_ii P_jj) with
    P = W S W^T. Postings are then ranked by it, top-k per row, as a second search would.

    No vectors are needed, so a round costs a few sparse products instead of a search: blending
    TF-IDF rows fills them with their neighbours' terms, and searching with those rows costs
    many times the first search. ``block`` rows of P exist at a time.
    """
    n, k = len(nb), nb.k
    have = (nb.idx >= 0).ravel()
    rows = np.repeat(np.arange(n), k)[have]
    s = sp.csr_matrix((nb.sim.ravel()[have], (rows, nb.idx.ravel()[have])), shape=(n, n), dtype=np.float32)
    s = s.maximum(s.T)
    s = sp.csr_matrix(s - sp.diags(s.diagonal()) + sp.eye(n, dtype=np.float32, format="csr"))
    w = _blend_weights(nb, threshold)
    wt = sp.csr_matrix(w.T)
    # |u_i|^2 = (W S W^T)_ii, a block of rows at a time like P itself.
    norm = np.concatenate([
        np.asarray((w[i : i + block] @ s).multiply(w[i : i + block]).sum(axis=1)).ravel() for i in range(0, n, block)
    ])
    norm = np.sqrt(np.maximum(norm, 1e-12))
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, block):
        p = sp.csr_matrix(w[start : start + block] @ s @ wt)
        lengths = np.diff(p.indptr)
        row = np.repeat(np.arange(p.shape[0]), lengths)
        cos = p.data / (norm[start + row] * norm[p.indices])
        order = np.lexsort((p.indices, -cos, row))  # per row, most similar first, ties by index
        rank = np.arange(len(order)) - np.repeat(p.indptr[:-1], lengths)
        kept = rank < k
        top, rank = order[kept], rank[kept]
        idx[start + row[top], rank] = p.indices[top]
        sim[start + row[top], rank] = cos[top]
    return Neighbours(idx, sim)


def _blend_weights(nb: Neighbours, threshold: float) -> sp.csr_matrix:
    """(N, N) sparse weights of blending: s_ij where the neighbour passes the threshold, and 1 on
    the diagonal (ties can push a posting's own row out of its top-k; it is put back)."""
    n = len(nb)
    keep = ((nb.idx >= 0) & (nb.sim >= threshold)).ravel()
    rows = np.repeat(np.arange(n), nb.k)[keep]
    w = sp.csr_matrix((nb.sim.ravel()[keep], (rows, nb.idx.ravel()[keep])), shape=(n, n), dtype=np.float32)
    return sp.csr_matrix(w + sp.diags((w.diagonal() == 0).astype(np.float32)))


BLENDABLE_SIGNALS = ("concat", "image", "text", "tfidf")
BLEND_METHODS = ("graph", "exact")


def gallery_neighbours(
    gallery: Gallery,
    settings: MatchSettings,
    k: int = 50,
    batch_size: int = 4096,
    index: str = "flat",
    cache: dict[str, Neighbours] | None = None,
    timings: dict[str, float] | None = None,
    blend_method: str = "graph",
) -> dict[str, Neighbours]:
    """Neighbours of every signal in the gallery, plus ``concat`` and ``blend`` where they apply.

    Args:
        cache: a dict kept across calls with the same gallery; base signals and ``concat`` are
            searched once, so trying several blending settings only re-runs the blend.
        timings: when given, seconds per step are added to it (``search_<signal>``, ``blend``).
        blend_method: ``graph`` (``graph_blend``: no second search) or ``exact`` (blend the vectors
            with ``blend`` and search again).
    """
    cache = {} if cache is None else cache
    timings = {} if timings is None else timings
    vectors = dict(gallery.vectors)
    dense = [n for n in DENSE_SIGNALS if n in vectors]
    # The fused signal depends on the weights, so its cache entry does too.
    keys = {name: name for name in vectors}
    if len(dense) >= 2:
        weights = {n: float(settings.fusion_weights.get(n, 1.0)) for n in dense}
        keys["concat"] = "concat:" + ",".join(f"{n}={w:.6f}" for n, w in weights.items())
        if keys["concat"] not in cache:
            with _timed(timings, "fuse_concat"):
                vectors["concat"] = concat_embeddings(vectors, weights)
    out: dict[str, Neighbours] = {}
    for name, key in keys.items():
        if key not in cache:
            with _timed(timings, f"search_{name}"):
                cache[key] = search(name, vectors[name], k, batch_size, index)
        out[name] = cache[key]
    target = settings.blend_signal
    if settings.blend_rounds > 0 and target is not None and not math.isinf(settings.blend_threshold):
        if target not in keys:
            raise ValueError(f"blend_signal {target!r} is not among the gallery's signals {sorted(keys)}")
        if blend_method not in BLEND_METHODS:
            raise ValueError(f"blend_method {blend_method!r} unknown; choose one of {BLEND_METHODS}")
        key = f"blend:{blend_method}:{keys[target]}:{settings.blend_rounds}:{settings.blend_threshold:.6f}"
        if key not in cache:
            nb = out[target]
            with _timed(timings, "blend"):
                if blend_method == "graph":
                    for _ in range(settings.blend_rounds):
                        nb = graph_blend(nb, settings.blend_threshold)
                else:
                    if target == "concat" and "concat" not in vectors:
                        vectors["concat"] = concat_embeddings(vectors, weights)
                    x = vectors[target]
                    for _ in range(settings.blend_rounds):
                        x = blend(x, nb, settings.blend_threshold)
                        nb = search(target, x, k, batch_size, index)
            cache[key] = nb
        out["blend"] = cache[key]
    return out


# ---------------------------------------------------------------------------------------------
# Candidate pairs and decisions
# ---------------------------------------------------------------------------------------------


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

    def subset(self, query_mask: np.ndarray) -> "Candidates":
        """The pairs whose query is in ``query_mask`` ((n,) bool over global postings)."""
        keep = query_mask[self.query]
        return Candidates(self.query[keep], self.match[keep], {k: v[keep] for k, v in self.sims.items()}, self.n)

    @staticmethod
    def concat(parts: list["Candidates"]) -> "Candidates":
        names = sorted(set().union(*(p.sims for p in parts)))
        return Candidates(
            query=np.concatenate([p.query for p in parts]),
            match=np.concatenate([p.match for p in parts]),
            sims={
                s: np.concatenate([p.sims.get(s, np.full(len(p), -np.inf, np.float32)) for p in parts])
                for s in names
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
    keys, sims_per, names = [], [], []
    for name, nb in neighbours.items():
        idx = nb.idx[qpos]  # (Q, k) gallery positions
        sim = nb.sim[qpos]
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


def decide(c: Candidates, settings: MatchSettings) -> np.ndarray:
    """(P,) bool: which candidate pairs are matches under ``settings`` (union, then min-2)."""
    mask = np.zeros(len(c), dtype=bool)
    for name, t in settings.thresholds.items():
        if name in c.sims:
            mask |= c.sims[name] >= t
    if settings.min2_signal in c.sims and not math.isinf(settings.min2_floor):
        mask |= min2_pairs(c, mask, settings.min2_signal, settings.min2_floor)
    return mask


def min2_pairs(c: Candidates, mask: np.ndarray, signal: str, floor: float) -> np.ndarray:
    """(P,) bool: for each query with no match yet, its best pair by ``signal`` if >= ``floor``."""
    best = best_pair_per_query(c, signal)
    lonely = np.bincount(c.query[mask], minlength=c.n)[c.query[best]] == 0
    best = best[lonely & (c.sims[signal][best] >= floor)]
    out = np.zeros(len(c), dtype=bool)
    out[best] = True
    return out


def best_pair_per_query(c: Candidates, signal: str) -> np.ndarray:
    """Index of each query's highest-``signal`` pair (queries whose pairs all lack it are skipped)."""
    s = c.sims[signal]
    ok = np.isfinite(s)
    cand = np.flatnonzero(ok)
    order = cand[np.lexsort((-s[cand], c.query[cand]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = c.query[order[1:]] != c.query[order[:-1]]
    return order[first]


def match_lists(c: Candidates, mask: np.ndarray, n_queries: int, score: str | None = None) -> list[np.ndarray]:
    """Per query (global index 0..n_queries-1), the matched global indices, best first by ``score``."""
    q, m = c.query[mask], c.match[mask]
    s = c.sims[score][mask] if score in c.sims else np.zeros(len(q), np.float32)
    order = np.lexsort((-s, q))
    q, m = q[order], m[order]
    bounds = np.searchsorted(q, np.arange(n_queries + 1))
    return [m[bounds[i] : bounds[i + 1]] for i in range(n_queries)]


def prediction_floors(settings: MatchSettings) -> dict[str, float]:
    """The lowest similarity per signal that can still produce a match under ``settings``."""
    floors = dict(settings.thresholds)
    if settings.min2_signal is not None and not math.isinf(settings.min2_floor):
        s = settings.min2_signal
        floors[s] = min(floors.get(s, math.inf), settings.min2_floor)
    return floors


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    yield
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
