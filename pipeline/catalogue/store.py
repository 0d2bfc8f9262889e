"""The vector store: every posting's vectors by id, and one search index per signal.

:class:`VectorStore` is what the catalogue asks of it, small enough that a distributed vector
database (Qdrant, Milvus: docs/scale.md) can take the place of :class:`LocalVectorStore`.

On disk, per signal, an append-only log holds row ``id`` for every id ever given (dense and phash:
one fixed-size row each; TF-IDF: one CSR file per batch). A batch's rows are appended and synced
*before* the database commits the batch, so a committed batch always has its rows; rows past the
last committed id are what a killed writer left, and opening cuts them off. The in-memory indexes
are rebuilt from a snapshot (``index/<signal>.<seq>.faiss``: the index after batch ``seq``) and the
committed batches after it, replayed from the logs; with no snapshot, from the logs alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from pipeline.catalogue.indexes import BinaryIndex, DenseIndex, IndexConfig, SparseIndex
from pipeline.io import atomic_path
from pipeline.matching.neighbours import faiss_threads


@dataclass(frozen=True)
class SignalSpec:
    """A stored signal: ``dense`` (float32 rows of ``dim``), ``binary`` (8-byte phash) or ``sparse`` (TF-IDF)."""

    name: str
    kind: str
    dim: int
    searched: bool = True


@dataclass(frozen=True)
class Replay:
    """What the committed batches after a snapshot did: ids added (still live) and ids removed."""

    seq: int
    added: np.ndarray
    removed: np.ndarray


class VectorStore(Protocol):
    """What the catalogue needs of a vector database. Ids are the catalogue's posting ids."""

    def append(self, seq: int, first_id: int, vectors: Mapping[str, Any]) -> None:
        """Store rows ``first_id ...`` of batch ``seq`` durably (called before the batch commits)."""

    def apply(self, seq: int, added: np.ndarray, removed: np.ndarray) -> None:
        """Make committed batch ``seq`` searchable: index ``added`` (stored before), drop ``removed``."""

    def search(self, signal: str, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sim, ids), each (Q, k), best first, among live postings; -inf / -1 where fewer."""

    def fetch(self, signal: str, ids: np.ndarray) -> Any:
        """The stored rows of ``ids``, in that order."""

    def approximate(self, signal: str) -> bool:
        """Whether ``signal``'s index answers approximately (a dense one that is not flat now)."""

    def indexed_ids(self, signal: str) -> np.ndarray:
        """Every live id the signal's index answers with (for the integrity check)."""

    def stored_rows(self, signal: str) -> int:
        """How many rows the signal's log holds."""


