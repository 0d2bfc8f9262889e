"""The catalogue's read-only answers: ``match`` (candidates for new postings), ``explain`` (why a
posting is where it is) and ``export`` (the groups as a submission)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.catalogue import schema
from pipeline.catalogue.adding import embed
from pipeline.catalogue.assign import Links
from pipeline.catalogue.catalogue import Catalogue
from pipeline.catalogue.evidence import pair_evidence
from pipeline.catalogue.schema import CatalogueError
from pipeline.catalogue.scoring import score_batch
from pipeline.submission import write_submission

NO_MATCH = "no confident match"


@dataclass
class Candidate:
    posting_id: str
    group: int
    probability: float
    accepted: bool
    evidence: dict[str, Any]


@dataclass
class MatchResult:
    posting_id: str
    group: int | None  # the best accepted candidate's group; None: no confident match
    verdict: str  # "match" or NO_MATCH
    candidates: list[Candidate] = field(default_factory=list)


def match_postings(
    cat: Catalogue, df: pd.DataFrame, images_dir: Path | None = None, top: int = 5, vectors: dict | None = None
) -> list[MatchResult]:
    """Each posting of ``df`` against the catalogue alone (not against each other); nothing is written.

    Args:
        top: candidates listed per posting, most probable first.
        vectors: every stored signal's rows, instead of embedding ``df``.
    """
    cat.refresh()
    with schema.snapshot(cat.con):
        first = schema.next_id(cat.con)
        removed, live = cat.removed_ids(), cat.live_count()
    if live == 0:
        raise CatalogueError(f"{cat.root} holds no posting to match against")
    vectors = embed(cat.rule, cat.vocabulary, df, images_dir, cat.encoders) if vectors is None else vectors
    ids = np.arange(first, first + len(df), dtype=np.int64)
    scored = score_batch(
        cat.store,
        cat.lists,
        cat.rule,
        vectors,
        ids,
        df["title"].to_numpy(dtype=object),
        cat.column_titles,
        removed,
        live=live + 1,
        within=False,
        threads=cat.threads,
    )
    c = scored.candidates
    links = Links(scored.ids[c.query], scored.ids[c.match], scored.probability.astype(np.float64), scored.joins)
    order = np.lexsort((links.b, -links.probability, links.a))
    order = order[links.b[order] < first]
    starts = np.searchsorted(links.a[order], ids)
    stops = np.searchsorted(links.a[order], ids, side="right")
    picked = np.concatenate([order[s : min(e, s + top)] for s, e in zip(starts, stops)]) if len(order) else order
    groups = cat.groups_of(links.b[picked])
    names = dict(zip(np.unique(links.b[picked]).tolist(), cat.column_of(np.unique(links.b[picked]), "posting_id")))
    evidence = dict(zip(picked.tolist(), pair_evidence(scored, cat.rule, picked, scored.accepted)))
    out = []
    for pid, s, e in zip(df["posting_id"], starts, stops):
        mine = order[s : min(e, s + top)]
        cands = [
            Candidate(
                names[int(links.b[p])],
                groups[int(links.b[p])],
                round(float(links.probability[p]), 4),
                bool(links.accepted[p]),
                evidence[int(p)],
            )
            for p in mine
        ]
        best = next((cnd for cnd in cands if cnd.accepted), None)
        out.append(MatchResult(pid, best.group if best else None, "match" if best else NO_MATCH, cands))
    return out


def explain(cat: Catalogue, posting_id: str) -> dict[str, Any]:
    """Why ``posting_id`` is in its group: its decision, every link to or from it with each signal's
    similarity against its threshold and the pair model's probability and top features, and the
    reviews that touch it."""
    row = cat.con.execute("SELECT id, group_id, removed FROM postings WHERE posting_id = ?", (posting_id,)).fetchone()
    if row is None:
        raise CatalogueError(f"{posting_id!r} is not in {cat.root}")
    pid, group, removed = row
    decision = cat.con.execute(
        "SELECT batch, group_id, action, confidence, evidence FROM decisions WHERE posting = ?", (pid,)
    ).fetchone()
    links = []
    for lid, a, b, kind, prob, accepted, ev in cat.con.execute(
        "SELECT id, a, b, kind, probability, accepted, evidence FROM links WHERE a = ? OR b = ? "
        "ORDER BY accepted DESC, probability DESC",
        (pid, pid),
    ):
        other = b if a == pid else a
        links.append(
            {
                "link": lid,
                "with": cat.column_of(np.array([other]), "posting_id")[0],
                "with_group": cat.groups_of(np.array([other])).get(other),
                "kind": kind,
                "probability": round(prob, 4),
                "accepted": bool(accepted),
                "evidence": json.loads(ev),
            }
        )
    reviews = [
        {"review": r[0], "a": r[1], "b": r[2], "verdict": r[3], "batch": r[4]}
        for r in cat.con.execute(
            "SELECT r.id, pa.posting_id, pb.posting_id, r.verdict, r.batch FROM reviews r "
            "JOIN postings pa ON pa.id = r.a JOIN postings pb ON pb.id = r.b WHERE r.a = ? OR r.b = ? ORDER BY r.id",
            (pid, pid),
        )
    ]
    size = cat.con.execute("SELECT size FROM groups WHERE id = ?", (group,)).fetchone()
    return {
        "posting_id": posting_id,
        "group": group,
        "group_size": size[0] if size else 0,
        "removed": removed is not None,
        "decision": None
        if decision is None
        else {
            "batch": decision[0],
            "group_then": decision[1],
            "action": decision[2],
            "confidence": decision[3],
            "evidence": json.loads(decision[4]),
        },
        "links": links,
        "reviews": reviews,
    }


def explain_text(info: dict[str, Any]) -> str:
    """:func:`explain`'s answer for a person to read."""
    lines = [
        f"{info['posting_id']}: group {info['group']} ({info['group_size']} postings)"
        + (" [removed]" if info["removed"] else "")
    ]
    d = info["decision"]
    if d is not None:
        ev = d["evidence"]
        why = {
            "new": "no accepted link reached a group, so it started one",
            "join": "its accepted links reached one group",
            "merge": f"its accepted links reached several groups, merged into one (merged: {ev['merged_groups']})",
        }
        lines.append(
            f"decision (batch {d['batch']}): {d['action']}, confidence {d['confidence']:.3f}: "
            f"{why.get(d['action'], '')}"
        )
        if ev.get("refused_by_review"):
            lines.append(f"  links refused by a 'different' review: {ev['refused_by_review']}")
    for link in info["links"]:
        ev = link["evidence"]
        state = "accepted" if link["accepted"] else "rejected"
        lines.append(
            f"- {link['with']} (group {link['with_group']}), {link['kind']} link, {state}, "
            f"probability {link['probability']:.3f}"
        )
        for name, t in ev.get("thresholds", {}).items():
            s = ev["sims"].get(name)
            mark = "passes" if s is not None and s >= t else "below"
            lines.append(f"    {name:8s} {'-' if s is None else f'{s:.4f}'} vs threshold {t:.4f}: {mark}")
        for name in sorted(set(ev.get("sims", {})) - set(ev.get("thresholds", {}))):
            lines.append(f"    {name:8s} {ev['sims'][name]:.4f} (no threshold)")
        if ev.get("min2"):
            lines.append(
                f"    min-2 accepts it (the best pair by {ev['min2_signal']}, above the floor {ev['min2_floor']}); "
                + ("it joins groups" if link["accepted"] else "min-2 pairs do not join groups here")
            )
        for name, value, contrib in ev.get("features", []):
            lines.append(f"    feature {name} = {value}: {contrib:+.3f} log-odds")
    for r in info["reviews"]:
        lines.append(f"review {r['review']} (batch {r['batch']}): {r['a']} and {r['b']} are {r['verdict']}")
    return "\n".join(lines)


