"""Fusion of the signals' neighbour lists: the weighted concatenation of dense embeddings and
iterative neighbourhood blending, with a cache that lets tuning try many settings on one search.

1. ``concat``: the cosine of the weighted concatenation of the L2-normalised dense embeddings
   (image, text), which is the weighted mean of their cosines. It is never searched: its
   neighbours are the union of the image and text lists, scored exactly (:func:`fused_neighbours`);
2. ``blend``: neighbourhood blending of one vector signal (tuning picks the best of ``concat``,
   image, text and TF-IDF): each vector becomes the similarity-weighted sum of its neighbours above
   a threshold, is re-normalised, and its neighbours are found again.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipeline.matching.candidates import Gallery
from pipeline.matching.decide import MatchSettings
from pipeline.matching.expansion import expand_lists
from pipeline.matching.neighbours import EXACT, Neighbours, SearchConfig, faiss_threads, pair_dots, search
from pipeline.matching.ranking import best_k
from pipeline.matching.signals import l2_rows
from pipeline.settings import require

DENSE_SIGNALS = ("image", "text")
FUSED_SIGNALS = ("concat", "blend")
BLENDABLE_SIGNALS = ("concat", "image", "text", "tfidf")
BLEND_METHODS = ("graph", "exact")


@dataclass
class FusionConfig:
    """How signals combine before the decision: the dense fusion's weights and blending."""

    # Per dense modality (image, text), its weight in ``concat``; empty: tuning picks the image share.
    weights: dict[str, float] = field(default_factory=dict)
    blend_rounds: int = 1  # largest number of blending rounds tuning tries (0 = off)
    # graph: blended similarities from the top-k lists, no second search; exact: blend the vectors
    # and search again (many times slower, and it grows as N squared for TF-IDF: docs/speed.md)
    blend_method: str = "graph"

    def __post_init__(self) -> None:
        require(self.blend_method in BLEND_METHODS, "blend_method", f"one of {list(BLEND_METHODS)}", self.blend_method)
        require(self.blend_rounds >= 0, "blend_rounds", ">= 0", self.blend_rounds)
        for name, w in self.weights.items():
            require(w >= 0, f"weights.{name}", ">= 0", w)
        if self.weights:
            require(sum(self.weights.values()) > 0, "weights", "not all zero", self.weights)


@dataclass
class SignalNeighbours:
    """One signal's neighbours in a gallery, and the blends computed from them, keyed by
    (method, rounds, threshold)."""

    neighbours: Neighbours | None = None
    blends: dict[tuple[str, int, float], Neighbours] = field(default_factory=dict)
    expanded: bool = False  # the approximate lists went through :func:`expand_lists`


class NeighbourCache:
    """The searches of one gallery, kept across calls with other settings.

    Entries are keyed by signal name, or by ``("concat", weights)`` for the fused signal, whose
    neighbours depend on its weights. Galleries that search the same vectors (the unsupervised
    signals of every out-of-fold gallery, when each searches all of train) are given the same
    :class:`SignalNeighbours` objects through ``shared``, so each is searched once.
    """

    def __init__(self, shared: Mapping[Hashable, SignalNeighbours] | None = None):
        self.entries: dict[Hashable, SignalNeighbours] = dict(shared or {})

    def entry(self, key: Hashable) -> SignalNeighbours:
        return self.entries.setdefault(key, SignalNeighbours())


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


