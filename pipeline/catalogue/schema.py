"""The catalogue's SQLite database: the source of truth for postings, groups, decisions and reviews.

Every write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), and a batch's whole effect is
one of them, so a killed writer leaves the database at its last committed batch. The database runs
in WAL mode: readers see the last committed batch while a writer works.

Postings' ids are the catalogue's own: consecutive integers from 0 in the order postings arrive,
never reused. A vector store row is addressed by that id, so a removed posting leaves a tombstone
(``removed`` holds the batch that removed it) and its id stays taken.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

SCHEMA_VERSION = 1
PARAMETERS = 900  # values bound in one statement: SQLite's limit is 999 in older builds

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY,          -- 1, 2, ... in commit order
    kind TEXT NOT NULL,               -- init | add | remove | review | rebuild
    source TEXT,                      -- the CSV added, for the record
    digest TEXT,                      -- of the batch's input: the same batch is recognised
    first_id INTEGER,                 -- postings first_id .. last_id were added by it
    last_id INTEGER,
    committed TEXT NOT NULL
);
CREATE TABLE groups (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,            -- live postings
    created INTEGER NOT NULL REFERENCES batches(seq)
);
CREATE TABLE postings (
    id INTEGER PRIMARY KEY,           -- the catalogue's id: the vector stores' row
    posting_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    image TEXT NOT NULL,
    image_phash TEXT NOT NULL,
    images_dir TEXT,                  -- where the image was read from, for the review page
    group_id INTEGER NOT NULL REFERENCES groups(id),
    batch INTEGER NOT NULL REFERENCES batches(seq),
    removed INTEGER REFERENCES batches(seq)
);
CREATE INDEX postings_group ON postings(group_id);
CREATE INDEX postings_removed ON postings(removed);  -- tombstones are few: finding them reads no other row
CREATE TABLE links (                  -- accepted pairs (and the doubtful ones, for review)
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL REFERENCES batches(seq),
    a INTEGER NOT NULL REFERENCES postings(id),   -- the new posting
    b INTEGER NOT NULL REFERENCES postings(id),   -- what it was matched with
    kind TEXT NOT NULL,               -- rule | label | review
    probability REAL NOT NULL,        -- the pair model's, or the rule's score (docs/catalogue.md)
    accepted INTEGER NOT NULL,        -- 1: the rule accepted it (it can still lose to a review)
    evidence TEXT NOT NULL            -- JSON: every signal's similarity and threshold
);
CREATE INDEX links_a ON links(a);
CREATE INDEX links_b ON links(b);
CREATE INDEX links_probability ON links(probability);
CREATE TABLE decisions (
    posting INTEGER PRIMARY KEY REFERENCES postings(id),
    batch INTEGER NOT NULL REFERENCES batches(seq),
    group_id INTEGER NOT NULL,        -- the group given when it was added
    action TEXT NOT NULL,             -- new | join | merge
    confidence REAL NOT NULL,
    evidence TEXT NOT NULL            -- JSON
);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    link INTEGER REFERENCES links(id),
    a INTEGER NOT NULL REFERENCES postings(id),
    b INTEGER NOT NULL REFERENCES postings(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('same', 'different')),
    batch INTEGER NOT NULL REFERENCES batches(seq),
    note TEXT
);
CREATE INDEX reviews_pair ON reviews(a, b);
"""


class CatalogueError(ValueError):
    """A catalogue that cannot be used as asked: missing, of another schema version, or a refused input."""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit, see :func:`transaction`).

    Args:
        readonly: open with ``mode=ro``: such a connection can never write, whatever a bug asks.
    """
    if not path.is_file():
        raise CatalogueError(
            f"{path.parent}: not a catalogue ({path.name} missing); create one with `python -m pipeline catalogue init`"
        )
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0, check_same_thread=False)
    con.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only a killed process
    version = meta(con).get("schema_version")
    if version != str(SCHEMA_VERSION):
        con.close()
        raise CatalogueError(f"{path}: schema version {version}, this code reads {SCHEMA_VERSION}")
    return con


def create(path: Path, values: dict[str, str]) -> sqlite3.Connection:
    """A new database with the schema and ``meta`` rows (``schema_version`` added); refuses an existing file."""
    if path.exists():
        raise CatalogueError(f"{path} exists: a catalogue is created once")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode = WAL")
    with transaction(con):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
        rows = {"schema_version": str(SCHEMA_VERSION), **values}
        con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows.items())
    con.execute("PRAGMA foreign_keys = ON")
    return con


def meta(con: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(con.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as e:
        raise CatalogueError(f"not a catalogue database ({e})") from None


@contextlib.contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock at once; any error rolls back."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextlib.contextmanager
def snapshot(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: every query in the block sees the same committed state."""
    con.execute("BEGIN")
    try:
        yield con
    finally:
        con.execute("COMMIT")


def last_batch(con: sqlite3.Connection) -> int:
    """The last committed batch's sequence number (0 for none)."""
    return int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM batches").fetchone()[0])


def next_id(con: sqlite3.Connection) -> int:
    """The id the next posting gets: ids are never reused, removed postings keep theirs."""
    return int(con.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM postings").fetchone()[0])


def in_chunks(values: Iterable) -> Iterator[tuple[list, str]]:
    """``values`` in runs one statement can bind: (the run, ``"?,?,..."`` for its ``IN (...)``)."""
    values = list(values)
    for start in range(0, len(values), PARAMETERS):
        chunk = values[start : start + PARAMETERS]
        yield chunk, ",".join("?" * len(chunk))
