"""One in-memory index per signal, addressed by the catalogue's own posting ids.

- dense signals (image, text, concat): a FAISS inner-product index under ``IndexIDMap2`` (``flat``,
  ``hnsw``) or an ``IndexIVFFlat`` / ``IndexIVFScalarQuantizer``, which hold ids themselves;
- phash: ``IndexBinaryIDMap2`` over exact 64-bit Hamming search;
- tfidf: CSR blocks searched with sparse_dot_topn (FAISS has no sparse index).

Removing an id takes it out of the index where FAISS can (flat, IVF, binary, sparse). HNSW cannot
remove: its removed ids are tombstones, skipped in every answer, and :meth:`DenseIndex.stale`
says when they are enough to rebuild it. ``auto`` is exact while the catalogue is small and IVF
once it passes ``auto_rows`` live postings: the rebuild after the batch that crosses it switches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from pipeline.io import atomic_path
from pipeline.matching.neighbours import PHASH_BITS
from pipeline.settings import require

DENSE_KINDS = ("auto", "flat", "ivf", "ivfsq", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    """How the catalogue indexes its dense signals (``catalogue init --index ...``).

    Attributes:
        kind: ``flat`` (exact), ``ivf`` (inverted lists of float32 vectors), ``ivfsq`` (inverted
            lists of 8-bit scalar-quantised vectors, rescored exactly), ``hnsw`` (graph; cannot
            remove, so removals are tombstones until it is rebuilt), or ``auto``: ``flat`` below
            ``auto_rows`` live postings, ``ivf`` from there.
        auto_rows: where ``auto`` turns to ``ivf`` (docs/catalogue.md measures a batch of 10,000
            both ways at 200,000 and 1,000,000 postings).
        nlist: inverted lists; 0 = 4·sqrt(N) at the first build, at most 16,384.
        nprobe: inverted lists visited per query.
        ef_search: HNSW's candidate list per query.
        rescore: ``ivfsq`` shortlists ``rescore·k`` per query and rescores them with the float32 rows.
        stale_share: rebuild once tombstones or growth since the last build pass this share
            (growth: an IVF index trained on N vectors is retrained at ``N / stale_share``).
        snapshot_rows: write an index snapshot once this many rows were applied since the last one.
    """

    kind: str = "auto"
    auto_rows: int = 200_000
    nlist: int = 0
    nprobe: int = 32
    ef_search: int = 128
    rescore: int = 4
    stale_share: float = 0.1
    snapshot_rows: int = 20_000

    def __post_init__(self) -> None:
        require(self.kind in DENSE_KINDS, "kind", f"one of {list(DENSE_KINDS)}", self.kind)
        require(self.nlist >= 0, "nlist", ">= 0 (0 = automatic)", self.nlist)
        for key in ("auto_rows", "nprobe", "ef_search", "rescore", "snapshot_rows"):
            require(getattr(self, key) >= 1, key, ">= 1", getattr(self, key))
        require(0 < self.stale_share < 1, "stale_share", "in (0, 1)", self.stale_share)


def _unfiltered(sim: np.ndarray, ids: np.ndarray, dead: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row once tombstoned ids are dropped; -1 / -inf where fewer remain."""
    if dead:
        gone = np.isin(ids, np.fromiter(dead, np.int64, len(dead)))
        ids = np.where(gone, -1, ids)
    sim = np.where(ids >= 0, sim, -np.inf).astype(np.float32)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    ids, sim = np.take_along_axis(ids, order, 1), np.take_along_axis(sim, order, 1)
    if sim.shape[1] < k:
        pad = ((0, 0), (0, k - sim.shape[1]))
        ids, sim = np.pad(ids, pad, constant_values=-1), np.pad(sim, pad, constant_values=-np.inf)
    return sim, ids


