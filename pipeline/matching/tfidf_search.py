"""TF-IDF top-k search that never multiplies the commonest terms' posting lists.

The exact search (:func:`pipeline.matching.neighbours.sparse_knn`) costs the sum, over each
query's terms, of their document frequencies, and on titles the few hundred commonest character
n-grams (`` a``, ``an``, ``in`` ...) make most of it: on 70,000 bench titles the top 512 of 17,476
terms hold 91% of the multiply-adds of ``X Xᵀ``, and 22% of a row's squared norm.

The split search keeps the cosine exact and only the candidate generation approximate:

    cos(q, d) = <q_R, d_R> + <q_F, d_F>

with F the ``dense_terms`` commonest terms held as a dense (N, |F|) float32 block, and R the rest,
sparse.

1. Candidates: each row's ``candidates`` best by the rare part, with sparse_dot_topn's top-n
   product over R alone (which also returns <q_R, d_R> of each candidate, exactly).
2. Rescoring: <q_F, d_F> of each candidate pair with FAISS's threaded
   ``fvec_inner_products_by_idx`` on the dense block, added to the rare part.
3. The best ``k`` by the full cosine, best first, ties by index.

A pair is missed only when it is not among the row's best ``candidates`` by the rare part, so
the search is exact for rows whose ``candidates``-th rare score plus the most the frequent part
can add (``|q_F|`` times the largest ``|d_F|``) is below the k-th full cosine found;
:func:`split_stats` counts them. Rows with fewer than k rare candidates (short titles of common
words) are searched exactly, over every term.

The sketch search (:func:`sketch_knn`, torch) takes its candidates from a dense bfloat16 sketch
instead and computes their cosines with sparse_dot_topn restricted to them. ``auto``
(:func:`choose_tfidf_search`) takes the exact or the split search, whichever its multiply-adds
and a timed probe predict to be cheaper.

The cosines are sums in another order than sparse_dot_topn's, so they can differ from the exact
search's in the 7th decimal even where the neighbours are the same.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipeline.matching.neighbours import Neighbours, faiss_threads
from pipeline.matching.ranking import best_k

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class SplitSettings:
    """Settings of :func:`split_knn`.

    Attributes:
        dense_terms: the commonest terms, held densely (the dense block is N x this float32). More
            of them make the rare product cheaper and its candidates worse: on 20,000 bench titles
            256 / 384 / 512 left 0.20 / 0.13 / 0.09 of the exact product's multiply-adds, and with
            150 candidates kept 0.9969 / 0.9904 / 0.97 of the exact pairs above 0.4 (docs/speed.md).
        candidates: rare-part candidates per row (rescored exactly). On the dev titles 150 lost
            0.0004 out-of-fold F1 against the exact search, 300 lost none (docs/speed.md).
        rare_floor: pairs whose rare-term cosine is at most this are not candidates. The top-n
            selection then ranks far fewer products; a row left with fewer than k candidates is
            searched exactly. 0.2 kept exact search's F1 at 70,000 bench titles and took the
            search from 29 to 20 s (docs/speed.md).
        block: query rows per sparse product.
    """

    dense_terms: int = 384
    candidates: int = 300
    rare_floor: float = 0.0
    block: int = 8192


@dataclass
class SplitMatrix:
    """A TF-IDF matrix split by document frequency into a sparse rare part and a dense frequent part.

    Attributes:
        rare: (N, V) CSR, the rows with the frequent columns removed (zeroed and dropped).
        frequent: (N, F) float32, C-contiguous, the frequent columns.
        columns: (F,) the frequent columns' indices in the original matrix.
    """

    rare: sp.csr_matrix
    frequent: np.ndarray
    columns: np.ndarray


def split_columns(x: sp.csr_matrix, dense_terms: int) -> SplitMatrix:
    """Split ``x``'s columns into the ``dense_terms`` commonest (dense) and the rest (sparse)."""
    n, v = x.shape
    df = np.bincount(x.indices, minlength=v)
    order = np.argsort(-df, kind="stable")
    f = int(min(dense_terms, (df > 0).sum()))
    columns = np.sort(order[:f])
    is_frequent = np.zeros(v, dtype=bool)
    is_frequent[columns] = True
    keep = ~is_frequent[x.indices]
    row = np.repeat(np.arange(n), np.diff(x.indptr))
    indptr = np.zeros(n + 1, dtype=x.indptr.dtype)
    np.cumsum(np.bincount(row[keep], minlength=n), out=indptr[1:])
    rare = sp.csr_matrix((x.data[keep], x.indices[keep], indptr), shape=x.shape)
    frequent = np.ascontiguousarray(x[:, columns].toarray(), dtype=np.float32) if f else np.zeros((n, 0), np.float32)
    return SplitMatrix(rare, frequent, columns)


