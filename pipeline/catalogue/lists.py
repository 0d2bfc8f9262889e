"""Every posting's neighbour lists, kept up to date as batches arrive.

The pair model reads more than a pair's similarities: where each side ranks the other in its own
top-k list, how crowded each side's neighbourhood is, how many neighbours they share, and graph
blending reads a posting's neighbours' lists. ``predict`` has all of them from one search of the
gallery; a catalogue keeps them: row ``id`` of ``lists/<signal>.ids`` and ``.sims`` holds that
posting's top-k (itself first, as a gallery search lists it), and a batch inserts each new posting
into the lists of the postings it found (its similarity to them is symmetric).

Updates are redo-logged: the batch's new rows go to ``lists/journal/<seq>.npz`` before the
database commits the batch, and are written into the lists after it. Opening re-applies the
journals of committed batches the lists do not hold yet, and drops those of batches that never
committed. Writing a row twice gives the same row, so a kill at any point is repaired.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path
from pipeline.matching.ranking import best_k, descending_keys, index_keys

ROWS_STEP = 1 << 14  # the files grow by at least this many rows (or by half) at a time


class NeighbourLists:
    """Top-``k`` (ids, similarities) per posting id and signal; ids stored plus one, 0 = empty."""

    def __init__(self, root: Path, signals: Sequence[str], k: int):
        self.root, self.signals, self.k = Path(root), list(signals), k
        (self.root / "journal").mkdir(parents=True, exist_ok=True)
        self._maps: dict[str, tuple[np.memmap, np.memmap]] = {}

    @property
    def applied(self) -> int:
        path = self.root / "applied.json"
        return json.loads(path.read_text())["applied"] if path.exists() else 0

    def _files(self, signal: str) -> tuple[Path, Path]:
        return self.root / f"{signal}.ids", self.root / f"{signal}.sims"

    def _capacity(self, signal: str) -> int:
        path = self._files(signal)[0]
        return (path.stat().st_size if path.exists() else 0) // (8 * self.k)

    def _open(self, signal: str, rows: int = 0) -> tuple[np.memmap, np.memmap] | None:
        """The memory maps of a signal's files, grown to hold ``rows`` rows first when asked."""
        have = self._capacity(signal)
        if rows > have:
            cap = max(rows, have + max(ROWS_STEP, have // 2))
            for path, width in zip(self._files(signal), (8, 4)):
                with open(path, "ab") as f:
                    f.truncate(cap * width * self.k)  # new rows read as empty: id 0, similarity 0
            self._maps.pop(signal, None)
            have = cap
        if have == 0:
            return None
        if signal not in self._maps or self._maps[signal][0].shape[0] != have:
            ids_path, sims_path = self._files(signal)
            mode = "r+" if os.access(ids_path, os.W_OK) else "r"
            self._maps[signal] = (
                np.memmap(ids_path, dtype=np.int64, mode=mode, shape=(have, self.k)),
                np.memmap(sims_path, dtype=np.float32, mode=mode, shape=(have, self.k)),
            )
        return self._maps[signal]

    def rows(self, signal: str, ids: np.ndarray, known: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(idx, sim), each (len(ids), k): the lists of ``ids``, -1 / -inf where empty.

        Args:
            known: ids at or past this are dropped (a reader that sees an earlier batch than the
                lists already hold).
        """
        ids = np.asarray(ids, np.int64)
        idx = np.full((len(ids), self.k), -1, np.int64)
        sim = np.full((len(ids), self.k), -np.inf, np.float32)
        maps = self._open(signal)
        if maps is None or not len(ids):
            return idx, sim
        inside = ids < maps[0].shape[0]
        got = np.asarray(maps[0][ids[inside]]) - 1
        s = np.asarray(maps[1][ids[inside]])
        empty = got < 0 if known is None else (got < 0) | (got >= known)
        idx[inside] = np.where(empty, -1, got)
        sim[inside] = np.where(empty, -np.inf, s)
        return idx, sim

    def last(self, signal: str, ids: np.ndarray, known: int | None = None) -> np.ndarray:
        """(len(ids),) the k-th similarity of each list, -inf where it holds fewer than k entries
        (what :meth:`rows` would read as a full list): a posting less similar than that cannot enter it."""
        ids = np.asarray(ids, np.int64)
        out = np.full(len(ids), -np.inf, np.float32)
        maps = self._open(signal)
        if maps is None or not len(ids):
            return out
        inside = ids < maps[0].shape[0]
        got = np.asarray(maps[0][ids[inside], self.k - 1]) - 1
        full = got >= 0 if known is None else (got >= 0) & (got < known)
        out[inside] = np.where(full, np.asarray(maps[1][ids[inside], self.k - 1]), -np.inf)
        return out

    def write_journal(self, seq: int, updates: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Batch ``seq``'s new rows per signal: (ids, (R, k) idx, (R, k) sim). Durable before the commit."""
        arrays = {}
        for signal, (ids, idx, sim) in updates.items():
            arrays[f"{signal}__ids"], arrays[f"{signal}__idx"], arrays[f"{signal}__sim"] = ids, idx, sim
        path = self.root / "journal" / f"{seq}.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())

    def apply(self, seq: int) -> None:
        """Write journal ``seq`` into the lists, then record it applied and drop the journal."""
        path = self.root / "journal" / f"{seq}.npz"
        if path.exists():
            with np.load(path) as f:
                for signal in self.signals:
                    if f"{signal}__ids" not in f:
                        continue
                    ids = f[f"{signal}__ids"]
                    if not len(ids):
                        continue
                    ids_map, sims_map = self._open(signal, int(ids.max()) + 1)
                    ids_map[ids] = f[f"{signal}__idx"] + 1
                    sims_map[ids] = f[f"{signal}__sim"]
                    ids_map.flush()
                    sims_map.flush()
        with atomic_path(self.root / "applied.json") as tmp:
            tmp.write_text(json.dumps({"applied": seq}))
        path.unlink(missing_ok=True)

    def open(self, committed: int) -> None:
        """Redo the journals of committed batches past :attr:`applied`; drop the others."""
        for stray in (self.root / "journal").glob(".*"):
            stray.unlink()
        done = self.applied
        for path in sorted((self.root / "journal").glob("*.npz"), key=lambda p: int(p.stem)):
            seq = int(path.stem)
            if done < seq <= committed:
                self.apply(seq)
            else:
                path.unlink()
        if self.applied < committed:
            with atomic_path(self.root / "applied.json") as tmp:
                tmp.write_text(json.dumps({"applied": committed}))


def merge_rows(
    idx: np.ndarray, sim: np.ndarray, new_idx: np.ndarray, new_sim: np.ndarray, k: int, disjoint: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``k`` of two lists, ties by id, each id once (the larger similarity kept).

    Args:
        idx, sim: (R, a) lists; new_idx, new_sim: (R, b) entries to merge in (-1: none).
        disjoint: no id is listed twice, in one list or across both (a batch's postings merged
            into catalogue lists): nothing to drop.
    """
    ids = np.hstack([idx, new_idx])
    sims = np.hstack([sim, new_sim]).astype(np.float32)
    sims = np.where(ids >= 0, sims, -np.inf)
    if not disjoint:
        # Each id once: sort by (id, -sim) and keep the first of each run.
        key = index_keys(ids)
        key <<= np.uint64(32)
        key |= descending_keys(sims)
        order = np.argsort(key, axis=1)
        del key
        ids, sims = np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)
        repeat = np.zeros(ids.shape, bool)
        repeat[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
        sims = np.where(repeat, -np.inf, sims)
        ids = np.where(repeat | ~np.isfinite(sims), -1, ids)
    return best_k(ids, sims, k)