class DenseIndex:
    """Inner-product search of L2-normalised float32 vectors by posting id."""

    def __init__(self, dim: int, cfg: IndexConfig):
        self.dim, self.cfg = dim, cfg
        self.kind = "flat" if cfg.kind == "auto" else cfg.kind  # what the index is now
        self.index = None
        self.dead: set[int] = set()
        self.built_rows = 0  # rows at the last (re)build: an IVF index retrains as the catalogue grows

    def build(self, ids: np.ndarray, x: np.ndarray) -> None:
        """A new index holding ``x`` under ``ids`` (trained on them where the kind needs it)."""
        import faiss

        n = len(ids)
        kind = self.kind = self.kind_for(n)
        if kind in ("ivf", "ivfsq") and n >= 2:
            nlist = self.cfg.nlist or int(min(max(1, 4 * np.sqrt(n)), 16_384, max(1, n // 39)))
            spec = f"IVF{nlist},{'Flat' if kind == 'ivf' else 'SQ8'}"
            index = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.max_points_per_centroid = 64  # k-means on a sample: O(sample·nlist·D)
            ivf.cp.niter = 10
            index.train(np.ascontiguousarray(x, dtype=np.float32))
            ivf.nprobe = min(nlist, self.cfg.nprobe)
        elif kind == "hnsw":
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT))
            faiss.downcast_index(index.index).hnsw.efSearch = self.cfg.ef_search
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self.index, self.dead, self.built_rows = index, set(), n
        self.add(ids, x)

    def kind_for(self, live: int) -> str:
        """The kind an index of ``live`` postings is built as. ``auto`` turns back to exact only
        below half of ``auto_rows``, so that a catalogue near the line is not rebuilt batch after batch."""
        if self.cfg.kind != "auto":
            return self.cfg.kind
        line = self.cfg.auto_rows // 2 if self.kind == "ivf" else self.cfg.auto_rows
        return "ivf" if live >= line else "flat"

    @property
    def approximate(self) -> bool:
        return self.kind != "flat"

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if self.kind == "hnsw":
            self.dead.update(int(i) for i in ids)
        elif len(ids):
            import faiss

            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))

    def search(self, q: np.ndarray, k: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """(sim, ids), each (Q, k), best first; -inf / -1 past what the index holds.

        Args:
            rows: the float32 rows by id, to rescore an ``ivfsq`` shortlist exactly.
        """
        n = self.index.ntotal - len(self.dead)
        if n <= 0 or len(q) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        q = np.ascontiguousarray(q, dtype=np.float32)
        wanted = min(self.index.ntotal, k + len(self.dead))
        if self.kind == "ivfsq" and rows is not None:
            sim, ids = self.index.search(q, min(self.index.ntotal, wanted * self.cfg.rescore))
            sim = _exact(q, ids, rows)
        else:
            sim, ids = self.index.search(q, wanted)
        return _unfiltered(sim, ids, self.dead, k)

    def ids(self) -> np.ndarray:
        """Every id the index holds (tombstones included), in no particular order."""
        import faiss

        if isinstance(self.index, faiss.IndexIDMap2) or hasattr(self.index, "id_map"):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = faiss.extract_index_ivf(self.index)
        lists = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(ivf.nlist)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def stale(self, live: int) -> bool:
        """Whether tombstones, growth past what an IVF index was trained for, or an ``auto`` index
        grown past ``auto_rows`` call for a rebuild."""
        if self.dead and len(self.dead) > self.cfg.stale_share * max(1, self.index.ntotal):
            return True
        if self.kind_for(live) != self.kind:
            return True
        return self.kind in ("ivf", "ivfsq") and live * self.cfg.stale_share > max(self.built_rows, 1)

    def save(self, path: Path) -> None:
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    def load(self, path: Path, live: np.ndarray) -> None:
        import faiss

        self.index = faiss.read_index(str(path))
        if self.cfg.kind == "auto":  # what the snapshot was built as
            self.kind = "ivf" if isinstance(self.index, faiss.IndexIVF) else "flat"
        if self.kind in ("ivf", "ivfsq"):
            faiss.extract_index_ivf(self.index).nprobe = self.cfg.nprobe
        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = self.cfg.ef_search
        held = self.ids()
        self.dead = set(np.setdiff1d(held, live).tolist()) if self.kind == "hnsw" else set()
        self.built_rows = len(held)


def _exact(q: np.ndarray, ids: np.ndarray, rows) -> np.ndarray:
    """(Q, m) exact inner products of the queries with the listed rows (-inf where none)."""
    safe = np.maximum(ids, 0)
    x = rows(safe.ravel()).reshape(ids.shape[0], ids.shape[1], -1)
    sim = np.einsum("qd,qmd->qm", q, x, optimize=False)
    return np.where(ids >= 0, sim, -np.inf).astype(np.float32)


class BinaryIndex:
    """Exact Hamming search of 64-bit phashes by posting id; similarity is 1 - distance / 64."""

    def __init__(self):
        self.index = None
        self.dead: set[int] = set()

    def build(self, ids: np.ndarray, x: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(PHASH_BITS))
        self.add(ids, x)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.uint8), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            import faiss

            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))

    def search(self, q: np.ndarray, k: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
        if self.index.ntotal == 0 or len(q) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        dist, ids = self.index.search(np.ascontiguousarray(q, dtype=np.uint8), min(k, self.index.ntotal))
        return _unfiltered(1.0 - dist.astype(np.float32) / PHASH_BITS, ids, set(), k)

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def stale(self, live: int) -> bool:
        return False

    def save(self, path: Path) -> None:
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index_binary(self.index, str(tmp))

    def load(self, path: Path, live: np.ndarray) -> None:
        import faiss

        self.index = faiss.read_index_binary(str(path))


class SparseIndex:
    """Exact cosine search of L2-normalised TF-IDF rows, one CSR block per batch (merged as they
    accumulate), with sparse_dot_topn. Each block's transpose is kept once searched, so the rows
    take twice their size in memory. One thread at a time, as every index here."""

    MAX_BLOCKS = 8

    def __init__(self, threads: int = 1):
        self.blocks: list[tuple[np.ndarray, sp.csr_matrix]] = []  # (ids, (n, V) rows)
        self.threads = threads

    @property
    def blocks(self) -> list[tuple[np.ndarray, sp.csr_matrix]]:
        return self._blocks

    @blocks.setter
    def blocks(self, blocks: list[tuple[np.ndarray, sp.csr_matrix]]) -> None:
        # Each block's (V, n) transpose is made on its first search and kept until the blocks change:
        # making it is O(the block's entries), far more than one posting's search.
        self._blocks, self._transposed = blocks, {}

    def _transpose(self, i: int) -> sp.csr_matrix:
        if i not in self._transposed:
            self._transposed[i] = self._blocks[i][1].T.tocsr()
        return self._transposed[i]

    def build(self, ids: np.ndarray, x: sp.csr_matrix) -> None:
        self.blocks = []
        self.add(ids, x)

    def add(self, ids: np.ndarray, x: sp.csr_matrix) -> None:
        if len(ids):
            self.blocks.append((np.asarray(ids, np.int64), sp.csr_matrix(x, dtype=np.float32)))
        if len(self.blocks) > self.MAX_BLOCKS:
            self.blocks = [self._stacked()]

    def _stacked(self) -> tuple[np.ndarray, sp.csr_matrix]:
        if len(self.blocks) == 1:
            return self.blocks[0]
        width = max((b[1].shape[1] for b in self.blocks), default=1)
        return self.ids(), sp.vstack([b[1] for b in self.blocks] or [sp.csr_matrix((0, width))], format="csr")

    def remove(self, ids: np.ndarray) -> None:
        drop = np.asarray(ids, np.int64)
        blocks = []
        for b_ids, x in self.blocks:
            keep = ~np.isin(b_ids, drop)
            blocks.append((b_ids[keep], x[np.flatnonzero(keep)]))
        self.blocks = blocks

    def rows(self, ids: np.ndarray) -> sp.csr_matrix:
        """The rows of ``ids``; a zero row for an id the index does not hold."""
        held, x = self._stacked() if self.blocks else (np.empty(0, np.int64), sp.csr_matrix((0, 1)))
        order = np.argsort(held)
        at = np.minimum(np.searchsorted(held[order], ids), max(len(held) - 1, 0))
        found = len(held) > 0
        found = (held[order][at] == ids) if found else np.zeros(len(ids), bool)
        pick = sp.csr_matrix(
            (np.ones(found.sum(), np.float32), (np.flatnonzero(found), order[at[found]])),
            shape=(len(ids), max(x.shape[0], 1)),
        )
        return (
            sp.csr_matrix(pick[:, : x.shape[0]] @ x, dtype=np.float32)
            if x.shape[0]
            else sp.csr_matrix((len(ids), x.shape[1]), dtype=np.float32)
        )

    def search(self, q: sp.csr_matrix, k: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
        from sparse_dot_topn import sp_matmul_topn

        q = sp.csr_matrix(q, dtype=np.float32)
        sims, idss = [np.full((q.shape[0], k), -np.inf, np.float32)], [np.full((q.shape[0], k), -1, np.int64)]
        for i, (ids, x) in enumerate(self.blocks):
            top = sp_matmul_topn(
                q, self._transpose(i), top_n=min(k, x.shape[0]), threshold=0.0, sort=True, n_threads=self.threads
            )
            counts = np.diff(top.indptr)
            row = np.repeat(np.arange(top.shape[0]), counts)
            rank = np.arange(top.nnz) - np.repeat(top.indptr[:-1], counts)
            sim = np.full((q.shape[0], k), -np.inf, np.float32)
            got = np.full((q.shape[0], k), -1, np.int64)
            sim[row, rank], got[row, rank] = top.data, ids[top.indices]
            sims.append(sim)
            idss.append(got)
        return _unfiltered(np.hstack(sims), np.hstack(idss), set(), k)

    def ids(self) -> np.ndarray:
        return np.concatenate([b[0] for b in self.blocks]) if self.blocks else np.empty(0, np.int64)

    def stale(self, live: int) -> bool:
        return False
