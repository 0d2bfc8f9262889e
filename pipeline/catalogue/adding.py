"""``catalogue add``: a batch of new postings in five steps, committed as one transaction.

1. validate (the data contract, by the caller; here: ids already in the catalogue);
2. embed with the run's encoders, TF-IDF with the catalogue's vocabulary, the phash;
3. search candidates among the catalogue and the batch (:mod:`pipeline.catalogue.scoring`);
4. score them with the run's signals, pair model and tuned rule;
5. give each posting a group (:mod:`pipeline.catalogue.assign`).

Then the writes, in an order a kill at any point survives: the vectors are appended and the lists'
journal written (both synced), the database commits the batch, and only then do the indexes and
lists take it in (:mod:`pipeline.catalogue.catalogue` redoes that part on the next open).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.catalogue import schema
from pipeline.catalogue.assign import Assignment, Links, assign, assign_average
from pipeline.catalogue.catalogue import Catalogue, crash_point
from pipeline.catalogue.evidence import decision_rows, link_rows
from pipeline.catalogue.region import region_of, regroup_batch
from pipeline.catalogue.rule import Rule
from pipeline.catalogue.schema import CatalogueError
from pipeline.catalogue.scoring import Scored, score_batch
from pipeline.catalogue.vocabulary import TitleVocabulary

DECISION_COLUMNS = ["posting_id", "group", "action", "confidence", "evidence"]


def batch_digest(df: pd.DataFrame) -> str:
    """A digest of a batch's rows: the same batch sent again is recognised, a changed one is not."""
    h = hashlib.sha256()
    for col in ("posting_id", "image", "image_phash", "title"):
        h.update("\x1f".join(df[col].astype(str)).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:32]


def embed(
    rule: Rule,
    vocabulary: TitleVocabulary | None,
    df: pd.DataFrame,
    images_dir: Path | None,
    encoders: dict[str, Any],
) -> dict[str, Any]:
    """Step 2: every stored signal's rows of ``df``, as the run computes them.

    Args:
        encoders: the run's loaded encoders per learned modality; filled on first use, so that a
            catalogue loads them once.
    """
    from pipeline.matching.fusion import concat_embeddings
    from pipeline.matching.signals import compute_phash, phash_codes

    names = set(rule.stored())
    out: dict[str, Any] = {}
    if "tfidf" in names:
        out["tfidf"] = vocabulary.transform(df["title"].tolist())
    if "phash" in names:
        if rule.phash_source == "image":
            if images_dir is None:
                raise CatalogueError("this catalogue's phash is computed from the images: pass --images DIR")
            out["phash"] = phash_codes(compute_phash(images_dir / name for name in df["image"]))
        else:
            out["phash"] = phash_codes(df["image_phash"].tolist())
    learned = _learned(rule, df, images_dir, encoders)
    out.update({m: v for m, v in learned.items() if m in names})
    if "concat" in names:
        out["concat"] = concat_embeddings(learned, rule.settings.fusion_weights)
    return out


def _learned(rule: Rule, df: pd.DataFrame, images_dir: Path | None, encoders: dict[str, Any]) -> dict[str, np.ndarray]:
    """The run's encoders' embeddings of ``df``."""
    learned = rule.learned()
    if not learned:
        return {}
    if rule.run is None:
        raise CatalogueError(
            "this catalogue holds given vectors (no run's encoders): add postings through the "
            "Python API with their vectors"
        )
    if "image" in learned and images_dir is None:
        raise CatalogueError("the run's image encoder needs the images: pass --images DIR")
    from pipeline.config import load_config
    from pipeline.ensemble.members import load_members, test_members
    from pipeline.matching.predict import posting_vectors
    from pipeline.paths import RunPaths

    run = Path(rule.run)
    cfg = load_config(RunPaths(run).config)
    if not encoders:
        members = test_members(run, cfg)
        encoders.update({m: load_members(members[m]) for m in learned})
    view = dataclasses.replace(cfg, modalities=list(learned))
    return posting_vectors(view, df, images_dir or Path("."), encoders=encoders, progress=False)


