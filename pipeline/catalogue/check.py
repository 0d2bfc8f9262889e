"""The integrity check a catalogue passes after any kill: ``python -m pipeline catalogue check C``.

- every committed posting has its row in each stored signal's log, and no row lies past them;
- each index holds every live posting exactly once, and nothing else (no orphan vectors);
- the neighbour lists hold the last committed batch and name only committed postings;
- batches are numbered 1, 2, ... with no gap; every added posting has its decision;
- groups are consistent: each live posting's group exists, each group's size is its live
  postings, no 'different' review is inside a group and no 'same' review across two.
"""

from __future__ import annotations

import numpy as np

from pipeline.catalogue import schema
from pipeline.catalogue.catalogue import Catalogue


def check(cat: Catalogue) -> list[str]:
    """Every problem found (empty: the catalogue is consistent). Needs the indexes loaded."""
    with schema.snapshot(cat.con):
        problems = _database(cat)
        n_ids = schema.next_id(cat.con)
        committed = schema.last_batch(cat.con)
        live = np.array([r[0] for r in cat.con.execute("SELECT id FROM postings WHERE removed IS NULL")], np.int64)
    for spec in cat.specs:
        rows = cat.store.stored_rows(spec.name)
        if rows != n_ids:
            problems.append(f"{spec.name}: the log holds {rows} rows for {n_ids} committed postings")
        if spec.name not in cat.store.indexes:
            continue
        held = cat.store.indexed_ids(spec.name)
        uniq, counts = np.unique(held, return_counts=True)
        if (counts > 1).any():
            problems.append(
                f"{spec.name}: {int((counts > 1).sum())} id(s) indexed more than once, e.g. "
                f"{uniq[counts > 1][:3].tolist()}"
            )
        orphans, missing = np.setdiff1d(uniq, live), np.setdiff1d(live, uniq)
        if len(orphans):
            problems.append(
                f"{spec.name}: {len(orphans)} indexed id(s) of no live posting, e.g. {orphans[:3].tolist()}"
            )
        if len(missing):
            problems.append(f"{spec.name}: {len(missing)} live posting(s) not indexed, e.g. {missing[:3].tolist()}")
    if cat.lists.applied != committed:
        problems.append(f"lists: hold batch {cat.lists.applied}, the last committed is {committed}")
    for s in cat.lists.signals:
        idx, _ = cat.lists.rows(s, live)
        if (idx >= n_ids).any():
            problems.append(f"lists {s}: name ids past the last committed posting")
    return problems


def _database(cat: Catalogue) -> list[str]:
    con, problems = cat.con, []
    seqs = [r[0] for r in con.execute("SELECT seq FROM batches ORDER BY seq")]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"batches: numbered {seqs[:10]}..., not 1, 2, ...")
    ids = [r[0] for r in con.execute("SELECT id FROM postings ORDER BY id")]
    if ids != list(range(len(ids))):
        problems.append("postings: ids are not 0, 1, 2, ...")
    bad = con.execute(
        "SELECT COUNT(*) FROM postings p LEFT JOIN groups g ON g.id = p.group_id "
        "WHERE p.removed IS NULL AND g.id IS NULL"
    ).fetchone()[0]
    if bad:
        problems.append(f"groups: {bad} live posting(s) in a group that does not exist")
    wrong = con.execute(
        "SELECT COUNT(*) FROM groups g WHERE g.size != (SELECT COUNT(*) FROM postings p "
        "WHERE p.group_id = g.id AND p.removed IS NULL)"
    ).fetchone()[0]
    if wrong:
        problems.append(f"groups: {wrong} group(s) whose size is not their live postings")
    undecided = con.execute(
        "SELECT COUNT(*) FROM postings p LEFT JOIN decisions d ON d.posting = p.id WHERE d.posting IS NULL"
    ).fetchone()[0]
    if undecided:
        problems.append(f"decisions: {undecided} posting(s) without a decision")
    forbidden, forced = cat.verdicts()
    pairs = [p for pair in forbidden + forced for p in pair]
    group = cat.groups_of(np.array(pairs, np.int64)) if pairs else {}
    removed = set(cat.removed_ids().tolist())
    for a, b in forbidden:
        if a not in removed and b not in removed and group[a] == group[b]:
            problems.append(f"groups: postings {a} and {b} were reviewed 'different' but share group {group[a]}")
    for a, b in forced:
        if a not in removed and b not in removed and group[a] != group[b]:
            problems.append(
                f"groups: postings {a} and {b} were reviewed 'same' but are in groups {group[a]}, {group[b]}"
            )
    return problems
