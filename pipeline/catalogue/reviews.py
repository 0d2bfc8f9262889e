"""Reviews and removals: the writes that change groups without adding postings.

A review is stored and obeyed at once, and by every later batch (:mod:`pipeline.catalogue.assign`):

- ``different`` on two postings of one group splits the group into the components of its links
  that keep them apart; the part holding the group's smallest posting id keeps the group's id;
- ``same`` on two postings of two groups merges them (the smaller id survives) and records a
  review link, so a later split keeps them together. A merge that another 'different' review
  between the two groups forbids is refused, naming that review.

A pair's latest review is the one in force. Removing a posting leaves a tombstone: it leaves its
group (which is not split: its other members stay together) and every index.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from pipeline.catalogue import schema
from pipeline.catalogue.adding import resize_groups
from pipeline.catalogue.assign import Links, partition
from pipeline.catalogue.catalogue import Catalogue
from pipeline.catalogue.schema import CatalogueError

VERDICTS = ("same", "different")


def _new_batch(cat: Catalogue, kind: str, source: str = "") -> int:
    seq = schema.last_batch(cat.con) + 1
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    cat.con.execute("INSERT INTO batches(seq, kind, source, committed) VALUES (?, ?, ?, ?)", (seq, kind, source, now))
    return seq


def _live(cat: Catalogue, posting_id: str) -> int:
    row = cat.con.execute("SELECT id FROM postings WHERE posting_id = ? AND removed IS NULL", (posting_id,)).fetchone()
    if row is None:
        raise CatalogueError(f"{posting_id!r} is not a live posting of {cat.root}")
    return int(row[0])


def review(cat: Catalogue, a: str, b: str, verdict: str, link: int | None = None, note: str = "") -> dict:
    """Record that postings ``a`` and ``b`` are the ``same`` product or ``different`` ones, and obey it.

    Returns:
        ``{"review": id, "batch": seq, "groups": {posting_id: group}}`` after the change.
    """
    if verdict not in VERDICTS:
        raise CatalogueError(f"verdict {verdict!r}: must be one of {list(VERDICTS)}")
    with cat.writer():
        ia, ib = _live(cat, a), _live(cat, b)
        if ia == ib:
            raise CatalogueError(f"a review needs two postings; got {a!r} twice")
        with schema.transaction(cat.con):
            seq = _new_batch(cat, "review", f"{a} {verdict} {b}")
            cur = cat.con.execute(
                "INSERT INTO reviews(link, a, b, verdict, batch, note) VALUES (?, ?, ?, ?, ?, ?)",
                (link, ia, ib, verdict, seq, note),
            )
            review_id = int(cur.lastrowid)
            if verdict == "different":
                _split(cat, ia, ib, seq)
            else:
                _merge(cat, ia, ib, seq, review_id)
        cat.store.apply(seq, np.empty(0, np.int64), np.empty(0, np.int64))
        cat.lists.apply(seq)
        groups = cat.groups_of(np.array([ia, ib]))
    return {"review": review_id, "batch": seq, "groups": {a: groups[ia], b: groups[ib]}}


def _split(cat: Catalogue, ia: int, ib: int, seq: int) -> None:
    groups = cat.groups_of(np.array([ia, ib]))
    if groups[ia] != groups[ib]:
        return
    group = groups[ia]
    members = np.array(
        [
            r[0]
            for r in cat.con.execute(
                "SELECT id FROM postings WHERE group_id = ? AND removed IS NULL ORDER BY id", (group,)
            )
        ],
        dtype=np.int64,
    )
    rows = _group_links(cat, members)
    forbidden, forced = cat.verdicts()
    links = Links(
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], float),
        np.ones(len(rows), bool),
    )
    parts = partition(members, links, forced, forbidden)
    next_group = int(cat.con.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM groups").fetchone()[0])
    for part in parts[1:]:
        cat.con.execute("INSERT INTO groups(id, size, created) VALUES (?, 0, ?)", (next_group, seq))
        cat.con.executemany("UPDATE postings SET group_id = ? WHERE id = ?", [(next_group, p) for p in part])
        next_group += 1
    resize_groups(cat, list(range(next_group - len(parts) + 1, next_group)) + [group])


def _group_links(cat: Catalogue, members: np.ndarray) -> list[tuple[int, int, float]]:
    """The accepted links inside a group: (a, b, probability), review links at probability 2 (first)."""
    inside = set(members.tolist())
    out = []
    for chunk, marks in schema.in_chunks(int(m) for m in members):
        for a, b, kind, prob in cat.con.execute(
            f"SELECT a, b, kind, probability FROM links WHERE accepted = 1 AND a IN ({marks})", chunk
        ):
            if b in inside:
                out.append((a, b, 2.0 if kind == "review" else prob))
    return out


def _merge(cat: Catalogue, ia: int, ib: int, seq: int, review_id: int) -> None:
    groups = cat.groups_of(np.array([ia, ib]))
    ga, gb = groups[ia], groups[ib]
    cat.con.execute(
        "INSERT INTO links(batch, a, b, kind, probability, accepted, evidence) VALUES (?, ?, ?, 'review', 1.0, 1, ?)",
        (seq, ia, ib, f'{{"review": {review_id}}}'),
    )
    if ga == gb:
        return
    forbidden, _ = cat.verdicts()
    members = {
        g: set(r[0] for r in cat.con.execute("SELECT id FROM postings WHERE group_id = ? AND removed IS NULL", (g,)))
        for g in (ga, gb)
    }
    a_side, b_side = members[ga], members[gb]
    conflict = next(
        ((x, y) for x, y in forbidden if (x in a_side and y in b_side) or (x in b_side and y in a_side)), None
    )
    if conflict is not None:
        names = cat.column_of(np.array(conflict), "posting_id")
        raise CatalogueError(
            f"cannot merge: {names[0]} and {names[1]} were reviewed 'different' and are in the two "
            "groups; review that pair 'same' first if they are one product"
        )
    keep, gone = min(ga, gb), max(ga, gb)
    cat.con.execute("UPDATE postings SET group_id = ? WHERE group_id = ?", (keep, gone))
    cat.con.execute("DELETE FROM groups WHERE id = ?", (gone,))
    resize_groups(cat, [keep])


def remove(cat: Catalogue, posting_ids: list[str]) -> int:
    """Tombstone postings: out of their groups and every index, their ids never reused. Returns the batch."""
    with cat.writer():
        ids = np.array([_live(cat, p) for p in posting_ids], dtype=np.int64)
        groups = sorted(set(cat.groups_of(ids).values()))
        with schema.transaction(cat.con):
            seq = _new_batch(cat, "remove", " ".join(posting_ids[:20]))
            cat.con.executemany("UPDATE postings SET removed = ? WHERE id = ?", [(seq, int(i)) for i in ids])
            resize_groups(cat, groups)  # an emptied group stays, at size 0: its removed postings name it
        cat.store.apply(seq, np.empty(0, np.int64), ids)
        cat.lists.apply(seq)
        cat.store.snapshot()
        live = np.array(
            [r[0] for r in cat.con.execute("SELECT id FROM postings WHERE removed IS NULL ORDER BY id")], dtype=np.int64
        )
        cat.store.rebuild_if_stale(live)
    return seq