def add_postings(
    cat: Catalogue,
    df: pd.DataFrame,
    images_dir: Path | None = None,
    vectors: dict[str, Any] | None = None,
    skip_existing: bool = False,
    source: str = "",
    labels: np.ndarray | None = None,
) -> pd.DataFrame:
    """Add a validated batch; returns its decisions (``DECISION_COLUMNS``), one row per new posting.

    Sending a batch that was already committed (the same rows) changes nothing and returns its
    decisions again, so a batch retried after a kill gives the same result however far it got.

    Args:
        vectors: every stored signal's rows (instead of embedding ``df``).
        skip_existing: leave out postings already in the catalogue instead of refusing the batch.
        labels: known groups of the postings (``init`` from training postings): the batch's groups
            are then those labels, not the rule's decision.
    """
    digest = batch_digest(df)
    with cat.writer():
        known = cat.ids_of(df["posting_id"].tolist(), removed=True)
        if known:
            seq = _same_batch(cat, digest)
            if seq is not None:
                return decisions_of(cat, seq)
            if not skip_existing:
                _refuse_known(cat, df, known, source)
            keep = ~df["posting_id"].isin(known).to_numpy()
            df = df[keep].reset_index(drop=True)
            vectors = None if vectors is None else {k: v[np.flatnonzero(keep)] for k, v in vectors.items()}
            labels = None if labels is None else labels[keep]
            if not len(df):
                return pd.DataFrame(columns=DECISION_COLUMNS)
        vectors = embed(cat.rule, cat.vocabulary, df, images_dir, cat.encoders) if vectors is None else vectors
        return _commit_batch(cat, df, vectors, images_dir, source, digest, labels)


def _refuse_known(cat: Catalogue, df: pd.DataFrame, known: dict[str, int], source: str) -> None:
    """Name the first row whose posting id the catalogue holds, or held (ids are never reused)."""
    i = int(df["posting_id"].isin(known).to_numpy().argmax())
    pid = df["posting_id"].iat[i]
    gone = cat.con.execute("SELECT removed FROM postings WHERE id = ?", (known[pid],)).fetchone()[0]
    state = "is already in the catalogue" if gone is None else f"was removed from the catalogue (batch {gone})"
    raise CatalogueError(
        f"{source or 'batch'}, row {i + 1}, column 'posting_id': {pid!r} {state}; a posting id is added once "
        "(pass --skip-existing to leave such rows out)"
    )


def _same_batch(cat: Catalogue, digest: str) -> int | None:
    row = cat.con.execute("SELECT seq FROM batches WHERE digest = ? ORDER BY seq DESC LIMIT 1", (digest,)).fetchone()
    return None if row is None else int(row[0])


