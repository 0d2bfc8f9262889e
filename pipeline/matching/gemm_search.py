"""Exact top-k search as blocked matrix products in bfloat16, rescored in float32.

On CPUs with bfloat16 matrix units (Intel AMX, ``amx_bf16``; ``avx512_bf16`` without them) a
bfloat16 product runs several times as fast as BLAS's float32 one (oneDNN, through torch). Its
scores carry about 3 significant digits, so it only *shortlists*: each row's best
``k + margin`` by the bfloat16 scores, then rescored with the float32 vectors (FAISS's
``knn_inner_products_by_idx``) and the best ``k`` kept. A true neighbour is lost only when
``margin`` others beat it by less than the bfloat16 rounding (about 0.4% of a score), which on
unit vectors is below 0.004: the lists are exact search's except for such near-ties.

Selection is the other cost of an exact search: ``torch.topk`` over a (B, N) block costs about as
much as the product. Rows are cut into chunks of ``CHUNK`` columns; a row's best m elements lie in
its m chunks with the largest maxima (a chunk holding one of them has a maximum at least the m-th
best, and at most m chunks do), so only those m·CHUNK columns are ranked.

The TF-IDF sketch search (:mod:`pipeline.matching.tfidf_search`) draws its candidates from the
same shortlists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from pipeline.matching.neighbours import Neighbours, faiss_threads

CHUNK = 16  # columns per chunk of the selection: its maxima are N/16 of a row
MARGIN = 14  # shortlist k + MARGIN per row before the float32 rescoring


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Bound torch's intra-op threads to ``n`` for the block, then restore them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def chunk_maxima(scores: torch.Tensor) -> torch.Tensor:  # noqa: F821
    """(B, N // CHUNK) maxima of each row's chunks: chunk j is the columns j, j + w, j + 2w ...
    (w = N // CHUNK), so the maxima are an elementwise maximum of CHUNK contiguous slices, which
    vectorises (4 times as fast as a maximum over contiguous groups of 16)."""
    b, n = scores.shape
    width = n // CHUNK
    return scores[:, : CHUNK * width].unflatten(1, (CHUNK, width)).amax(dim=1)


def shortlist(scores: torch.Tensor, m: int, maxima: torch.Tensor | None = None) -> np.ndarray:  # noqa: F821
    """(B, m) int64 columns of each row's ``m`` largest ``scores`` (a (B, N) tensor), unordered.

    Ranks only the columns of the m chunks with the largest maxima (see the module's docstring);
    the last N % CHUNK columns are always ranked.

    Args:
        maxima: :func:`chunk_maxima` of ``scores``, when already computed.
    """
    import torch

    b, n = scores.shape
    m = min(m, n)
    width = n // CHUNK
    if width < m:  # too few columns for chunks to save anything
        return scores.topk(m, dim=1, sorted=False).indices.numpy().astype(np.int64)
    maxima = chunk_maxima(scores) if maxima is None else maxima
    top_chunks = maxima.topk(m, dim=1, sorted=False).indices  # (B, m)
    cols = (top_chunks[:, :, None] + torch.arange(CHUNK) * width).reshape(b, -1)  # (B, m·CHUNK)
    if n > CHUNK * width:
        cols = torch.cat([cols, torch.arange(CHUNK * width, n).expand(b, -1)], dim=1)
    vals = torch.gather(scores, 1, cols)
    pick = vals.topk(m, dim=1, sorted=False).indices
    return torch.gather(cols, 1, pick).numpy().astype(np.int64)


def bf16_shortlists(
    x: np.ndarray,
    m: int,
    threads: int = 1,
    block: int = 2048,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, (B, m) columns) for each block of rows of ``x``: their ``m`` best by the
    bfloat16 inner product (unordered)."""
    import torch

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    with torch_threads(threads), torch.inference_mode():
        xb = torch.from_numpy(x).to(torch.bfloat16)
        # The right operand as a (D, N) contiguous copy: oneDNN reorders a transposed view on every
        # product (70,000 x 512: 144 against 78 ms a block of 2,048 rows on an AMX machine).
        xt = xb.T.contiguous()
        # One (block, N) buffer for every block's scores: a fresh one per block costs the kernel's
        # zeroing of its pages, which took 40% of the product's time at N = 70,000.
        buffer = torch.empty((min(block, n), n), dtype=torch.bfloat16)
        for start in range(0, n, block):
            stop = min(start + block, n)
            scores = buffer[: stop - start]
            torch.matmul(xb[start:stop], xt, out=scores)  # (B, N) bfloat16
            yield start, stop, shortlist(scores, m)


def pca_basis(x: np.ndarray, dims: int, sample: int = 20_000) -> np.ndarray:
    """(D, dims) float32 top principal directions of ``x``'s rows (uncentred: inner products are
    what is kept), from the covariance of an evenly spaced sample."""
    part = x[:: max(1, len(x) // sample)].astype(np.float64)
    _, vecs = np.linalg.eigh(part.T @ part)
    return np.ascontiguousarray(vecs[:, ::-1][:, :dims], dtype=np.float32)


def bf16_knn(
    x: np.ndarray,
    k: int = 50,
    threads: int = 1,
    block: int = 2048,
    margin: int = MARGIN,
    dims: int = 0,
) -> Neighbours:
    """Inner-product top-k of each row of ``x`` among all rows: bfloat16 shortlist, float32 rescoring.

    Args:
        x: (N, D) float32 vectors.
        block: query rows per product; the (block, N) bfloat16 scores are the memory it takes.
        dims: when 0 < dims < D, the shortlist is drawn from the top ``dims`` principal
            components (D / dims times fewer flops in the product; give a larger ``margin``: 70,000
            bench vectors kept 0.9999 of the pairs above 0.3 with 256 of 512 dimensions and a
            shortlist of 100, but took 30.0 s against the full vectors' 26.3 s on an AMX machine,
            where the selection costs as much as the product) and rescored with the full vectors.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    k = min(k, n)
    m = min(n, k + margin)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    queries = x @ pca_basis(x, dims) if 0 < dims < x.shape[1] else x
    with faiss_threads(threads):
        for start, stop, cand in bf16_shortlists(queries, m, threads, block):
            idx[start:stop], sim[start:stop] = _rescore_ip(x, cand, k, start)
    sim[idx < 0] = -np.inf
    return Neighbours(idx, sim)


def _rescore_ip(x: np.ndarray, cand: np.ndarray, k: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 inner products of the shortlist, best k first (FAISS; ties in its heap order)."""
    from pipeline.matching.neighbours import rescore

    # FAISS's heap keeps equal scores in an order of its own: sort the shortlist by index first so
    # that ties are kept and ranked by index, as an exact flat search ranks them.
    cand = np.sort(np.where(cand < 0, np.iinfo(np.int64).max, cand), axis=1)
    cand[cand == np.iinfo(np.int64).max] = -1
    idx, sim = rescore(x, cand, k, start)
    return idx, sim
