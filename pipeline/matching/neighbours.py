"""Top-k neighbour search for every signal, in O(N·k) memory.

Each search returns a :class:`Neighbours` pair of (N, k) arrays, the layout the matching engine works
on. No function here builds an N×N matrix: queries go in batches, and the sparse TF-IDF search keeps
only one (batch, N) block at a time. faiss and torch are imported by the searches that use them, so
a run without their signals never loads them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

PHASH_BITS = 64


@dataclass
class Neighbours:
    """Top-k neighbours of each query, best first.

    Attributes:
        idx: (N, k) int64 database indices; -1 where fewer than k exist.
        sim: (N, k) float32 similarities, bigger is closer; -inf where ``idx`` is -1.
    """

    idx: np.ndarray
    sim: np.ndarray

    def __post_init__(self) -> None:
        if self.idx.shape != self.sim.shape or self.idx.ndim != 2:
            raise ValueError(f"idx {self.idx.shape} and sim {self.sim.shape} must be equal (N, k) arrays")

    @property
    def k(self) -> int:
        return self.idx.shape[1]

    def __len__(self) -> int:
        return self.idx.shape[0]


def search(name: str, vectors: Any, k: int, batch_size: int = 4096, index: str = "flat") -> Neighbours:
    """Top-k neighbours of every gallery row for one signal, dispatched on the vectors' kind."""
    if name == "phash":
        return hamming_knn(vectors, k)
    if sp.issparse(vectors):
        return sparse_knn(vectors, k, batch_size=min(batch_size, 1024))
    return dense_knn(vectors, k, batch_size=batch_size, index=index)


def dense_knn(
    x: np.ndarray,
    k: int = 50,
    batch_size: int = 4096,
    index: str = "flat",
    progress: bool = False,
) -> Neighbours:
    """Inner-product top-k of each row of ``x`` among all rows (itself included).

    Args:
        x: (N, D) L2-normalised embeddings; inner product is then cosine similarity.
        k: neighbours per query, capped at N.
        batch_size: queries per FAISS call.
        index: ``flat`` (exact), ``hnsw`` or ``ivf`` (approximate, for millions of postings).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = min(k, n)
    faiss_index = _build_index(x, index)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc="faiss search", disable=not progress, leave=False):
        stop = min(start + batch_size, n)
        sim[start:stop], idx[start:stop] = faiss_index.search(x[start:stop], k)
    sim[idx < 0] = -np.inf
    return Neighbours(idx, sim)


def _build_index(x: np.ndarray, kind: str) -> "faiss.Index":  # noqa: F821
    import faiss

    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    elif kind == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(nlist, 16)
    else:
        raise ValueError(f"unknown index {kind!r}; choose flat, hnsw or ivf")
    if kind == "flat" and _faiss_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def _faiss_gpus() -> int:
    import faiss

    # faiss-cpu has no GPU entry points at all; a faiss-gpu build has them.
    get = getattr(faiss, "get_num_gpus", None)
    return get() if get is not None and hasattr(faiss, "StandardGpuResources") else 0


def sparse_knn(x: sp.csr_matrix, k: int = 50, batch_size: int = 1024, progress: bool = False) -> Neighbours:
    """Cosine top-k for L2-normalised sparse rows (TF-IDF), one (batch, N) block at a time.

    Each block is the sparse gallery times a dense block of queries (torch's multithreaded sparse
    x dense product, on CUDA when there is one). With character n-grams nearly every pair of titles
    shares a term, so a sparse x sparse product would fill the block anyway, and on 70,000 titles
    it took 3.8 times as long.
    """
    import torch

    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[0]
    k = min(k, n)
    # The dense query block (b, V) and the result (b, N) stay near 128 MB each; smaller blocks
    # were also faster on 70,000 titles (they stay in cache).
    batch_size = max(16, min(batch_size, 2**25 // max(x.shape[1], n)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        gallery = torch.sparse_csr_tensor(
            torch.from_numpy(x.indptr.astype(np.int64)), torch.from_numpy(x.indices.astype(np.int64)),
            torch.from_numpy(x.data), size=x.shape, device=device,
        )
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc="tfidf search", disable=not progress, leave=False):
        stop = min(start + batch_size, n)
        queries = torch.from_numpy(x[start:stop].toarray()).to(device)
        block = torch.sparse.mm(gallery, queries.T.contiguous()).T  # (b, N)
        top_sim, top = torch.topk(block, k, dim=1)
        idx[start:stop] = top.cpu().numpy()
        sim[start:stop] = top_sim.cpu().numpy()
    # Rows sharing no term with the query are not neighbours, only arbitrary fillers of the top-k.
    none = sim <= 0
    idx[none], sim[none] = -1, -np.inf
    return Neighbours(idx, sim)


def hamming_knn(codes: np.ndarray, k: int = 50, batch_size: int = 16384) -> Neighbours:
    """Top-k by Hamming distance of 64-bit hashes; similarity is 1 - distance / 64.

    Args:
        codes: (N, 8) uint8 packed hashes (see ``pipeline.matching.signals.phash_codes``).
    """
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = codes.shape[0]
    k = min(k, n)
    index = faiss.IndexBinaryFlat(PHASH_BITS)
    index.add(codes)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        dist, idx[start:stop] = index.search(codes[start:stop], k)
        sim[start:stop] = 1.0 - dist.astype(np.float32) / PHASH_BITS
    return Neighbours(idx, sim)