def fused_neighbours(
    vectors: Mapping[str, np.ndarray],
    lists: Mapping[str, Neighbours],
    weights: Mapping[str, float],
    k: int,
    floor: float = -np.inf,
    block: int = 8192,
) -> Neighbours:
    """Top-k by the fused cosine sum_m w_m cos_m / sum_m w_m, from the union of the per-modality lists.

    The fused cosine of a pair is what the concatenation's inner product gives
    (:func:`concat_embeddings`), computed on listed pairs only, never N×N. Each row's candidates are
    its lists side by side, each posting once; a pair's cosine in a modality whose list does not
    hold it comes from FAISS's threaded ``fvec_inner_products_by_idx``. With a ``floor`` that
    product is skipped when the pair cannot reach the floor even with cos_m at m's k-th listed
    similarity (the most an unlisted pair has under exact search).

    A pair that no list holds has each cos_m at most m's k-th listed similarity, so every pair
    whose fused cosine exceeds the weighted sum of those is found: with lists of k = 50 that holds
    for all the pairs a threshold can accept (``pipeline bench`` measures the recall).

    Args:
        vectors: (N, D_m) embeddings per dense modality.
        lists: the modalities' top-k neighbours.
        floor: pairs below this fused cosine may be left out.
        block: query rows fused at a time; memory grows with it, not with N.
    """
    names = [m for m in DENSE_SIGNALS if m in vectors]
    w = np.array([float(weights.get(m, 1.0)) for m in names], dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fusion weights {dict(zip(names, w))} must be non-negative with a positive sum")
    w /= w.sum()
    n = len(lists[names[0]])
    k = min(k, n)
    x = {m: np.ascontiguousarray(vectors[m], dtype=np.float32) for m, wm in zip(names, w) if wm > 0}
    norms = {m: np.sqrt(pair_dots(x[m], np.arange(n), np.arange(n))) for m in x}
    kth = np.stack([np.where(np.isfinite(lists[m].sim[:, -1]), lists[m].sim[:, -1], 1.0) for m in names], 1)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        part = slice(start, min(start + block, n))
        cand, known = _listed_once([Neighbours(lists[m].idx[part], lists[m].sim[part]) for m in names])
        valid = cand >= 0
        bound = np.where(np.isnan(known), kth[part, None, :], known) @ w  # (B, C) the most each pair can reach
        valid &= bound >= floor
        for j, m in enumerate(names):
            need = valid & np.isnan(known[:, :, j])
            if m in x and need.any():
                cos = _cosines(x[m], norms[m], start, np.where(need, cand, -1))
                known[:, :, j] = np.where(need, cos, known[:, :, j])
        fused = np.nan_to_num(known) @ w
        fused[~valid | (fused < floor)] = -np.inf
        idx[part], sim[part] = _best_k(cand, fused, k)
    return Neighbours(idx, sim)


def _listed_once(lists: list[Neighbours]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's lists side by side, every posting kept once (at its first listing, -1 at the others).

    Returns:
        cand: (B, C) posting indices, C the lists' lengths summed; -1 where none.
        known: (B, C, M) each list's similarity of the pair, nan where that list does not hold it.
    """
    cand = np.concatenate([nb.idx for nb in lists], axis=1)
    b, c = cand.shape
    known = np.full((b, c, len(lists)), np.nan)
    at = 0
    for j, nb in enumerate(lists):
        known[:, at : at + nb.k, j] = np.where(nb.idx >= 0, nb.sim, np.nan)
        at += nb.k
    order = np.argsort(cand, axis=1, kind="stable")  # equal postings side by side, first listing first
    ranked = np.take_along_axis(cand, order, 1)
    starts = np.ones((b, c), dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    head = np.maximum.accumulate(np.where(starts, np.arange(c), 0), axis=1)  # where each run starts
    first = np.empty_like(order)
    np.put_along_axis(first, order, np.take_along_axis(order, head, 1), 1)  # column -> its first listing's column
    rows, cols = np.nonzero((first != np.arange(c)) & (cand >= 0))
    for j in range(len(lists)):  # a later list's similarity moves to the first listing
        v = known[rows, cols, j]
        held = ~np.isnan(v)
        known[rows[held], first[rows[held], cols[held]], j] = v[held]
    cand[rows, cols] = -1
    known[rows, cols] = np.nan
    return cand, known


def _cosines(x: np.ndarray, norms: np.ndarray, start: int, ids: np.ndarray) -> np.ndarray:
    """(B, C) cosine of row ``start + i`` of ``x`` with row ``ids[i, c]``; nan where ``ids`` is -1."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    b, c = ids.shape
    ip = np.empty((b, c), dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(ip), faiss.swig_ptr(x[start:]), faiss.swig_ptr(x), faiss.swig_ptr(ids), x.shape[1], b, c
    )
    scale = norms[start : start + b, None] * norms[np.maximum(ids, 0)]
    return np.where(ids >= 0, ip / np.maximum(scale, 1e-12), np.nan)


def _best_k(cand: np.ndarray, fused: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` best columns by ``fused`` (-inf: none), ties by posting index, as (idx, sim)."""
    by_posting = np.argsort(np.where(np.isfinite(fused), cand, np.iinfo(np.int64).max), axis=1, kind="stable")
    cand, fused = np.take_along_axis(cand, by_posting, 1), np.take_along_axis(fused, by_posting, 1)
    top = np.argsort(-fused, axis=1, kind="stable")[:, :k]
    idx, sim = np.take_along_axis(cand, top, 1), np.take_along_axis(fused, top, 1).astype(np.float32)
    if sim.shape[1] < k:  # fewer listed postings than k in all
        pad = ((0, 0), (0, k - sim.shape[1]))
        idx, sim = np.pad(idx, pad, constant_values=-1), np.pad(sim, pad, constant_values=-np.inf)
    idx[~np.isfinite(sim)] = -1
    return idx, sim


def blend(vectors: Any, nb: Neighbours, threshold: float) -> Any:
    """One round of neighbourhood blending: x_i <- normalise(sum_j s_ij x_j) over s_ij >= threshold.

    The posting's own row is always in its neighbour list (similarity 1), so an isolated posting
    keeps its vector. Works for dense arrays and sparse TF-IDF rows alike.
    """
    out = _blend_weights(nb, threshold) @ vectors
    if sp.issparse(out):
        return l2_rows(out)
    return _l2(np.asarray(out, dtype=np.float32))


def graph_blend(
    nb: Neighbours, threshold: float, block: int = 4096, threads: int = 1, rows: np.ndarray | None = None
) -> Neighbours:
    """One round of neighbourhood blending and the search after it, computed on the top-k graph.

    Blending gives u_i = sum_j w_ij x_j, so u_i . u_j = (W S W^T)_ij with S = X X^T. Here S is
    read from the top-k lists instead (symmetrised, 1 on the diagonal), which keeps every
    similarity big enough to matter, and the new cosine is P_ij / sqrt(P_ii P_jj) with
    P = W S W^T. Postings are then ranked by it, top-k per row, as a second search would.

    No vectors are needed, so a round costs a few sparse products instead of a search: blending
    TF-IDF rows fills them with their neighbours' terms, and searching with those rows costs
    many times the first search. The last product keeps only each row's best k as it goes
    (sparse_dot_topn, ``threads`` threads), so no block of P is ever held or sorted whole.

    Args:
        rows: only these rows' blended lists are wanted (the others are left empty): a catalogue
            batch reads its own postings' lists, not those of the postings around them.
    """
    from sparse_dot_topn import sp_matmul_topn

    n, k = len(nb), nb.k
    s = _similarity_graph(nb)
    w = _blend_weights(nb, threshold)
    wanted = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    # |u_i|^2 = (W S W^T)_ii, a block of rows at a time: for every row, or for those the wanted
    # rows' products reach (P_ij is non-zero only where W_j shares a column with W_i S).
    normed = wanted if rows is None else _reached(w, s, wanted)
    norm = np.ones(n, dtype=np.float32)
    for start in range(0, len(normed), block):
        part = normed[start : start + block]
        norm[part] = np.asarray((w[part] @ s).multiply(w[part]).sum(axis=1)).ravel()
    norm = np.sqrt(np.maximum(norm, 1e-12)).astype(np.float32)
    # Dividing column j of W^T by |u_j| makes each row of the product P_ij / |u_j|, whose order
    # within the row is the cosine's: the top-n product can then pick the candidates.
    wt = sp.csr_matrix(w.T @ sp.diags(1.0 / norm), dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, len(wanted), block):
        part = wanted[start : start + block]
        # threshold -inf: with sort=True and no threshold, sparse_dot_topn 1.2 drops negative entries.
        p = sp_matmul_topn(w[part] @ s, wt, top_n=min(n, k), threshold=-np.inf, sort=True, n_threads=threads)
        counts = np.diff(p.indptr)
        row = np.repeat(np.arange(p.shape[0]), counts)
        rank = np.arange(p.nnz) - np.repeat(p.indptr[:-1], counts)
        got_idx = np.full((len(part), k), -1, dtype=np.int64)
        got_sim = np.full((len(part), k), -np.inf, dtype=np.float32)
        got_idx[row, rank] = p.indices
        got_sim[row, rank] = p.data / norm[part[row]]
        idx[part], sim[part] = best_k(got_idx, got_sim, k)  # equal cosines by index, as a search ranks them
    return Neighbours(idx, sim)


def _reached(w: sp.csr_matrix, s: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """The rows j whose blended vector meets those of ``rows`` (W_j shares a column with W_i S)."""
    cols = np.unique((w[rows] @ s).indices)
    return np.union1d(rows, np.unique(sp.csc_matrix(w)[:, cols].indices))


def _similarity_graph(nb: Neighbours) -> sp.csr_matrix:
    """(N, N) S read from the top-k lists: symmetrised by the larger of s_ij and s_ji, 1 on the diagonal.

    Built straight into CSR with 32-bit indices and its diagonal set in place: over a million
    postings' lists of 50, every full copy of S costs about 0.8 GB.
    """
    n = len(nb)
    have = nb.idx >= 0
    index = np.int32 if 2 * have.sum() < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n + 1, dtype=index)
    np.cumsum(have.sum(axis=1), out=indptr[1:])
    s = sp.csr_matrix((nb.sim[have], nb.idx[have].astype(index), indptr), shape=(n, n))
    s.sort_indices()  # canonical, as the products' order of summation (and so their last bits) depends on it
    s = s.maximum(s.T).tocsr()
    row = np.repeat(np.arange(n, dtype=np.int32), np.diff(s.indptr))
    diagonal = s.indices == row
    s.data[diagonal] = 1.0
    lacking = np.ones(n, dtype=bool)
    lacking[row[diagonal]] = False
    del row
    if lacking.any():
        s = sp.csr_matrix(s + sp.diags(lacking.astype(np.float32)))
    return s


def _blend_weights(nb: Neighbours, threshold: float) -> sp.csr_matrix:
    """(N, N) sparse weights of blending: s_ij where the neighbour passes the threshold, and 1 on
    the diagonal (ties can push a posting's own row out of its top-k; it is put back)."""
    n = len(nb)
    keep = ((nb.idx >= 0) & (nb.sim >= threshold)).ravel()
    rows = np.repeat(np.arange(n), nb.k)[keep]
    w = sp.csr_matrix((nb.sim.ravel()[keep], (rows, nb.idx.ravel()[keep])), shape=(n, n), dtype=np.float32)
    return sp.csr_matrix(w + sp.diags((w.diagonal() == 0).astype(np.float32)))


def gallery_neighbours(
    gallery: Gallery,
    settings: MatchSettings,
    search: SearchConfig = EXACT,
    blend_method: str = "graph",
    cache: NeighbourCache | None = None,
    timings: dict[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
    keep: Collection[str] | None = None,
    observe: Callable[[str, Neighbours], None] | None = None,
) -> dict[str, Neighbours]:
    """Neighbours of every signal in the gallery, plus ``concat`` and ``blend`` where they apply.

    Args:
        search: the index, its parameters and ``k``.
        blend_method: ``graph`` (:func:`graph_blend`: no second search) or ``exact`` (blend the
            vectors with :func:`blend` and search again).
        cache: kept across calls with the same gallery: base signals and ``concat`` are searched
            once, so trying several blending settings only re-runs the blend.
        timings: when given, seconds per step are added to it (``search_<signal>``, ``fuse_concat``,
            ``blend``).
        floors: per signal, the lowest similarity the decision can use: ``concat`` then scores
            only the listed pairs above its floor. None keeps every top-k list whole, as tuning,
            blending and the pair model need. Cached entries do not record floors: give one
            cache one kind of call.
        keep: the signals whose lists are returned (default: every one). Without a ``cache``, the
            others are let go as soon as fusion and blending are done with them: over a million
            postings each list of 50 holds 0.6 GB.
        observe: called with each signal's name and lists as they are made (``pipeline bench``
            keeps the rows whose recall it checks).
    """
    if blend_method not in BLEND_METHODS:
        raise ValueError(f"blend_method {blend_method!r} unknown; choose one of {BLEND_METHODS}")
    lists = _GalleryLists(gallery, search, cache, {} if timings is None else timings, observe)
    if cache is None and keep is not None:  # nobody else reads the entries: lists not kept can go
        lists.unkept = (set(gallery.vectors) | {"concat"}) - set(keep) - {settings.blend_signal}
    lists.search_each(lists.dense)  # the dense signals first: once fused, their lists can go
    lists.expand(lists.dense)
    if len(lists.dense) >= 2:
        lists.fuse(settings.fusion_weights, dict(floors or {}).get("concat", -np.inf))
    lists.let_go()
    lists.search_each([name for name in gallery.vectors if name not in lists.dense])
    lists.expand(["phash"] if "phash" in lists.out else [])
    lists.let_go()
    if settings.blend_rounds > 0 and settings.blend_signal is not None and not math.isinf(settings.blend_threshold):
        lists.blend(settings, blend_method)
    return {name: v for name, v in lists.out.items() if keep is None or name in keep}


class _GalleryLists:
    """The lists :func:`gallery_neighbours` builds for one gallery, through its cache."""

    def __init__(
        self,
        gallery: Gallery,
        search: SearchConfig,
        cache: NeighbourCache | None,
        timings: dict[str, float],
        observe: Callable[[str, Neighbours], None] | None,
    ):
        self.search, self.timings = search, timings
        self.cache = NeighbourCache() if cache is None else cache
        self.observe = observe or (lambda name, nb: None)
        self.vectors = dict(gallery.vectors)
        self.dense = [n for n in DENSE_SIGNALS if n in self.vectors]
        self.out: dict[str, Neighbours] = {}
        self.keys: dict[str, Hashable] = {name: name for name in self.vectors}
        self.unkept: set[str] = set()

    def let_go(self) -> None:
        """Lists nothing reads any more go before the next searches add theirs."""
        for name in self.unkept & set(self.out):
            del self.out[name]
            self.cache.entries.pop(self.keys[name])

    def search_each(self, names: list[str]) -> None:
        for name in names:
            entry = self.cache.entry(name)
            if entry.neighbours is None:
                with _timed(self.timings, f"search_{name}"):
                    entry.neighbours = search(name, self.vectors[name], self.search.k, self.search)
            self.out[name] = entry.neighbours
            self.observe(name, self.out[name])

    def expand(self, names: list[str]) -> None:
        """Approximate lists of ``names`` pooled and grown (:func:`expand_lists`), once per cache.

        Dense lists that ``index: auto`` chose are left alone: auto takes an approximate index only
        where its measured recall above the floors reaches ``search.required_recall``.
        """
        if self.search.expand_rounds == 0 or not any(self.out[n].approximate for n in names):
            return
        if self.search.index == "auto" and any(n in self.dense for n in names):
            return
        entries = [self.cache.entry(self.keys[n]) for n in names]
        if not all(e.expanded for e in entries):
            with _timed(self.timings, "expand_" + "_".join(names)):
                expand_lists(
                    self.vectors,
                    {n: self.out[n] for n in names},
                    self.search.expand_rounds,
                    self.search.expand_sources,
                    self.search.n_threads,
                    width=self.search.expand_width,
                )
            for entry in entries:
                entry.expanded = True
        for name in names:
            self.observe(name, self.out[name])

    def fuse(self, fusion_weights: Mapping[str, float], floor: float) -> None:
        weights = {n: float(fusion_weights.get(n, 1.0)) for n in self.dense}
        self.keys["concat"] = ("concat", tuple(weights.items()))
        entry = self.cache.entry(self.keys["concat"])
        if entry.neighbours is None:
            with _timed(self.timings, "fuse_concat"), faiss_threads(self.search.n_threads):
                entry.neighbours = fused_neighbours(self.vectors, self.out, weights, self.search.k, floor)
        self.out["concat"] = entry.neighbours
        self.observe("concat", self.out["concat"])
        self.vectors["concat"] = _LazyConcat(self.vectors, weights)

    def blend(self, settings: MatchSettings, method: str) -> None:
        target = settings.blend_signal
        if target not in self.keys:
            raise ValueError(f"blend_signal {target!r} is not among the gallery's signals {sorted(self.keys)}")
        key = (method, settings.blend_rounds, settings.blend_threshold)
        blends = self.cache.entry(self.keys[target]).blends
        if key not in blends:
            with _timed(self.timings, "blend"):
                blends[key] = _blended(self.vectors, target, self.out[target], settings, method, self.search)
        self.out["blend"] = blends[key]
        self.observe("blend", self.out["blend"])


class _LazyConcat:
    """The concatenation, built only when the exact blending of ``concat`` needs its vectors."""

    def __init__(self, vectors: Mapping[str, Any], weights: Mapping[str, float]):
        self.vectors, self.weights, self._x = vectors, weights, None

    def array(self) -> np.ndarray:
        if self._x is None:
            self._x = concat_embeddings(self.vectors, self.weights)
        return self._x


def _blended(
    vectors: Mapping[str, Any],
    target: str,
    nb: Neighbours,
    settings: MatchSettings,
    method: str,
    search_config: SearchConfig,
) -> Neighbours:
    if method == "graph":
        for _ in range(settings.blend_rounds):
            nb = graph_blend(nb, settings.blend_threshold, threads=search_config.n_threads)
        return nb
    x = vectors[target].array() if target == "concat" else vectors[target]
    for _ in range(settings.blend_rounds):
        x = blend(x, nb, settings.blend_threshold)
        nb = search(target, x, search_config.k, search_config)
    return nb


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    yield
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