def _commit_batch(
    cat: Catalogue,
    df: pd.DataFrame,
    vectors: dict[str, Any],
    images_dir: Path | None,
    source: str,
    digest: str,
    labels: np.ndarray | None,
) -> pd.DataFrame:
    seq = schema.last_batch(cat.con) + 1
    first_id = schema.next_id(cat.con)
    ids = np.arange(first_id, first_id + len(df), dtype=np.int64)
    titles = np.asarray(df["title"].tolist(), dtype=object)
    live = cat.live_count() + len(df)
    scored = _scored(cat, vectors, ids, titles, live)
    links = _links(scored) if labels is None else _label_links(ids, labels)
    groups = cat.groups_of(links.b[links.b < first_id])
    forbidden, forced = cat.verdicts()
    groups.update(cat.groups_of(np.array([p for pair in forbidden for p in pair], dtype=np.int64)))
    next_group = int(cat.con.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM groups").fetchone()[0])
    if cat.rule.group == "run" and labels is None:
        region = region_of(cat, ids, links, scored.accepted, live)
        fresh = _rescored(cat, scored, vectors, ids, titles, live, region) if cat.rule.rescore_region else None
        result = regroup_batch(cat, ids, links, scored.accepted, live, forbidden, forced, next_group, region, fresh)
    elif cat.rule.group == "average" and labels is None:
        sizes = dict(cat.con.execute("SELECT id, size FROM groups"))
        weight = links.accepted.astype(np.float64)
        result = assign_average(ids, links, weight, groups, sizes, forbidden, next_group, cat.rule.group_cut)
    else:
        result = assign(ids, links, groups, forbidden, next_group)
    cat.store.append(seq, first_id, vectors)
    crash_point("appended")
    cat.lists.write_journal(seq, _list_rows(scored, ids))
    crash_point("journaled")
    with schema.transaction(cat.con):
        _write(cat, seq, df, ids, images_dir, source, digest, result)
        cat.con.executemany(
            "INSERT INTO links(batch, a, b, kind, probability, accepted, evidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
            link_rows(seq, scored, links, cat.rule)
            if labels is None
            else [(seq, int(a), int(b), "label", 1.0, 1, "{}") for a, b in zip(links.a, links.b)],
        )
        cat.con.executemany(
            "INSERT INTO decisions(posting, batch, group_id, action, confidence, evidence) VALUES (?, ?, ?, ?, ?, ?)",
            decision_rows(seq, ids, links, result, _namer(cat, ids, df)),
        )
    crash_point("committed")
    cat.store.apply(seq, ids, np.empty(0, np.int64))
    cat.lists.apply(seq)
    crash_point("applied")
    cat.store.snapshot()
    cat.store.rebuild_if_stale(
        np.array(
            [r[0] for r in cat.con.execute("SELECT id FROM postings WHERE removed IS NULL ORDER BY id")], dtype=np.int64
        )
    )
    return decisions_of(cat, seq)


def _scored(cat: Catalogue, vectors: dict[str, Any], ids: np.ndarray, titles: np.ndarray, live: int, **extra) -> Scored:
    """:func:`score_batch` of a batch added to ``cat`` (``extra``: its ``requery`` and ``searched``)."""
    return score_batch(
        cat.store,
        cat.lists,
        cat.rule,
        vectors,
        ids,
        titles,
        cat.column_titles,
        cat.removed_ids(),
        live=live,
        within=True,
        threads=cat.threads,
        **extra,
    )


def _rescored(
    cat: Catalogue,
    scored: Scored,
    vectors: dict[str, Any],
    ids: np.ndarray,
    titles: np.ndarray,
    live: int,
    region: dict[int, int],
) -> Links | None:
    """The candidate links of the region's old postings, scored again with the batch inserted in
    their lists (the batch's own search is reused)."""
    if not region:
        return None
    old = np.array(sorted(region), np.int64)
    again = _scored(cat, vectors, ids, titles, live, requery=old, searched=(scored.batch_lists, scored.updates))
    c = again.candidates
    return Links(again.ids[c.query], again.ids[c.match], again.probability.astype(np.float64), again.accepted)


def _namer(cat: Catalogue, ids: np.ndarray, df: pd.DataFrame):
    """Posting ids of catalogue ids, the batch's own (not yet in the database) included."""
    new = dict(zip(ids.tolist(), df["posting_id"].tolist()))

    def name_of(xs: np.ndarray) -> list[str]:
        old = [x for x in xs.tolist() if x not in new]
        known = dict(zip(old, cat.column_of(np.array(old, np.int64), "posting_id")))
        return [new.get(x) or known[x] for x in xs.tolist()]

    return name_of


def _links(scored: Scored) -> Links:
    c = scored.candidates
    return Links(scored.ids[c.query], scored.ids[c.match], scored.probability.astype(np.float64), scored.joins)


def _label_links(ids: np.ndarray, labels: np.ndarray) -> Links:
    """Known groups as links: each posting to the first of its label (a star)."""
    first: dict[Any, int] = {}
    a, b = [], []
    for i, label in zip(ids.tolist(), labels.tolist()):
        if label in first:
            a.append(i)
            b.append(first[label])
        else:
            first[label] = i
    n = len(a)
    return Links(np.array(a, np.int64), np.array(b, np.int64), np.ones(n), np.ones(n, bool))


def _list_rows(scored: Scored, ids: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for s, (idx, sim) in scored.batch_lists.items():
        rows, u_idx, u_sim = scored.updates[s]
        out[s] = (np.r_[rows, ids], np.vstack([u_idx, idx]), np.vstack([u_sim, sim]))
    return out


def _write(
    cat: Catalogue,
    seq: int,
    df: pd.DataFrame,
    ids: np.ndarray,
    images_dir: Path | None,
    source: str,
    digest: str,
    result: Assignment,
) -> None:
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    kind = "add" if seq > 1 else "init"
    cat.con.execute(
        "INSERT INTO batches(seq, kind, source, digest, first_id, last_id, committed) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, kind, source, digest, int(ids[0]), int(ids[-1]), now),
    )
    cat.con.executemany("INSERT INTO groups(id, size, created) VALUES (?, 0, ?)", [(g, seq) for g in result.new_groups])
    for target, gone in result.merged.items():
        marks = ",".join("?" * len(gone))
        cat.con.execute(f"UPDATE postings SET group_id = ? WHERE group_id IN ({marks})", (target, *gone))
        cat.con.execute(f"DELETE FROM groups WHERE id IN ({marks})", gone)
    where = str(images_dir.resolve()) if images_dir is not None else None
    cat.con.executemany(
        "INSERT INTO postings(id, posting_id, title, image, image_phash, images_dir, group_id, batch) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (int(i), pid, title, image, phash, where, result.group[int(i)], seq)
            for i, pid, title, image, phash in zip(ids, df["posting_id"], df["title"], df["image"], df["image_phash"])
        ],
    )
    left = set(cat.groups_of(np.array(list(result.moved), np.int64)).values()) if result.moved else set()
    cat.con.executemany("UPDATE postings SET group_id = ? WHERE id = ?", [(g, p) for p, g in result.moved.items()])
    touched = set(result.group.values()) | set(result.merged) | set(result.moved.values()) | left
    resize_groups(cat, sorted(touched))
    drop_groups(cat, result.emptied)


def drop_groups(cat: Catalogue, groups: list[int]) -> None:
    """Delete ``groups`` that no posting names any more; one whose removed postings still name it
    stays, at size 0 (inside the caller's transaction)."""
    for chunk, marks in schema.in_chunks(groups):
        cat.con.execute(
            f"DELETE FROM groups WHERE id IN ({marks}) "
            "AND NOT EXISTS (SELECT 1 FROM postings p WHERE p.group_id = groups.id)",
            chunk,
        )


def resize_groups(cat: Catalogue, groups: list[int]) -> None:
    """Recount the live postings of ``groups`` (inside the caller's transaction)."""
    for chunk, marks in schema.in_chunks(groups):
        cat.con.execute(
            f"UPDATE groups SET size = (SELECT COUNT(*) FROM postings p WHERE p.group_id = groups.id "
            f"AND p.removed IS NULL) WHERE id IN ({marks})",
            chunk,
        )


def decisions_of(cat: Catalogue, seq: int) -> pd.DataFrame:
    """The decisions of batch ``seq`` as written to the decisions CSV (groups as given then)."""
    rows = cat.con.execute(
        "SELECT p.posting_id, d.group_id, d.action, d.confidence, d.evidence FROM decisions d "
        "JOIN postings p ON p.id = d.posting WHERE d.batch = ? ORDER BY d.posting",
        (seq,),
    ).fetchall()
    out = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    out["confidence"] = out["confidence"].round(4)
    return out