def split_knn(
    x: sp.spmatrix, k: int = 50, threads: int = 1, settings: SplitSettings | None = None, stats: dict | None = None
) -> Neighbours:
    """Top-k cosine neighbours of L2-normalised sparse rows, candidates from the rare terms, rescored exactly.

    Args:
        x: (N, V) rows of unit L2 norm, or zero (such a row has no neighbour).
        threads: sparse_dot_topn's and FAISS's threads.
        stats: when given, filled with the split's figures (frequent terms, the rare part's share
            of the exact product's multiply-adds, rows searched densely).
    """
    from sparse_dot_topn import sp_matmul_topn

    settings = settings or SplitSettings()
    x = sp.csr_matrix(x, dtype=np.float32)
    x.sort_indices()
    n = x.shape[0]
    k = min(k, n)
    m = min(n, max(k, settings.candidates))
    s = split_columns(x, settings.dense_terms)
    rare_t = sp.csr_matrix(s.rare.T)
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    lonely = []
    rare_last = np.zeros(n, dtype=np.float32)  # the most an unlisted pair's rare part can be
    with faiss_threads(threads):
        for start in range(0, n, settings.block):
            stop = min(n, start + settings.block)
            idx[start:stop], sim[start:stop], counts, rare_last[start:stop] = _split_rows(
                s, rare_t, start, stop, m, k, threads, settings.rare_floor
            )
            lonely.append(start + np.nonzero(counts < k)[0])
    lonely = np.concatenate(lonely) if lonely else np.empty(0, np.int64)
    # Rows with fewer than k rare candidates: their other neighbours share frequent terms only.
    # Search those rows exactly (all of x, a few rows), so a short title of common words still
    # gets its neighbours.
    empty = np.asarray(x.getnnz(axis=1) == 0)
    lonely = lonely[~empty[lonely]]
    if len(lonely):
        exact = sp_matmul_topn(x[lonely], sp.csr_matrix(x.T), top_n=k, threshold=0.0, sort=True, n_threads=threads)
        counts = np.diff(exact.indptr)
        row = np.repeat(np.arange(len(lonely)), counts)
        rank = np.arange(exact.nnz) - np.repeat(exact.indptr[:-1], counts)
        idx[lonely], sim[lonely] = -1, -np.inf
        idx[lonely[row], rank], sim[lonely[row], rank] = exact.indices, exact.data
    if stats is not None:
        stats.update(split_stats(x, s, rare_last, sim, len(lonely), m))
    return Neighbours(idx, sim)