class LocalVectorStore:
    """:class:`VectorStore` on local files and in-memory FAISS indexes (see the module's docstring)."""

    def __init__(self, root: Path, specs: Sequence[SignalSpec], cfg: IndexConfig, threads: int = 1):
        self.root, self.cfg, self.threads = Path(root), cfg, threads
        self.specs = {s.name: s for s in specs}
        self.indexes: dict[str, Any] = {}
        self.applied = 0  # the last batch every index holds
        self.since_snapshot = 0
        (self.root / "index").mkdir(parents=True, exist_ok=True)
        (self.root / "sparse").mkdir(parents=True, exist_ok=True)

    # ---- logs -------------------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        return self.root / f"{name}.rows"

    def _row_bytes(self, spec: SignalSpec) -> int:
        return spec.dim * 4 if spec.kind == "dense" else 8

    def _rows(self, spec: SignalSpec) -> np.ndarray:
        path = self._log(spec.name)
        size = path.stat().st_size if path.exists() else 0
        n = size // self._row_bytes(spec)
        if n == 0:
            return np.empty(
                (0, spec.dim if spec.kind == "dense" else 8), np.float32 if spec.kind == "dense" else np.uint8
            )
        dtype, width = (np.float32, spec.dim) if spec.kind == "dense" else (np.uint8, 8)
        return np.memmap(path, dtype=dtype, mode="r", shape=(n, width))

    def stored_rows(self, signal: str) -> int:
        spec = self.specs[signal]
        if spec.kind == "sparse":
            return sum(_sparse_ids(p).size for p in self._sparse_files())
        path = self._log(signal)
        return (path.stat().st_size if path.exists() else 0) // self._row_bytes(spec)

    def _sparse_files(self) -> list[Path]:
        return sorted((self.root / "sparse").glob("*.npz"), key=lambda p: int(p.stem))

    def append(self, seq: int, first_id: int, vectors: Mapping[str, Any]) -> None:
        for name, spec in self.specs.items():
            x = vectors[name]
            if spec.kind == "sparse":
                with atomic_path(self.root / "sparse" / f"{seq}.npz") as tmp:
                    x = sp.csr_matrix(x, dtype=np.float32)
                    np.savez(
                        tmp, first_id=first_id, data=x.data, indices=x.indices, indptr=x.indptr, shape=np.array(x.shape)
                    )
                continue
            dtype = np.float32 if spec.kind == "dense" else np.uint8
            raw = np.ascontiguousarray(x, dtype=dtype).tobytes()
            with open(self._log(name), "ab") as f:
                f.truncate(first_id * self._row_bytes(spec))  # a killed writer's rows go first
                f.seek(first_id * self._row_bytes(spec))
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        _sync_dir(self.root)

    def fetch(self, signal: str, ids: np.ndarray) -> Any:
        spec = self.specs[signal]
        ids = np.asarray(ids, np.int64)
        if spec.kind == "sparse":
            return self._sparse_rows(ids)
        return np.asarray(self._rows(spec)[ids])

    def _sparse_rows(self, ids: np.ndarray) -> sp.csr_matrix:
        return self.indexes[next(n for n, s in self.specs.items() if s.kind == "sparse")].rows(ids)

    # ---- recovery ---------------------------------------------------------------------------

    def open(self, committed: int, n_ids: int, live: np.ndarray, replay: Sequence[Replay], repair: bool) -> None:
        """Load each index as it is after batch ``committed``.

        Args:
            committed: the last committed batch; n_ids: ids given so far (the logs' row count).
            live: every live id; replay: per committed batch after :meth:`oldest_snapshot`, its ids
                added and removed, in order.
            repair: first cut what uncommitted batches left (the writer does; a reader only reads
                the rows its batch names).
        """
        if repair:
            self._repair(committed, n_ids)
        for name, spec in self.specs.items():
            if spec.searched or spec.kind == "sparse":
                self._load_index(name, spec, committed, live, replay)
        self.applied = committed
        self.since_snapshot = 0

    def _repair(self, committed: int, n_ids: int) -> None:
        for name, spec in self.specs.items():
            if spec.kind == "sparse":
                for p in self._sparse_files():
                    if int(p.stem) > committed:
                        p.unlink()
                continue
            path, size = self._log(name), n_ids * self._row_bytes(spec)
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as f:
                    f.truncate(size)
                    os.fsync(f.fileno())
            if (path.stat().st_size if path.exists() else 0) < size:
                raise OSError(
                    f"{path}: holds fewer rows than the {n_ids} committed postings; the catalogue "
                    "is damaged (restore it from a copy)"
                )
        for stray in (self.root / "index").glob(".*"):  # temporary files of a killed snapshot
            stray.unlink()
        for name in self.specs:
            self._snapshot(name, committed, prune=True)

    def oldest_snapshot(self) -> int:
        """The batch of the oldest of the indexes' newest snapshots (0: some index has none)."""
        seqs = []
        for name, spec in self.specs.items():
            if spec.searched and spec.kind != "sparse":
                snap = self._snapshot(name, 1 << 62)
                seqs.append(snap[0] if snap else 0)
        return min(seqs, default=0)

    def _new_index(self, spec: SignalSpec) -> Any:
        if spec.kind == "dense":
            return DenseIndex(spec.dim, self.cfg)
        return BinaryIndex() if spec.kind == "binary" else SparseIndex(self.threads)

    def _load_index(
        self, name: str, spec: SignalSpec, committed: int, live: np.ndarray, replay: Sequence[Replay]
    ) -> None:
        index = self._new_index(spec)
        with faiss_threads(self.threads):
            if spec.kind == "sparse":
                self._load_sparse(index, live)
            else:
                snap = self._snapshot(name, committed)
                if snap is None:
                    index.build(live, self._rows(spec)[live])
                else:
                    seq, path = snap
                    index.load(path, live)
                    for r in (r for r in replay if r.seq > seq):
                        index.add(r.added, self._rows(spec)[r.added])
                        index.remove(r.removed)
        self.indexes[name] = index

    def _load_sparse(self, index: SparseIndex, live: np.ndarray) -> None:
        index.blocks = []
        for p in self._sparse_files():
            with np.load(p) as f:
                x = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
                ids = int(f["first_id"]) + np.arange(x.shape[0])
            keep = np.isin(ids, live)
            index.add(ids[keep], x[np.flatnonzero(keep)])

    def _snapshot(self, name: str, committed: int, prune: bool = False) -> tuple[int, Path] | None:
        """The newest snapshot at or before ``committed``; with ``prune``, later ones (a batch that
        never committed cannot have one, but a restored database can be older) are removed."""
        found = []
        for p in (self.root / "index").glob(f"{name}.*.faiss"):
            m = re.fullmatch(rf"{re.escape(name)}\.(\d+)\.faiss", p.name)
            if m and int(m.group(1)) <= committed:
                found.append((int(m.group(1)), p))
            elif m and prune:
                p.unlink()
        return max(found) if found else None

    # ---- writes after a commit ----------------------------------------------------------------

    def apply(self, seq: int, added: np.ndarray, removed: np.ndarray) -> None:
        with faiss_threads(self.threads):
            for name, index in self.indexes.items():
                spec = self.specs[name]
                if spec.kind == "sparse":
                    if len(added):
                        index.add(added, self.fetch_new_sparse(seq, added))
                else:
                    index.add(added, self._rows(spec)[added])
                index.remove(removed)
        self.applied = seq
        self.since_snapshot += len(added) + len(removed)

    def fetch_new_sparse(self, seq: int, ids: np.ndarray) -> sp.csr_matrix:
        with np.load(self.root / "sparse" / f"{seq}.npz") as f:
            x = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
            first = int(f["first_id"])
        return x[np.asarray(ids) - first]

    def rebuild_if_stale(self, live: np.ndarray) -> list[str]:
        """Rebuild the indexes whose tombstones or growth passed the configured share; their names."""
        rebuilt = []
        with faiss_threads(self.threads):
            for name, index in self.indexes.items():
                spec = self.specs[name]
                if spec.kind != "sparse" and index.stale(len(live)):
                    index.build(live, self._rows(spec)[live])
                    rebuilt.append(name)
        if rebuilt:
            self.snapshot(force=True)
        return rebuilt

    def snapshot(self, force: bool = False) -> bool:
        """Write each searched index as it is after batch ``applied``, when enough changed (or ``force``)."""
        if not force and self.since_snapshot < self.cfg.snapshot_rows:
            return False
        for name, index in self.indexes.items():
            if self.specs[name].kind == "sparse":
                continue
            index.save(self.root / "index" / f"{name}.{self.applied}.faiss")
            for old in (self.root / "index").glob(f"{name}.*.faiss"):
                if old.name != f"{name}.{self.applied}.faiss":
                    old.unlink()
        self.since_snapshot = 0
        return True

    # ---- reads ------------------------------------------------------------------------------

    def search(self, signal: str, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        spec = self.specs[signal]
        rows = (lambda ids: self._rows(spec)[ids]) if spec.kind == "dense" else None
        with faiss_threads(self.threads):
            return self.indexes[signal].search(queries, k, rows)

    def approximate(self, signal: str) -> bool:
        """Whether ``signal``'s index answers approximately (a dense one that is not flat now)."""
        return bool(getattr(self.indexes[signal], "approximate", False))

    def indexed_ids(self, signal: str) -> np.ndarray:
        index = self.indexes[signal]
        ids = index.ids()
        dead = getattr(index, "dead", set())
        return ids[~np.isin(ids, np.fromiter(dead, np.int64, len(dead)))] if dead else ids


def _sparse_ids(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return int(f["first_id"]) + np.arange(int(f["shape"][0]))


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