def export_groups(cat: Catalogue, out: Path | None = None, only: list[str] | None = None) -> pd.DataFrame:
    """The live postings' groups in the submission format: each posting's matches are its group.

    With the run's group step (``group: run``), a posting alone among the exported ones also lists
    its most probable link when that reaches the step's min-2 floor, as ``predict`` lists a lone
    posting's best candidate; the groups themselves stay as they are.

    Args:
        only: keep these postings (rows and matches), e.g. a test set added to a bigger catalogue.
    """
    df = pd.DataFrame(
        cat.con.execute("SELECT id, posting_id, group_id FROM postings WHERE removed IS NULL ORDER BY id").fetchall(),
        columns=["id", "posting_id", "group"],
    )
    if only is not None:
        missing = sorted(set(only) - set(df["posting_id"]))
        if missing:
            raise CatalogueError(f"{len(missing)} posting(s) to export are not in the catalogue, e.g. {missing[:3]}")
        df = df[df["posting_id"].isin(set(only))]
    members = df.groupby("group")["posting_id"].agg(list)
    lone = _lone_matches(cat, df, members)
    matches = [
        " ".join([pid] + [m for m in members[g] if m != pid] + lone.get(pid, []))
        for pid, g in zip(df["posting_id"], df["group"])
    ]
    sub = pd.DataFrame({"posting_id": df["posting_id"].to_numpy(), "matches": matches})
    if out is not None:
        write_submission(sub, out, sub["posting_id"].tolist())
    return sub


def _lone_matches(cat: Catalogue, df: pd.DataFrame, members: pd.Series) -> dict[str, list[str]]:
    """Min-2 of the run's group step: each posting alone in its group (among ``df``), its most
    probable link to another posting of ``df`` when that link's calibrated probability reaches the
    floor at the catalogue's size."""
    rule = cat.rule
    if rule.group != "run":
        return {}
    group = rule.group_settings().at_size(rule.size or cat.live_count())
    alone = {int(i): pid for i, pid, g in zip(df["id"], df["posting_id"], df["group"]) if len(members[g]) == 1}
    if not alone or np.isinf(group.min2_floor):
        return {}
    name = dict(zip(df["id"].tolist(), df["posting_id"].tolist()))
    best: dict[int, tuple[float, int]] = {}
    rows: list[tuple] = []
    for chunk, marks in schema.in_chunks(alone):
        for end in ("a", "b"):  # each indexed: only the lone postings' links are read
            query = f"SELECT a, b, probability FROM links WHERE kind = 'rule' AND {end} IN ({marks})"
            rows += cat.con.execute(query, chunk)
    for a, b, raw in rows:
        for x, y in ((a, b), (b, a)):
            if x in alone and y in name and x != y and (x not in best or (-raw, y) < (-best[x][0], best[x][1])):
                best[x] = (raw, y)
    out = {}
    for x, (raw, y) in best.items():
        if float(group.probability(np.array([raw]))[0]) >= group.min2_floor:
            out[alone[x]] = [name[y]]
    return out