def _split_rows(
    s: SplitMatrix,
    rare_t: sp.csr_matrix,
    start: int,
    stop: int,
    m: int,
    k: int,
    threads: int,
    rare_floor: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows start..stop of the split search: each row's ``m`` best by the rare part (above
    ``rare_floor``), completed with the frequent part, the best ``k`` kept.

    Returns:
        (idx, sim) each (B, k); (B,) rare candidates found per row; (B,) the m-th rare score
        (``rare_floor`` where fewer were found), the most an unlisted pair's rare part can be.
    """
    from sparse_dot_topn import sp_matmul_topn

    top = sp_matmul_topn(s.rare[start:stop], rare_t, top_n=m, threshold=rare_floor, sort=True, n_threads=threads)
    b = top.shape[0]
    counts = np.diff(top.indptr)
    row = np.repeat(np.arange(b), counts)
    rank = np.arange(top.nnz) - np.repeat(top.indptr[:-1], counts)
    cand = np.full((b, m), -1, dtype=np.int64)
    rare = np.zeros((b, m), dtype=np.float32)
    cand[row, rank], rare[row, rank] = top.indices, top.data
    full = rare + _dense_part(s.frequent, start, cand) if s.frequent.shape[1] else rare
    full[cand < 0] = -np.inf
    idx, sim = best_k(cand, full, k)
    return idx, sim, counts, np.where(counts == m, rare[:, m - 1], rare_floor)


def _dense_part(frequent: np.ndarray, start: int, cand: np.ndarray) -> np.ndarray:
    """(B, M) <q_F, d_F> of rows ``start + i`` with rows ``cand[i, j]`` (0 where -1)."""
    import faiss

    cand = np.ascontiguousarray(cand, dtype=np.int64)
    b, m = cand.shape
    ip = np.empty((b, m), dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(ip),
        faiss.swig_ptr(frequent[start:]),
        faiss.swig_ptr(frequent),
        faiss.swig_ptr(cand),
        frequent.shape[1],
        b,
        m,
    )
    ip[cand < 0] = 0.0
    return ip


def split_stats(
    x: sp.csr_matrix,
    s: SplitMatrix,
    rare_last: np.ndarray,
    sim: np.ndarray,
    searched_exactly: int,
    m: int,
    floors: tuple[float, ...] = (0.3, 0.5, 0.6),
) -> dict:
    """The split's figures: frequent terms, the rare part's share of the exact product's
    multiply-adds, and the share of rows provably exact (unlisted pairs cannot beat the k-th listed,
    or reach each floor: rare part at most the ``m``-th candidate's, frequent part at most
    |q_F| max|d_F|)."""
    df = np.bincount(x.indices, minlength=x.shape[1])
    rare_df = np.bincount(s.rare.indices, minlength=x.shape[1])
    qf = np.sqrt((s.frequent.astype(np.float64) ** 2).sum(1))
    bound = rare_last + qf * (qf.max() if len(qf) else 0.0)
    kth = np.where(np.isfinite(sim[:, -1]), sim[:, -1], 0.0)
    return {
        "frequent_terms": int(s.frequent.shape[1]),
        "terms": int(x.shape[1]),
        "candidates": int(m),
        "rare_madds_share": round(float(rare_df[s.rare.indices].sum() / max(1, df[x.indices].sum())), 4),
        "frequent_sq_norm_mean": round(float((qf**2).mean()), 4),
        "rows_searched_exactly": int(searched_exactly),
        "rows_certified_top_k": round(float((bound < kth).mean()), 4),
        **{f"rows_certified_above_{f}": round(float((bound < f).mean()), 4) for f in floors},
    }


def sketch(x: sp.csr_matrix, exact_terms: int = 128, hashed: int = 256, seed: int = 0) -> np.ndarray:
    """(N, exact_terms + hashed) float32 dense sketch whose inner products estimate the cosines.

    The ``exact_terms`` commonest terms keep a column each (their part of every inner product is
    exact); the others are count-sketched into ``hashed`` columns (each term to one column with a
    random sign), which estimates their part without bias, with an error of about
    |q_R| |d_R| / sqrt(hashed).
    """
    n, v = x.shape
    df = np.bincount(x.indices, minlength=v)
    order = np.argsort(-df, kind="stable")
    rng = np.random.default_rng(seed)
    column = np.empty(v, dtype=np.int64)
    column[order[:exact_terms]] = np.arange(min(exact_terms, v))
    rest = order[exact_terms:]
    column[rest] = exact_terms + rng.integers(0, hashed, size=len(rest))
    sign = np.where(rng.random(v) < 0.5, -1.0, 1.0).astype(np.float32)
    sign[order[:exact_terms]] = 1.0
    h = sp.csr_matrix((sign, (np.arange(v), column)), shape=(v, exact_terms + hashed), dtype=np.float32)
    return np.ascontiguousarray((x @ h).toarray(), dtype=np.float32)


def sketch_knn(
    x: sp.spmatrix,
    k: int = 50,
    threads: int = 1,
    exact_terms: int = 128,
    hashed: int = 256,
    candidates: int = 100,
    query_block: int = 256,
    stats: dict | None = None,
) -> Neighbours:
    """Top-k cosine of L2-normalised sparse rows: candidates from a dense sketch, scored by the
    exact sparse product restricted to them.

    1. Each row's ``candidates`` best by the sketch's bfloat16 inner products
       (:func:`pipeline.matching.gemm_search.bf16_shortlists`).
    2. Rows are ordered so that rows with the same best candidates sit together, and cut into
       blocks of ``query_block``; each block is multiplied (sparse_dot_topn) with the union of its
       rows' candidates only, keeping the top k.

    3. Each list is merged with the pairs that list its row (:func:`merge_reverse`).

    The cosines are the exact search's to the bit (sparse_dot_topn sums a pair over the query's
    terms in the same order whatever other columns the product has); a pair is missed only when
    the sketch did not put it among either row's ``candidates`` (nor among their blocks').
    """
    from sparse_dot_topn import sp_matmul_topn

    from pipeline.matching.gemm_search import bf16_shortlists

    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[0]
    k = min(k, n)
    m = min(n, max(k, candidates))
    s = sketch(x, exact_terms, hashed)
    cand = np.empty((n, m), dtype=np.int64)
    for start, stop, c in bf16_shortlists(s, m, threads):
        cand[start:stop] = c
    del s
    # Rows that share their best candidates go in one block: the union of their lists stays small.
    order = np.lexsort((np.arange(n), np.sort(cand, axis=1)[:, 0]))
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    union_sizes = []
    for start in range(0, n, query_block):
        rows = order[start : start + query_block]
        cols = np.unique(cand[rows])
        cols = cols[cols >= 0]
        union_sizes.append(len(cols))
        top = sp_matmul_topn(x[rows], sp.csr_matrix(x[cols].T), top_n=k, threshold=0.0, sort=True, n_threads=threads)
        counts = np.diff(top.indptr)
        r = np.repeat(rows, counts)
        rank = np.arange(top.nnz) - np.repeat(top.indptr[:-1], counts)
        idx[r, rank], sim[r, rank] = cols[top.indices], top.data
    nb = merge_reverse(Neighbours(idx, sim))
    if stats is not None:
        stats.update(
            {
                "sketch_dims": exact_terms + hashed,
                "candidates": m,
                "union_per_block_mean": round(float(np.mean(union_sizes)), 1),
                "restricted_share_of_rows": round(float(np.mean(union_sizes)) / n, 4),
            }
        )
    return nb


def tfidf_knn(
    x: sp.spmatrix,
    k: int,
    threads: int,
    method: str = "exact",
    candidates: int = 300,
    dense_terms: int = 384,
    rare_floor: float = 0.0,
) -> Neighbours:
    """Top-k TF-IDF neighbours by ``method``: ``exact`` (sparse_dot_topn over every term), ``split``
    (:func:`split_knn` with ``dense_terms``, ``candidates`` and ``rare_floor``), ``sketch``
    (:func:`sketch_knn`) or ``auto`` (exact or split, the cheaper by predicted seconds,
    :func:`choose_tfidf_search`)."""
    from pipeline.matching.neighbours import sparse_knn

    split = SplitSettings(dense_terms=dense_terms, candidates=candidates, rare_floor=rare_floor)
    if method == "auto":
        method = choose_tfidf_search(x, k, threads, split)["method"]
    if method == "exact":
        return sparse_knn(x, k, threads=threads)
    if method == "split":
        return split_knn(x, k, threads, split)
    if method == "sketch":
        return sketch_knn(x, k, threads, candidates=candidates)
    raise ValueError(f"unknown TF-IDF search {method!r}")


# Galleries whose exact TF-IDF search is predicted under this many seconds are searched exactly.
EXACT_BELOW_S = 2.0


def choose_tfidf_search(
    x: sp.spmatrix, k: int, threads: int, split: SplitSettings | None = None, probe_rows: int = 512
) -> dict:
    """Predicted seconds of the exact and the split search; the cheaper is taken and logged.

    The exact search costs its multiply-adds: the sum over terms of their document frequency
    squared, counted exactly, times the seconds per multiply-add of a timed probe (``probe_rows``
    evenly spaced rows' exact product). The split is timed on ``probe_rows`` rows of its own
    (:func:`_probe_split`): its product's multiply-adds (logged) are a fraction of the exact ones,
    but selecting and completing its candidates cost as much again on 20,000 bench titles.
    Galleries whose exact search is predicted under ``EXACT_BELOW_S`` are searched exactly.
    """
    from sparse_dot_topn import sp_matmul_topn

    split = split or SplitSettings()
    t0 = time.perf_counter()
    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[0]
    df = np.bincount(x.indices, minlength=x.shape[1]).astype(np.float64)
    squares = np.sort(df[df > 0] ** 2)[::-1]  # the terms in use: a catalogue's rows are 2**18 columns wider
    madds = {"exact": float(squares.sum()), "split": float(squares[split.dense_terms :].sum())}
    probe = x[np.arange(0, n, max(1, n // probe_rows))[:probe_rows]]
    xt = sp.csr_matrix(x.T)
    t1 = time.perf_counter()
    sp_matmul_topn(probe, xt, top_n=min(k, n), threshold=0.0, sort=True, n_threads=threads)
    per_madd = (time.perf_counter() - t1) / max(1.0, float(df[probe.indices].sum()))
    del xt
    predicted = {"exact": madds["exact"] * per_madd}
    if predicted["exact"] > EXACT_BELOW_S:
        predicted["split"] = _probe_split(x, k, threads, split, probe_rows)
    method = min(predicted, key=predicted.__getitem__)
    out = {
        "method": method,
        "predicted_s": {key: round(v, 2) for key, v in predicted.items()},
        "madds": madds,
        "s_per_madd": float(f"{per_madd:.4g}"),
        "probe_s": round(time.perf_counter() - t0, 3),
    }
    log.info("[search] TF-IDF N=%d: %s", n, out)
    return out


def _probe_split(x: sp.csr_matrix, k: int, threads: int, split: SplitSettings, rows: int) -> float:
    """Predicted seconds of :func:`split_knn` on ``x``: the split itself, timed, and ``rows`` rows of
    its search from the middle of the gallery, timed and scaled to N (rows searched exactly for
    want of rare candidates are not counted)."""
    n = x.shape[0]
    x.sort_indices()
    t0 = time.perf_counter()
    s = split_columns(x, split.dense_terms)
    rare_t = sp.csr_matrix(s.rare.T)
    build = time.perf_counter() - t0
    start = max(0, (n - rows) // 2)
    stop = min(n, start + rows)
    t0 = time.perf_counter()
    with faiss_threads(threads):
        _split_rows(s, rare_t, start, stop, min(n, max(k, split.candidates)), min(k, n), threads, split.rare_floor)
    return build + (time.perf_counter() - t0) * n / (stop - start)


def merge_reverse(nb: Neighbours) -> Neighbours:
    """Each row's list merged with the pairs that list it (j lists i with s: i may list j with s),
    the best k kept, best first, equal scores by index.

    An approximate search misses a pair from one side more often than from both; the cosine is
    symmetric (and sparse_dot_topn sums a pair's products in column order from either side, so
    the value is the same to the bit), so a pair found by either row can stand in both lists.
    """
    n, k = nb.idx.shape
    have = nb.idx >= 0
    src = np.repeat(np.arange(n), k)[have.ravel()]
    dst, sim = nb.idx[have], nb.sim[have]
    rows, cols, sims = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([sim, sim])
    order = np.lexsort((cols, rows))  # each (row, col) once
    rows, cols, sims = rows[order], cols[order], sims[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    rows, cols, sims = rows[first], cols[first], sims[first]
    order = np.lexsort((cols, -sims, rows))  # by row, best first, ties by index
    rows, cols, sims = rows[order], cols[order], sims[order]
    start = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - start[rows]
    keep = rank < k
    idx = np.full((n, k), -1, dtype=np.int64)
    out = np.full((n, k), -np.inf, dtype=np.float32)
    idx[rows[keep], rank[keep]], out[rows[keep], rank[keep]] = cols[keep], sims[keep]
    return Neighbours(idx, out)
