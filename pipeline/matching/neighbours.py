"""Top-k neighbour search for every signal, in O(N·k) memory.

Each search returns a :class:`Neighbours` pair of (N, k) arrays, the layout the matching engine works
on. No function here builds an N×N matrix: dense queries go to FAISS in batches, and the sparse
TF-IDF search keeps only the top-k of each row (sparse_dot_topn). faiss and sparse_dot_topn are
imported by the searches that use them; torch is never needed.

Approximate dense indexes (IVF, HNSW, IVF-PQ) spend less than the exact one; their ``nprobe`` /
``efSearch`` are set in :class:`SearchConfig` and their recall is measured by ``pipeline bench``.
``index: auto`` takes the index that timed probes on the gallery predict to be cheapest on the
machine that runs (:mod:`pipeline.matching.index_choice`); the bfloat16 exact search lives in
:mod:`pipeline.matching.gemm_search` and the fast TF-IDF searches in :mod:`pipeline.matching.tfidf_search`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from pipeline.settings import require, require_positive

log = logging.getLogger("pipeline")

PHASH_BITS = 64
INDEXES = ("auto", "flat", "bf16", "ivf", "hnsw", "ivfpq")
TFIDF_SEARCHES = ("auto", "exact", "sketch", "split")
# Phash codes are searched exactly up to this many rows (64-bit popcounts are cheap), and with
# binary inverted lists above it when the dense index is approximate.
PHASH_EXACT_ROWS = 200_000
# Automatic inverted lists stop growing here: k-means on 64 vectors per list costs 64·nlist²·D
# (10 iterations of 4,000 lists at a million postings would be about 5e12 flops per modality).
MAX_AUTO_NLIST = 1024


@dataclass
class Neighbours:
    """Top-k neighbours of each query, best first.

    Attributes:
        idx: (N, k) int64 database indices; -1 where fewer than k exist.
        sim: (N, k) float32 similarities, bigger is closer; -inf where ``idx`` is -1.
        approximate: an approximate index made the lists (IVF, IVF-PQ, HNSW, binary IVF): they
            may miss pairs that exact search lists (:mod:`pipeline.matching.expansion` recovers most).
    """

    idx: np.ndarray
    sim: np.ndarray
    approximate: bool = False

    def __post_init__(self) -> None:
        if self.idx.shape != self.sim.shape or self.idx.ndim != 2:
            raise ValueError(f"idx {self.idx.shape} and sim {self.sim.shape} must be equal (N, k) arrays")

    @property
    def k(self) -> int:
        return self.idx.shape[1]

    def __len__(self) -> int:
        return self.idx.shape[0]


@dataclass(frozen=True)
class SearchConfig:
    """How the neighbour searches run (the ``search`` section of a run's config).

    Attributes:
        k: neighbours listed per posting and signal.
        index: ``flat`` (exact), ``bf16`` (exact: bfloat16 products shortlist, float32 rescores;
            needs torch), ``ivf`` (inverted lists of full vectors), ``hnsw`` (graph), ``ivfpq``
            (inverted lists of product-quantised codes, shortlisting ``refine·k`` per query,
            rescored exactly; for millions of postings) or ``auto`` (exact on GPUs; on CPUs the
            index timed probes predict to be cheapest among those whose measured recall above the
            floors reaches ``required_recall``, logged with its figures).
        required_recall: the recall above the floors an approximate index must have been measured
            to keep (bench's table in :mod:`pipeline.matching.index_choice`) for ``auto`` to take it.
        reduced_dims: ``bf16`` shortlists from this many principal components (0: all of them),
            ``reduced_shortlist`` rows per query, rescored with the full vectors.
        reduced_shortlist: rows per query shortlisted from the reduced vectors.
        tfidf_search: ``exact`` (sparse_dot_topn over every term), ``split`` (candidates from the
            product of all but the ``tfidf_dense_terms`` commonest terms, rescored exactly),
            ``sketch`` (candidates from a dense bfloat16 sketch, exact cosines of those pairs; needs
            torch) or ``auto`` (exact or split, the cheaper by predicted seconds, logged).
        tfidf_candidates: candidates per row of the ``split`` and ``sketch`` TF-IDF searches: 400 gave
            exact search's F1 at 70,000 bench titles, 300 lost 0.0001 (docs/speed.md).
        tfidf_dense_terms: the commonest terms ``split`` leaves out of its sparse product.
        tfidf_rare_floor: ``split`` takes as candidates only pairs whose cosine over the other
            terms exceeds this (a row left with fewer than k is searched exactly).
        nprobe: inverted lists visited per query (ivf, ivfpq).
        ef_search: HNSW's candidate list per query: the smallest whose recall of the bench's
            candidate pairs above the floors reached 0.99 (docs/speed.md).
        hnsw_fp16: HNSW stores float16 vectors (half the memory traffic of a graph walk); the
            listed pairs are then rescored with the float32 vectors.
        nlist: inverted lists; 0 = 4·sqrt(N), at most ``MAX_AUTO_NLIST``.
        pq_m: sub-quantisers of IVF-PQ (4 bits each on CPUs, 8 on GPUs); 0 = D / 8.
        refine: IVF-PQ shortlist per query, in multiples of k. Expansion (below) recovers what a
            shortlist of k misses: at 400,000 bench postings, 0.986 of the pairs above the floors
            after expansion with 1 or 2, the searches taking 43.5 s against 58.5 s (docs/speed.md).
        expand_rounds: rounds of :func:`pipeline.matching.expansion.expand_lists` over approximate
            lists (exact ones, and those ``auto`` chose, are left alone): each pools the signals'
            lists and offers every row the rows listing it and its ``expand_sources`` nearest
            neighbours' lists, scored exactly. Two rounds took the bench's IVF-PQ lists from 0.54
            to 0.99 of the pairs above the floors at 200,000 postings, and to 0.994 at a million
            (docs/speed.md).
        expand_sources: neighbours whose lists each row is offered in an expansion round.
        expand_width: the best entries of each of those lists that are offered (at most k): half of
            each list (25 of 50) kept the bench's recall above the floors at 200,000 postings
            (0.9921 against 0.9925 with whole lists) in three quarters of the time (docs/speed.md).
        threads: OpenMP threads of FAISS and sparse_dot_topn; 0 = the bound the stage set (the run's
            ``threads``, through ``OMP_NUM_THREADS``), else every core this process may use.
        batch_size: queries per FAISS call.
        floors: without the pair model, score the fused image+text cosine only on listed pairs
            above the tuned rule's thresholds (it cannot decide below them).
        gpu: use FAISS's GPUs when the build has them (faiss-gpu) and one is present.
    """

    k: int = 50
    index: str = "auto"
    required_recall: float = 0.99
    reduced_dims: int = 0
    reduced_shortlist: int = 100
    tfidf_search: str = "auto"
    tfidf_candidates: int = 400
    tfidf_dense_terms: int = 384
    tfidf_rare_floor: float = 0.1
    nprobe: int = 16
    ef_search: int = 224
    hnsw_fp16: bool = True
    nlist: int = 0
    pq_m: int = 0
    refine: int = 1
    expand_rounds: int = 2
    expand_sources: int = 5
    expand_width: int = 25
    threads: int = 0
    batch_size: int = 4096
    floors: bool = True
    gpu: bool = True

    def __post_init__(self) -> None:
        require(self.index in INDEXES, "index", f"one of {list(INDEXES)}", self.index)
        require(
            self.tfidf_search in TFIDF_SEARCHES, "tfidf_search", f"one of {list(TFIDF_SEARCHES)}", self.tfidf_search
        )
        require(0.0 < self.required_recall <= 1.0, "required_recall", "in (0, 1]", self.required_recall)
        require(self.k >= 2, "k", ">= 2 (a posting and one neighbour)", self.k)
        require_positive(self, "batch_size", "nprobe", "ef_search", "refine", "reduced_shortlist", "tfidf_candidates")
        require(self.expand_rounds >= 0, "expand_rounds", ">= 0 (0 = off)", self.expand_rounds)
        require_positive(self, "expand_sources", "expand_width")
        require(self.tfidf_dense_terms >= 0, "tfidf_dense_terms", ">= 0", self.tfidf_dense_terms)
        require(0.0 <= self.tfidf_rare_floor < 1.0, "tfidf_rare_floor", "in [0, 1)", self.tfidf_rare_floor)
        for key in ("nlist", "pq_m", "threads", "reduced_dims"):
            require(getattr(self, key) >= 0, key, ">= 0 (0 = automatic)", getattr(self, key))

    @property
    def n_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        bound = os.environ.get("OMP_NUM_THREADS", "")
        return int(bound) if bound.isdigit() and int(bound) > 0 else len(os.sched_getaffinity(0))


# What a search without settings does: exact.
EXACT = SearchConfig(index="flat")


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Bound FAISS's OpenMP threads to ``n`` for the block, then restore the previous bound.

    On a shared machine OpenMP threads that outnumber the free cores spin at each barrier: FAISS's
    search can run ten times slower with 2 threads than with 1 on a loaded 2-core machine (docs/speed.md).
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search(name: str, vectors: Any, k: int, settings: SearchConfig = EXACT) -> Neighbours:
    """Top-k neighbours of every gallery row for one signal, dispatched on the vectors' kind."""
    if name == "phash":
        approximate = settings.index not in ("flat", "bf16") and len(vectors) > PHASH_EXACT_ROWS
        # Hamming k-means cells are coarse: twice the dense nprobe (32 of 76 lists kept 99.8% of
        # the pairs within 9 bits on 3,000 synthetic hashes, 16 kept 98.5%).
        return hamming_knn(vectors, k, threads=settings.n_threads, nprobe=2 * settings.nprobe if approximate else 0)
    if sp.issparse(vectors):
        from pipeline.matching.tfidf_search import tfidf_knn

        return tfidf_knn(
            vectors,
            k,
            settings.n_threads,
            settings.tfidf_search,
            settings.tfidf_candidates,
            settings.tfidf_dense_terms,
            settings.tfidf_rare_floor,
        )
    return dense_knn(vectors, k, settings)


def dense_knn(x: np.ndarray, k: int = 50, settings: SearchConfig = EXACT, progress: bool = False) -> Neighbours:
    """Inner-product top-k of each row of ``x`` among all rows (itself included).

    Args:
        x: (N, D) L2-normalised embeddings; inner product is then cosine similarity.
        k: neighbours per query, capped at N.
        settings: the index and its parameters (default: exact).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    k = min(k, n)
    if settings.index == "auto":
        settings = replace(settings, index=_auto_index(x, k, settings))
    if settings.index == "bf16":
        from pipeline.matching.gemm_search import bf16_knn

        if 0 < settings.reduced_dims < x.shape[1]:
            margin = max(0, settings.reduced_shortlist - k)
            return bf16_knn(x, k, threads=settings.n_threads, dims=settings.reduced_dims, margin=margin)
        return bf16_knn(x, k, threads=settings.n_threads)
    shortlist = min(n, k * settings.refine) if settings.index == "ivfpq" else k
    # PQ and float16 scores are approximate: each batch's shortlist is rescored with the vectors
    # and its best k kept, so no (N, shortlist) array is ever held.
    rescored = settings.index == "ivfpq" or (settings.index == "hnsw" and settings.hnsw_fp16)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    with faiss_threads(settings.n_threads):
        index = build_index(x, settings)
        step = settings.batch_size
        for start in tqdm(range(0, n, step), desc="faiss search", disable=not progress, leave=False):
            stop = min(start + step, n)
            part_sim, part_idx = index.search(x[start:stop], shortlist)
            if rescored:
                part_idx, part_sim = rescore(x, part_idx, k, start)
            sim[start:stop], idx[start:stop] = part_sim, part_idx
        del index
    sim[idx < 0] = -np.inf
    return Neighbours(idx, sim, approximate=settings.index in ("ivf", "ivfpq", "hnsw"))


def _auto_index(x: np.ndarray, k: int, settings: SearchConfig) -> str:
    """The index ``auto`` searches ``x`` with: exact on GPUs (fast at any size that fits them, and
    FAISS has no GPU HNSW), else the one timed probes on ``x`` predict to be cheapest at the
    required recall (:func:`pipeline.matching.index_choice.choose_index`, which logs why)."""
    if settings.gpu and faiss_gpus() > 0:
        log.info("[search] N=%d: index flat (FAISS sees a GPU)", len(x))
        return "flat"
    from pipeline.matching.index_choice import choose_index

    return choose_index(x, k, settings.n_threads, settings.ef_search, settings.nprobe, settings.required_recall).index


def rescore(x: np.ndarray, idx: np.ndarray, k: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The listed rows of ``x`` rescored by exact inner product with queries ``x[start:start + len(idx)]``,
    the best ``k`` of each list kept, best first.

    FAISS's threaded ``knn_inner_products_by_idx`` does it, a third of the time of :func:`pair_dots`
    over the lists and a sort (docs/speed.md). A row's list ends at its first -1, as FAISS's own lists do.

    Returns:
        (idx, sim), each (N, k); -1 and -inf where a list held fewer than k rows.
    """
    import faiss

    n, m = idx.shape
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    out_idx = np.empty((n, k), dtype=np.int64)
    out_sim = np.empty((n, k), dtype=np.float32)
    faiss.knn_inner_products_by_idx(
        faiss.swig_ptr(x[start:]),
        faiss.swig_ptr(x),
        faiss.swig_ptr(idx),
        x.shape[1],
        n,
        len(x),
        m,
        k,
        faiss.swig_ptr(out_sim),
        faiss.swig_ptr(out_idx),
        m,
    )
    out_sim[out_idx < 0] = -np.inf
    return out_idx, out_sim


def pair_dots(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(P,) float32 inner products x[rows[p]] . x[cols[p]], ``chunk`` pairs at a time (small
    chunks keep the gathered rows in cache).

    Args:
        x: (N, D) vectors.
        rows, cols: (P,) row indices into ``x``.
    """
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[start : start + chunk] = np.einsum("pd,pd->p", x[r], x[c], optimize=False)
    return out


def build_index(x: np.ndarray, settings: SearchConfig) -> faiss.Index:  # noqa: F821
    """A FAISS inner-product index holding ``x``, on the GPUs when there are some (see :func:`faiss_gpus`)."""
    import faiss

    n, d = x.shape
    kind = settings.index
    nlist = settings.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39, MAX_AUTO_NLIST))
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        if settings.hnsw_fp16:
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
            index.train(x[:1])  # float16 needs no statistics
        else:
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings.ef_search
    elif kind in ("ivf", "ivfpq"):
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        elif settings.gpu and faiss_gpus() > 0:
            m = settings.pq_m or _pq_subquantisers(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            # 4-bit codes scanned with SIMD registers (FastScan): faster than 8-bit codes at the same
            # recall once rescored (docs/speed.md).
            m = settings.pq_m or _pq_subquantisers(d)
            index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = 64  # k-means on a sample: training costs O(sample·nlist·D)
        index.cp.niter = 10
        index.train(x)
        index.nprobe = min(nlist, settings.nprobe)
    else:
        raise ValueError(f"unknown index {kind!r}; choose one of {list(INDEXES)}")
    index = to_gpus(index, shard=n > 2_000_000) if settings.gpu and kind != "hnsw" else index
    index.add(x)
    return index


def _pq_subquantisers(d: int) -> int:
    """Largest even count <= D/8 that divides D (PQ splits the vector into equal parts, and
    FastScan packs the codes of two sub-quantisers per byte); D itself when there is none."""
    for m in range(max(2, d // 8), 1, -1):
        if d % m == 0 and m % 2 == 0:
            return m
    return d


def faiss_gpus() -> int:
    """GPUs that FAISS can use: 0 with faiss-cpu, which has no GPU entry points at all."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return get() if get is not None and hasattr(faiss, "StandardGpuResources") else 0


def to_gpus(index: faiss.Index, shard: bool = False, gpus: int | None = None) -> faiss.Index:  # noqa: F821
    """The index copied to every GPU FAISS sees, or returned as it is when there is none.

    Args:
        shard: split the database across the GPUs (for collections too big for one) instead of
            replicating it on each (faster queries when it fits).
        gpus: GPU count; default :func:`faiss_gpus`.

    Untested here: this machine has no GPU and faiss-cpu. The CPU fallback is what the tests run.
    """
    gpus = faiss_gpus() if gpus is None else gpus
    if gpus <= 0:
        return index
    import faiss

    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    options.useFloat16 = False  # keep exact flat scores; IVF-PQ codes are already compact
    return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=gpus)


def sparse_knn(x: sp.spmatrix, k: int = 50, threads: int = 1, block: int = 8192, progress: bool = False) -> Neighbours:
    """Exact cosine top-k of L2-normalised sparse rows (TF-IDF) among all rows, itself included.

    sparse_dot_topn's sparse x sparse product keeps each row's best k as it goes, ``block`` query
    rows at a time. Its cost is the sum over a query's terms of their document frequencies: on
    titles, the commonest character n-grams make most of it (``tfidf.max_df`` drops them).

    Args:
        x: (N, V) rows of unit L2 norm, or zero (such a row has no neighbour).
        threads: sparse_dot_topn's threads.
    """
    from sparse_dot_topn import sp_matmul_topn

    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[0]
    k = min(k, n)
    xt = sp.csr_matrix(x.T)
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    for start in tqdm(range(0, n, block), desc="tfidf search", disable=not progress, leave=False):
        # threshold 0: rows sharing no term with the query are not neighbours, only fillers of a top-k.
        top = sp_matmul_topn(x[start : start + block], xt, top_n=k, threshold=0.0, sort=True, n_threads=threads)
        counts = np.diff(top.indptr)
        row = start + np.repeat(np.arange(top.shape[0]), counts)
        rank = np.arange(top.nnz) - np.repeat(top.indptr[:-1], counts)
        idx[row, rank], sim[row, rank] = top.indices, top.data
    return Neighbours(idx, sim)


def hamming_knn(
    codes: np.ndarray, k: int = 50, batch_size: int = 16384, threads: int = 1, nprobe: int = 0
) -> Neighbours:
    """Top-k by Hamming distance of 64-bit hashes; similarity is 1 - distance / 64.

    Args:
        codes: (N, 8) uint8 packed hashes (see ``pipeline.matching.signals.phash_codes``).
        threads: FAISS's OpenMP threads for this search.
        nprobe: 0 searches exactly; otherwise binary inverted lists (4·sqrt(N) Hamming k-means
            cells), visiting ``nprobe`` per query.
    """
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = codes.shape[0]
    k = min(k, n)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    with faiss_threads(threads):
        if nprobe > 0:
            nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(PHASH_BITS), PHASH_BITS, nlist)
            index.cp.max_points_per_centroid = 64
            index.train(codes)
            index.nprobe = min(nprobe, nlist)
        else:
            index = faiss.IndexBinaryFlat(PHASH_BITS)
        index.add(codes)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            dist, idx[start:stop] = index.search(codes[start:stop], k)
            sim[start:stop] = 1.0 - dist.astype(np.float32) / PHASH_BITS
    sim[idx < 0] = -np.inf
    return Neighbours(idx, sim, approximate=nprobe > 0)
