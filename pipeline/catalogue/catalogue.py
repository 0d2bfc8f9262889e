"""A catalogue folder: its database, rule, vector store and neighbour lists, opened as one.

``C/catalogue.db`` (SQLite, the source of truth), ``C/catalogue.json`` (the rule, the TF-IDF
vocabulary and the stored signals, written once by ``init``), ``C/vectors/`` (the vector store),
``C/lists/`` (the neighbour lists) and ``C/write.lock`` (one writer at a time).

A writer takes the lock, then repairs what a killed writer may have left (:meth:`Catalogue.recover`):
rows and journals past the last committed batch go, journals of committed batches are redone, and
the indexes are loaded at the last committed batch. Readers take no lock: they read the database's
last committed batch and only the stored rows it names.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.catalogue import schema
from pipeline.catalogue.lists import NeighbourLists
from pipeline.catalogue.rule import KINDS, Rule
from pipeline.catalogue.schema import CatalogueError
from pipeline.catalogue.store import LocalVectorStore, Replay, SignalSpec
from pipeline.catalogue.vocabulary import TitleVocabulary
from pipeline.io import code_version, write_json
from pipeline.runs.lock import RunLockedError, exclusive

FORMAT = "pipeline.catalogue"
CRASH_ENV = "PIPELINE_CATALOGUE_CRASH"  # fault injection for the kill tests: a point name, or several


def crash_point(name: str) -> None:
    """Die here with SIGKILL when ``PIPELINE_CATALOGUE_CRASH`` names this point (tests/catalogue/test_kill.py)."""
    if name in os.environ.get(CRASH_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)


class Catalogue:
    """An open catalogue. Use :func:`open_catalogue` or :func:`create_catalogue`."""

    def __init__(self, root: Path, writable: bool, threads: int = 1):
        self.root, self.writable, self.threads = Path(root), writable, threads
        info_path = self.root / "catalogue.json"
        if not info_path.is_file():
            raise CatalogueError(
                f"{self.root}: not a catalogue (catalogue.json missing); create one with "
                "`python -m pipeline catalogue init`"
            )
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        if self.info.get("format") != FORMAT:
            raise CatalogueError(f"{info_path}: not a catalogue's description")
        self.rule = Rule.from_dict(self.info["rule"])
        self.vocabulary = TitleVocabulary.from_dict(self.info["vocabulary"]) if self.info.get("vocabulary") else None
        self.specs = [SignalSpec(**s) for s in self.info["signals"]]
        self.con = schema.connect(self.root / "catalogue.db", readonly=not writable)
        self.store = LocalVectorStore(self.root / "vectors", self.specs, self.rule.index, threads)
        self.lists = NeighbourLists(self.root / "lists", self.rule.searched(), self.rule.search.k)
        self.loaded = False
        self.encoders: dict[str, Any] = {}

    def close(self) -> None:
        self.con.close()

    # ---- locking and recovery -----------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the catalogue's one writer lock, the catalogue repaired and loaded at its last batch."""
        if not self.writable:
            raise CatalogueError(f"{self.root} was opened read-only")
        try:
            with exclusive(self.root / "write.lock", str(self.root)):
                self.recover()
                yield
        except RunLockedError as e:
            raise CatalogueError(str(e)) from None

    def recover(self) -> None:
        """Cut what an uncommitted batch left, redo committed journals, load the indexes (writer only).

        A catalogue that this object already holds at the last committed batch (a service's next
        write) is not reloaded: what a failed batch left past that batch (log rows, a journal, a
        TF-IDF block) is overwritten by the next batch, which takes the same sequence number and ids.
        """
        committed = schema.last_batch(self.con)
        if self.loaded and self.store.applied == committed and self.lists.applied == committed:
            return
        with schema.snapshot(self.con):
            committed, n_ids, live, replay = self._state(after=self._snapshot_floor())
        self.lists.open(committed)
        self.store.open(committed, n_ids, live, replay, repair=True)
        self.loaded = True

    def load(self) -> None:
        """Load the indexes at the last committed batch, changing nothing on disk (readers)."""
        with schema.snapshot(self.con):
            committed, n_ids, live, replay = self._state(after=self._snapshot_floor())
        self.store.open(committed, n_ids, live, replay, repair=False)
        self.loaded = True

    def refresh(self) -> bool:
        """Apply the batches another process committed since the indexes were loaded; whether any were."""
        if not self.loaded:
            self.load()
            return True
        if schema.last_batch(self.con) == self.store.applied:
            return False  # the common case of a service's reads: no O(N) query
        with schema.snapshot(self.con):
            committed, _, _, replay = self._state(after=self.store.applied)
        for r in replay:
            self.store.apply(r.seq, r.added, r.removed)
        return bool(replay) and committed > 0

    def _snapshot_floor(self) -> int:
        return self.store.oldest_snapshot()

    def _state(self, after: int) -> tuple[int, int, np.ndarray, list[Replay]]:
        """(last committed batch, ids given, live ids, what each batch after ``after`` did)."""
        committed = schema.last_batch(self.con)
        n_ids = schema.next_id(self.con)
        live = np.array(
            [r[0] for r in self.con.execute("SELECT id FROM postings WHERE removed IS NULL ORDER BY id")],
            dtype=np.int64,
        )
        replay = []
        rows = self.con.execute("SELECT seq, first_id, last_id FROM batches WHERE seq > ? ORDER BY seq", (after,))
        for seq, first, last in rows.fetchall():
            added = np.arange(first, last + 1, dtype=np.int64) if first is not None else np.empty(0, np.int64)
            added = added[np.isin(added, live)]
            removed = np.array(
                [r[0] for r in self.con.execute("SELECT id FROM postings WHERE removed = ?", (seq,))], dtype=np.int64
            )
            replay.append(Replay(seq, added, removed))
        return committed, n_ids, live, replay

    # ---- reading the database -----------------------------------------------------------------

    def live_count(self) -> int:
        """Postings not removed: the ids given (0 on, none ever deleted) less the tombstones, which
        the ``removed`` index finds alone (:func:`~pipeline.catalogue.check.check` holds the ids to 0,
        1, 2, ...); counting the live rows read every row, 32 ms at a million."""
        removed = self.con.execute("SELECT COUNT(*) FROM postings WHERE removed IS NOT NULL").fetchone()[0]
        return schema.next_id(self.con) - int(removed)

    def removed_ids(self) -> np.ndarray:
        return np.array(
            [r[0] for r in self.con.execute("SELECT id FROM postings WHERE removed IS NOT NULL")], dtype=np.int64
        )

    def groups_of(self, ids: np.ndarray) -> dict[int, int]:
        """The group of each of ``ids`` (catalogue ids)."""
        out: dict[int, int] = {}
        for chunk, marks in schema.in_chunks(int(i) for i in np.unique(ids)):
            out.update(self.con.execute(f"SELECT id, group_id FROM postings WHERE id IN ({marks})", chunk))
        return out

    def column_of(self, ids: np.ndarray, column: str) -> list[str]:
        """A postings column (``title``, ``posting_id``) for catalogue ids, in their order."""
        if column not in ("title", "posting_id", "image", "image_phash"):
            raise ValueError(column)
        found: dict[int, str] = {}
        for chunk, marks in schema.in_chunks(int(i) for i in np.unique(ids)):
            found.update(self.con.execute(f"SELECT id, {column} FROM postings WHERE id IN ({marks})", chunk))
        return [found.get(int(i), "") for i in ids]

    def column_titles(self, ids: np.ndarray) -> list[str]:
        return self.column_of(ids, "title")

    def ids_of(self, posting_ids: list[str], removed: bool = False) -> dict[str, int]:
        """Catalogue ids of the live ``posting_ids`` found (with ``removed``: of removed ones too)."""
        live = "" if removed else " AND removed IS NULL"
        out: dict[str, int] = {}
        for chunk, marks in schema.in_chunks(posting_ids):
            out.update(
                self.con.execute(f"SELECT posting_id, id FROM postings WHERE posting_id IN ({marks}){live}", chunk)
            )
        return out

    def verdicts(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(forbidden, forced) posting pairs: each pair's latest review, 'different' or 'same'."""
        latest: dict[tuple[int, int], str] = {}
        for a, b, verdict in self.con.execute("SELECT a, b, verdict FROM reviews ORDER BY id"):
            latest[(min(a, b), max(a, b))] = verdict
        forbidden = [p for p, v in latest.items() if v == "different"]
        forced = [p for p, v in latest.items() if v == "same"]
        return forbidden, forced


def open_catalogue(root: str | Path, write: bool = False, threads: int = 1) -> Catalogue:
    return Catalogue(Path(root), write, threads)


def check_new_folder(root: Path) -> None:
    """Refuse a folder that holds a catalogue or anything else: a catalogue is created once, in a new folder."""
    if (root / "catalogue.json").exists() or (root / "catalogue.db").exists():
        raise CatalogueError(f"{root} already holds a catalogue; choose another --out")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CatalogueError(f"{root} exists and is not an empty folder; choose another --out")


def create_catalogue(
    root: str | Path,
    rule: Rule,
    dims: dict[str, int],
    vocabulary: TitleVocabulary | None = None,
    threads: int = 1,
) -> Catalogue:
    """An empty catalogue applying ``rule``; ``dims`` gives each dense stored signal's width."""
    root = Path(root)
    check_new_folder(root)
    searched = set(rule.searched())
    specs = []
    for name in rule.stored():
        kind = KINDS[name]
        if kind == "dense" and name not in dims:
            raise CatalogueError(f"no vectors given for the dense signal {name!r} the rule reads")
        specs.append(SignalSpec(name, kind, dims.get(name, 8 if kind == "binary" else 0), name in searched))
    root.mkdir(parents=True, exist_ok=True)
    info = {
        "format": FORMAT,
        "code_version": code_version(),
        "rule": rule.to_dict(),
        "signals": [vars(s) for s in specs],
        "vocabulary": vocabulary.to_dict() if vocabulary is not None else None,
    }
    write_json(info, root / "catalogue.json")
    schema.create(root / "catalogue.db", {"created_by": code_version(), "run": rule.run or ""}).close()
    return Catalogue(root, True, threads)
